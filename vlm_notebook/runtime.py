"""Where a model runs and in what number format: its runtime, chosen once when the model is made.

``device``: ``"auto"`` (the default) takes a CUDA GPU if there is one, then Apple's GPU (MPS),
then the CPU; ``"cpu"``, ``"cuda"``, ``"cuda:N"`` and ``"mps"`` ask for one. A device this machine
does not have is refused at once, with what it has.

``dtype``: ``"auto"`` (the default), ``"float32"``, ``"bfloat16"`` or ``"float16"``. ``"auto"`` is:

- CUDA: bf16 where the GPU computes in it (Ampere and newer), fp16 otherwise;
- MPS: fp16;
- CPU: bf16 where the CPU has bf16 matrix instructions (AVX-512 BF16 or AMX, read from its flags
  at run time: :func:`vlm_notebook.cpu.has_fast_bf16`), fp32 elsewhere, where bf16 matrix products
  are tens of times slower than fp32 ones. The environment variable ``VLM_NOTEBOOK_CPU_DTYPE``
  (float32, bfloat16 or float16) overrides that choice for every model of the process.

A half format chosen by ``"auto"`` is checked once a model loads: if the logits of a caption of a
blank picture hold NaN, the model moves to float32 with a warning (``Runtime.half_by_auto``).

``int8=True`` (CPU only) quantizes the linear layers to int8 and keeps the rest in fp32. A bf16
model on a CPU with oneDNN's bf16 kernels keeps its linear weights packed for them
(:func:`vlm_notebook.cpu.pack_bf16_linears`); an fp32 one on a CPU keeps a transposed copy of
some of its text model's weights for decoding (:func:`vlm_notebook.cpu.prepare_float32_decoding`)
and its vision side's linear weights packed for oneDNN
(:func:`vlm_notebook.cpu.pack_float32_encoders`). :func:`fit_weights` does each, once a model loads.
Every tensor a model makes while answering is made on ``runtime.device``: nothing assumes the CPU.
Threads are the CPU runtime's business: ``Runtime.phases`` sets them for each request on a CPU
(the policy in ``vlm_notebook.cpu``) and nothing on a GPU.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from .cpu import (
    DecodeChoice,
    has_fast_bf16,
    pack_bf16_linears,
    pack_float32_encoders,
    packs_bf16,
    packs_float32,
    phase_threads,
    prepare_float32_decoding,
    quantize_int8,
    threads_by_phase,
    unpack_linears,
)
from .errors import DeviceError, RequestError
from .options import DEVICE_CHOICES, DTYPE_CHOICES

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: Environment variable that sets what dtype="auto" means on the CPU.
CPU_DTYPE_VARIABLE = "VLM_NOTEBOOK_CPU_DTYPE"
_LOG = logging.getLogger("vlm_notebook")
#: Room kept free on a GPU beyond the weights (activations, KV cache, the CUDA context).
_HEADROOM = 1.2


@dataclass(frozen=True)
class Runtime:
    """The device, number format and quantization one model runs with."""

    device: torch.device
    dtype: torch.dtype
    int8: bool = False
    #: The dtype is the half format ``dtype="auto"`` chose: after loading, the model checks its first
    #: logits and falls back to float32 if they hold NaN (:func:`float32_if_not_finite`).
    half_by_auto: bool = False

    @property
    def device_name(self) -> str:
        return str(self.device)

    @property
    def dtype_name(self) -> str:
        return "int8" if self.int8 else str(self.dtype).removeprefix("torch.")

    def place(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Model inputs on this device; floating-point ones (pixels) in this number format."""
        return {key: self.place_tensor(value) for key, value in inputs.items()}

    def place_tensor(self, value: Any) -> Any:
        if not isinstance(value, torch.Tensor):
            return value
        if value.is_floating_point():
            return value.to(device=self.device, dtype=self.dtype)
        return value.to(device=self.device)

    def phases(
        self, model: torch.nn.Module | None = None, choice: DecodeChoice | None = None
    ) -> AbstractContextManager[Callable[[], None]]:
        """Where the work of one request runs. On a CPU: torch's threads for the prefill while the
        block runs, and the yielded callable, called before each decode step, switches to the
        decoding threads (``vlm_notebook.cpu``'s thread policy, with the model's measured ``choice``
        kept between its requests; with ``model``, a step of the model itself switches too); the
        count is put back after. Elsewhere there are no threads to set."""
        if self.device.type != "cpu":
            return nullcontext(_no_switch)
        return threads_by_phase(model, choice=choice) if model is not None else phase_threads(choice=choice)

    def __str__(self) -> str:
        return f"{self.device_name} · {self.dtype_name}"


def _no_switch() -> None:
    """The decoding switch of a runtime without CPU threads to set."""


#: fp32 on the CPU: what training and the tests of exact numerics run in.
CPU_FLOAT32 = Runtime(torch.device("cpu"), torch.float32)


def choose_runtime(device: Any = "auto", dtype: Any = "auto", int8: bool = False) -> Runtime:
    """The runtime for ``device`` and ``dtype`` (see the module docstring); refuses what cannot run."""
    if not isinstance(int8, bool):
        raise RequestError(f"int8 must be True or False, got {int8!r}.")
    chosen_device = _device(device)
    if int8:
        return _int8_runtime(chosen_device, dtype)
    chosen = _dtype(dtype, chosen_device)
    by_auto = isinstance(dtype, str) and dtype.strip().lower() == "auto"
    return Runtime(chosen_device, chosen, half_by_auto=by_auto and chosen != torch.float32)


def fit_weights(module: torch.nn.Module, runtime: Runtime, decoding: Sequence[torch.nn.Module] = ()) -> None:
    """After loading, in place: int8 linear layers when the runtime asks for them; on a CPU whose
    oneDNN computes in bf16, a bf16 model's linear weights packed for it (the same products; the
    ``decoding`` parts' layers that read one input also side by side); on a
    CPU in fp32, a transposed copy of the ``decoding`` parts' (text model, output layer) widening
    linear weights for one-row products, and the other parts' (vision) linear weights packed for
    oneDNN."""
    on_cpu = runtime.device.type == "cpu"
    if runtime.int8:
        quantize_int8(module)
    elif on_cpu and runtime.dtype == torch.bfloat16 and packs_bf16():
        pack_bf16_linears(module, decoding)
    elif on_cpu and runtime.dtype == torch.float32:
        prepare_float32_decoding(module, decoding)
        if packs_float32():
            pack_float32_encoders(module, decoding)


def float32_if_not_finite(runtime: Runtime, module: torch.nn.Module, logits: torch.Tensor, what: str) -> Runtime:
    """The runtime to keep after a load in the half format "auto" chose: the same one when the first
    ``logits`` are finite, else float32, with ``module`` moved to it and a warning that says so
    (fp16 and bf16 on Apple GPUs have given NaN with these model families)."""
    if not runtime.half_by_auto or bool(torch.isfinite(logits).all()):
        return runtime
    unpack_linears(module)
    module.to(torch.float32)
    _LOG.warning(
        "%s gave NaN in %s on %s: it runs in float32 there instead (pass dtype= to choose another format).",
        what, runtime.dtype_name, runtime.device_name,
    )
    return replace(runtime, dtype=torch.float32, half_by_auto=False)


def check_fits(runtime: Runtime, weight_files: Iterable[Path], what: str) -> None:
    """Refuse a model whose weights will not fit in the GPU's free memory (before loading them)."""
    if runtime.device.type != "cuda":
        return
    weight_bytes = _elements(weight_files) * runtime.dtype.itemsize
    free, total = torch.cuda.mem_get_info(runtime.device)
    if weight_bytes * _HEADROOM > free:
        raise DeviceError(
            f"{what} needs about {_gib(weight_bytes * _HEADROOM)} on {runtime.device_name} ({_gib(weight_bytes)} of "
            f"weights in {runtime.dtype_name}), but only {_gib(free)} of its {_gib(total)} are free. Free memory "
            "(unload other models), pick a smaller model or dtype, or use device='cpu'."
        )


def _elements(weight_files: Iterable[Path]) -> int:
    """Numbers in the safetensors files, read from their headers; a file that is absent or unreadable
    counts 0 (loading it then says what is wrong)."""
    from safetensors import safe_open

    elements = 0
    for path in weight_files:
        try:
            with safe_open(str(path), framework="pt") as weights:
                names: list[str] = weights.keys()
                elements += sum(math.prod(weights.get_slice(name).get_shape()) for name in names)
        except Exception:  # safetensors' own error types, or no file
            continue
    return elements


def _device(device: Any) -> torch.device:
    if not isinstance(device, str | torch.device):
        raise RequestError(f"Unknown device {device!r}; choose one of {', '.join(DEVICE_CHOICES)}.")
    name = str(device).strip().lower()
    if name == "auto":
        return _best_device()
    try:
        chosen = torch.device(name)
    except RuntimeError:
        chosen = None
    if chosen is None or chosen.type not in ("cpu", "cuda", "mps"):
        raise RequestError(f"Unknown device {device!r}; choose one of {', '.join(DEVICE_CHOICES)}.")
    _check_present(chosen)
    return chosen


def _best_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _check_present(device: torch.device) -> None:
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = device.index or 0
        if index >= count:
            raise DeviceError(f"device {str(device)!r} was asked for, but {_cuda_inventory(count)} Use device='auto'.")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(
            f"device 'mps' (Apple's GPU) was asked for, but it is not available here ({_machine()}). "
            "Use device='auto'."
        )


def _cuda_inventory(count: int) -> str:
    if count:
        return f"this machine has {count} CUDA GPU{'s' if count > 1 else ''} (cuda:0 to cuda:{count - 1})."
    build = "a CPU-only build of torch" if torch.version.cuda is None else f"torch built for CUDA {torch.version.cuda}"
    return f"this machine has no CUDA GPU ({build}; {_machine()})."


def _machine() -> str:
    present = ["cpu"]
    if torch.cuda.is_available():
        present.append("cuda")
    if torch.backends.mps.is_available():
        present.append("mps")
    return "devices present: " + ", ".join(present)


def _dtype(dtype: Any, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if not isinstance(dtype, str) or dtype.strip().lower() not in DTYPE_CHOICES:
        raise RequestError(f"Unknown dtype {dtype!r}; choose one of {', '.join(DTYPE_CHOICES)}.")
    name = dtype.strip().lower()
    return DTYPES[name] if name != "auto" else auto_dtype(device)


def auto_dtype(device: torch.device) -> torch.dtype:
    """The number format ``dtype="auto"`` picks on ``device`` (see the module docstring)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    override = os.environ.get(CPU_DTYPE_VARIABLE, "").strip().lower()
    if override:
        if override not in DTYPES:
            raise RequestError(f"{CPU_DTYPE_VARIABLE}={override!r} is not one of {', '.join(DTYPES)}.")
        return DTYPES[override]
    return torch.bfloat16 if has_fast_bf16() else torch.float32


def dtype_name_for_cpu() -> str:
    """The number format ``dtype="auto"`` picks on this machine's CPU, by name."""
    return str(auto_dtype(torch.device("cpu"))).removeprefix("torch.")


def _int8_runtime(device: torch.device, dtype: Any) -> Runtime:
    if device.type != "cpu":
        raise DeviceError(
            f"int8=True works on the CPU only (torch's dynamic int8 layers), not on {device}: "
            "leave int8 off there, or use device='cpu'."
        )
    if _dtype(dtype, device) != torch.float32 and dtype != "auto":
        raise RequestError(f"int8=True keeps the other layers in float32; dtype={dtype!r} cannot go with it.")
    return Runtime(device, torch.float32, int8=True)


def _gib(size: float) -> str:
    return f"{size / 2**30:.1f} GiB"
