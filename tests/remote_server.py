"""Run transformers' own ``transformers serve`` for the tests: ``python tests/remote_server.py serve DIR ...``.

The server is the real one (its FastAPI app, SSE streaming and ``generate``), with one change:
``transformers serve`` builds every processor with ``AutoProcessor``, and a Qwen2-VL processor
cannot be built that way here, because its video processor imports torchvision, and PyPI's
torchvision wheels do not load beside torch's CPU build ("operator torchvision::nms does not
exist"). For a Qwen2-VL checkpoint the processor therefore comes from vlm-notebook's own
image-only builder (the same one ``Qwen2VL`` uses locally); every other checkpoint is served
exactly as ``transformers serve`` would serve it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from transformers.cli.serving.model_manager import ModelManager
from transformers.cli.transformers import app

from vlm_notebook.models.generic import load_image_only_processor

_stock_load_processor = ModelManager._load_processor


def _load_processor(self: ModelManager, model_id_and_revision: str, gguf_file: str | None = None) -> Any:
    directory = Path(model_id_and_revision.split("@", 1)[0])
    config = directory / "config.json"
    if config.is_file() and json.loads(config.read_text()).get("model_type") in ("qwen2_vl", "qwen2_5_vl"):
        return load_image_only_processor(directory)
    return _stock_load_processor(self, model_id_and_revision, gguf_file=gguf_file)


if __name__ == "__main__":
    ModelManager._load_processor = _load_processor
    sys.exit(app())
