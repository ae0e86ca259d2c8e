"""Interactive ipywidgets front ends to the models, whose answers stream into an Output.

>>> from vlm_notebook.models import SmolVLM
>>> from vlm_notebook.widgets import SmolVLMWidget
>>> widget = SmolVLMWidget(SmolVLM("shapes-smolvlm"))
>>> widget  # upload a picture, click Run, watch the answer arrive
SmolVLMWidget(model='shapes-smolvlm')

``ChatWidget(model)`` holds a conversation about one picture, each answer streaming in.
"""

from ._chat import ChatWidget
from ._widget import MoondreamWidget, Qwen2VLWidget, SmolVLMWidget, VLMWidget

__all__ = ["ChatWidget", "MoondreamWidget", "Qwen2VLWidget", "SmolVLMWidget", "VLMWidget"]
