"""CPU settings that respect the user's time: threads per phase, int8 weights, bf16 detection.

Measured figures are in ``benchmarks/results/`` (``cpu_speed_smolvlm.md`` has the side-by-side
run, with the machine it ran on); the reasons, which hold across machines:

- The vision encoder and the prefill are large matrix products that gain from every physical
  core, so they run on ``physical_cores()`` threads (torch's own default). Under heavy load from
  other programs one thread can be as fast; on a quiet machine all cores win.
- A decode step is a thousand small operations, memory-bound (it reads every weight once). On a
  quiet machine every core reads faster than one; but each parallel region waits for every
  thread, so when other programs keep a core busy, one thread is several times faster. Neither
  holds everywhere, so a model measures: the first decode steps of an answer run two on every
  core and two on one thread, and the rest on whichever was faster (:class:`DecodeThreads`); its
  next answers keep that count, and every ``MEASURE_EVERY``-th measures again (:class:`DecodeChoice`).

Both are process-wide torch settings, changed only while a model of this package works and put
back afterwards; ``set_thread_policy(prefill=..., decode=...)`` fixes them (no measuring).

``has_fast_bf16()`` reads the CPU's flags: ``vlm_notebook.runtime`` picks bf16 where it is true
and fp32 elsewhere (bf16 matrix products are tens of times slower without those instructions).
``pack_bf16_linears`` stores a bf16 model's linear weights in oneDNN's blocked layout once, where
torch's oneDNN has bf16 kernels: the same products, faster than ``F.linear``, which repacks a
plain weight at each call (``benchmarks/results/cpu_vs_openvino.md`` has the effect); layers of the
text model that read the same input also get one packed copy side by side, for decode steps.
In fp32, ``pack_float32_encoders`` packs the vision side's linear weights the same way (oneDNN's
fp32 products of many rows beat ``F.linear``'s), and ``prepare_float32_decoding`` gives the
decoding layers a transposed copy of their weights, which one-token products read faster than the
plain ones (``DecodingLinear``).
``quantize_int8`` (``int8=True`` on a model) is opt-in: a decode step reads a quarter of the
bytes, but answers can change.
"""

from __future__ import annotations

import itertools
import os
import platform
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from typing import Any, TypeGuard, cast

import torch

_CPUINFO = Path("/proc/cpuinfo")


@cache
def physical_cores() -> int:
    """Physical cores of this machine (hyper-threads not counted); the logical count if unknown."""
    try:
        text = _CPUINFO.read_text()
    except OSError:
        return os.cpu_count() or 1
    cores: set[tuple[str, str]] = set()
    package = core = ""
    for line in text.splitlines():
        name, _, value = (part.strip() for part in line.partition(":"))
        if name == "physical id":
            package = value
        elif name == "core id":
            core = value
            cores.add((package, core))
    return len(cores) or os.cpu_count() or 1


@cache
def has_fast_bf16() -> bool:
    """Whether the CPU has bf16 matrix instructions (AMX or AVX-512 BF16)."""
    return bool({"amx_bf16", "avx512_bf16"} & set(matrix_flags()))


#: The x86 flags that decide the number format and the matrix kernels: benchmarks name them.
MATRIX_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8")


def model_name() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (the platform's word for it elsewhere)."""
    return _cpuinfo_field("model name") or platform.processor() or "unknown"


def matrix_flags() -> list[str]:
    """The ``MATRIX_FLAGS`` this CPU has."""
    flags = set((_cpuinfo_field("flags") or "").split())
    return [flag for flag in MATRIX_FLAGS if flag in flags]


def described() -> str:
    """The CPU's model name and its matrix instructions, as benchmarks name their machine."""
    return f"{model_name()} ({' '.join(matrix_flags()) or 'no AVX2'})"


def _cpuinfo_field(name: str) -> str | None:
    """The first value of ``name`` in ``/proc/cpuinfo``; None where it is absent or unreadable."""
    try:
        lines = _CPUINFO.read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.split(":", 1)[0].strip() == name), None)


@dataclass(frozen=True)
class ThreadPolicy:
    """Torch threads for the prefill (vision encoder and prompt) and for each decode step."""

    prefill: int
    decode: int
    #: Answers time their first steps on ``decode`` threads and on one, and keep the faster
    #: (for the model's next answers too: :class:`DecodeChoice`).
    measure_decode: bool = False

    def __post_init__(self) -> None:
        for name in ("prefill", "decode"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} threads must be a whole number of at least 1, got {value!r}.")


def default_thread_policy() -> ThreadPolicy:
    """Prefill on every physical core; decode on every core or one, measured by the model's answers;
    ``OMP_NUM_THREADS``, when set, caps both."""
    cap = _env_threads()
    cores = physical_cores() if cap is None else cap
    return ThreadPolicy(prefill=cores, decode=cores, measure_decode=cores > 1)


def _env_threads() -> int | None:
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) >= 1 else None


_policy = default_thread_policy()
_policy_lock = threading.Lock()


def thread_policy() -> ThreadPolicy:
    """The threads this package's models use while generating."""
    return _policy


def set_thread_policy(
    *, prefill: int | None = None, decode: int | None = None, measure_decode: bool | None = None
) -> ThreadPolicy:
    """Change the threads for the prefill and/or decoding (for every model); returns the new policy.
    A ``decode`` count given is used as given unless ``measure_decode=True``."""
    global _policy
    with _policy_lock:
        if measure_decode is None:
            measure_decode = _policy.measure_decode and decode is None
        _policy = ThreadPolicy(
            prefill=prefill if prefill is not None else _policy.prefill,
            decode=decode if decode is not None else _policy.decode,
            measure_decode=measure_decode,
        )
        return _policy


#: Answers of one model that reuse its measured decode thread count before one measures again.
MEASURE_EVERY = 8


class DecodeChoice:
    """One model's measured decode thread count, kept for its next answers: measuring costs each
    answer two slow steps, so an answer measures only when no count is kept for the policy in force
    (each ``set_thread_policy`` makes a new one) or every ``MEASURE_EVERY``-th answer (the
    machine's load may have changed)."""

    def __init__(self) -> None:
        self._threads: int | None = None
        self._policy: ThreadPolicy | None = None
        self._uses = 0

    def kept(self, policy: ThreadPolicy) -> int | None:
        """The count an answer under ``policy`` uses without measuring; None: it measures."""
        if self._threads is None or self._policy is not policy or self._uses >= MEASURE_EVERY - 1:
            return None
        self._uses += 1
        return self._threads

    def keep(self, policy: ThreadPolicy, threads: int) -> None:
        self._policy, self._threads, self._uses = policy, threads, 0


class DecodeThreads:
    """Called before each decode step of one generation: sets torch's threads for it.

    With ``policy.measure_decode`` (and more than one decode thread), unless ``choice`` keeps a
    count, the first four steps run on ``policy.decode`` threads twice, then on one thread twice;
    each step's time is the time to the next call, and the rest run on the count whose faster
    step was faster (which ``choice`` then keeps)."""

    def __init__(self, policy: ThreadPolicy, choice: DecodeChoice | None = None):
        many = policy.decode
        measures = policy.measure_decode and many > 1
        kept = choice.kept(policy) if measures and choice is not None else None
        self._trials: tuple[int, ...] = (many, many, 1, 1) if measures and kept is None else ()
        self._chosen: int | None = None if self._trials else kept or many
        self._policy, self._choice = policy, choice
        self._times: list[float] = []
        self._last: float | None = None
        self._steps = 0

    @property
    def chosen(self) -> int | None:
        """The thread count the steps after the trials use (None while it is being measured)."""
        return self._chosen

    def __call__(self) -> None:
        now = time.perf_counter()
        if self._last is not None and len(self._times) < len(self._trials):
            self._times.append(now - self._last)
        self._last = now
        step, self._steps = self._steps, self._steps + 1
        wanted = self._trials[step] if step < len(self._trials) else self._settled()
        if torch.get_num_threads() != wanted:
            torch.set_num_threads(wanted)

    def _settled(self) -> int:
        if self._chosen is None:
            self._chosen = self._trials[0] if min(self._times[:2]) <= min(self._times[2:]) else 1
            if self._choice is not None:
                self._choice.keep(self._policy, self._chosen)
        return self._chosen


@contextmanager
def phase_threads(policy: ThreadPolicy | None = None, choice: DecodeChoice | None = None) -> Iterator[DecodeThreads]:
    """For a model whose phases the caller runs by hand: ``policy.prefill`` threads while the block
    runs; the yielded :class:`DecodeThreads` (with the model's ``choice``) is to be called before
    each decode step. The count is put back after."""
    chosen = policy or _policy
    before = torch.get_num_threads()
    torch.set_num_threads(chosen.prefill)
    try:
        yield DecodeThreads(chosen, choice)
    finally:
        torch.set_num_threads(before)


@contextmanager
def threads_by_phase(
    model: torch.nn.Module, policy: ThreadPolicy | None = None, choice: DecodeChoice | None = None
) -> Iterator[DecodeThreads]:
    """While the block runs, ``model`` prefills on ``policy.prefill`` threads and decodes (one new
    token per call) on the threads :class:`DecodeThreads` picks; torch's thread count is put back
    afterwards. Yields, as ``phase_threads`` does, the ``DecodeThreads`` to call before each
    decode step that bypasses ``model``."""
    chosen = policy or _policy

    with phase_threads(chosen, choice) as to_decoding:

        def choose(module: torch.nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
            ids = kwargs.get("input_ids", args[0] if args else None)
            if isinstance(ids, torch.Tensor) and ids.dim() == 2 and ids.shape[1] == 1:
                to_decoding()
            elif torch.get_num_threads() != chosen.prefill:
                torch.set_num_threads(chosen.prefill)

        handle = model.register_forward_pre_hook(choose, with_kwargs=True)
        try:
            yield to_decoding
        finally:
            handle.remove()


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Every linear layer of ``model`` with int8 weights and int8 products (dynamic quantization),
    in place. Faster on a CPU (weights read per token are 4x smaller) but the answers can change.

    Each output row of a weight gets its own scale (per channel), so a row of large weights does
    not cost the others their precision."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():  # torch points eager quantization users to torchao; it still works
        warnings.simplefilter("ignore")
        quantized: torch.nn.Module = quantize_dynamic(  # type: ignore[no-untyped-call]
            model, {torch.nn.Linear: per_channel_dynamic_qconfig}, inplace=True
        )
    return quantized


#: The batch size oneDNN is told to expect when packing: with a large one, products of any number of
#: rows give the same numbers as ``F.linear`` on the plain weight (checked in tests/test_cpu_packing.py).
_PACKING_ROWS = 1024


@cache
def packs_bf16() -> bool:
    """Whether bf16 linear weights are packed for oneDNN here: bf16 instructions and a torch whose
    oneDNN has its bf16 kernels and the packing operators."""
    try:
        return has_fast_bf16() and packs_float32() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@cache
def packs_float32() -> bool:
    """Whether fp32 linear weights can be packed for oneDNN here: a torch with oneDNN and its
    packing operators (x86 builds have them)."""
    operators = getattr(torch.ops, "mkldnn", None)
    try:
        return (
            torch.backends.mkldnn.is_available()  # type: ignore[no-untyped-call]
            and hasattr(operators, "_reorder_linear_weight")
            and hasattr(operators, "_linear_pointwise")
        )
    except (AttributeError, RuntimeError):
        return False


def _packed(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (out x in) in oneDNN's blocked layout for products of any number of rows."""
    packed: torch.Tensor = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), _PACKING_ROWS)
    return packed


def _packed_product(
    x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, post_op: tuple[str, str] = ("none", "")
) -> torch.Tensor:
    """``x`` times a ``_packed`` weight, plus ``bias``, then oneDNN's ``post_op`` (name, variant)."""
    result: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, packed, bias, post_op[0], [], post_op[1])
    return result


class PackedLinear(torch.nn.Module):
    """A bf16 or fp32 ``nn.Linear`` whose weight is kept in oneDNN's blocked layout
    (``pack_bf16_linears``, ``pack_float32_encoders``), optionally followed by the tanh-approximated
    GELU in the same call (``gelu=True``)."""

    def __init__(self, linear: torch.nn.Linear, gelu: bool = False, siblings: PackedSiblings | None = None):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        #: The packed weight: a plain attribute, not a parameter (``.to()`` cannot convert it; see
        #: ``unpack_linears``).
        self.packed = _packed(linear.weight)
        self.bias = linear.bias
        self.gelu = gelu
        #: In a decoding part, for a layer with ``SIBLINGS``: their weights side by side, packed
        #: (``pack_bf16_linears``); else None.
        self.siblings = siblings

    @property
    def weight(self) -> torch.Tensor:
        """The packed weight, for model code that reads a linear's weight to learn its dtype, device or
        shape (Gemma 4's patch embedder casts its pixels to ``input_proj.weight.dtype``); arithmetic on
        it needs :meth:`unpacked`."""
        return self.packed

    @property
    def post_op(self) -> tuple[str, str]:
        """oneDNN's name for what follows the product, and its variant: ("none", "") or ("gelu", "tanh")."""
        return ("gelu", "tanh") if self.gelu else ("none", "")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _packed_product(x, self.packed, self.bias, self.post_op)

    def unpacked(self) -> torch.nn.Linear:
        """The plain ``nn.Linear`` again."""
        return _plain_linear(torch.nn.Parameter(self.packed.to_dense(), requires_grad=False), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed {self.packed.dtype}"


@dataclass(frozen=True)
class PackedSiblings:
    """The weights (and biases) of a group of ``SIBLINGS`` side by side, in order, packed for oneDNN:
    a decode step makes one product for the group where it would make two or three."""

    packed: torch.Tensor
    bias: torch.Tensor | None

    @classmethod
    def of(cls, group: Sequence[torch.nn.Linear]) -> PackedSiblings:
        weights = torch.cat([linear.weight.detach() for linear in group])
        biases = [linear.bias for linear in group]
        bias = None if biases[0] is None else torch.cat(cast(list[torch.Tensor], biases)).detach()
        return cls(_packed(weights), bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return _packed_product(x, self.packed, self.bias)


class DecodingLinear(torch.nn.Module):
    """An fp32 ``nn.Linear`` that also keeps its weight transposed (``columns``: in x out, contiguous)
    for products of one row, which is what a decode step computes (``prepare_float32_decoding``).

    ``F.linear`` runs a one-row product as a matrix-vector product that reads a weight with more
    outputs than inputs well below the memory's speed; the same product on the transposed copy
    reads it faster (one step of SmolVLM-256M: ``benchmarks/results/decode_bandwidth_avx2.md``).
    Products of several rows (a prefill) are ``F.linear``'s on the plain weight, so they are
    unchanged; a one-row product differs from ``F.linear``'s only in the order of its sums (within
    1e-5, tested)."""

    def __init__(self, linear: torch.nn.Linear, group: torch.Tensor | None = None, start: int = 0):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        #: With siblings that read the same input (``SIBLINGS``): their transposed weights side by
        #: side, in order, this layer's from column ``start``; else None.
        self.group = group
        #: The transposed copy (a view into ``group`` when there is one): a plain attribute, not a
        #: parameter (``unpack_linears`` before ``.to()``).
        self.columns: torch.Tensor = (
            linear.weight.detach().t().contiguous() if group is None else group[:, start : start + self.out_features]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() != x.shape[-1]:  # several rows: exactly what nn.Linear computes
            return torch.nn.functional.linear(x, self.weight, self.bias)
        return self.one_row(x.view(1, -1)).view(*x.shape[:-1], self.out_features)

    def one_row(self, x: torch.Tensor) -> torch.Tensor:
        """The product of a 1 x ``in_features`` ``x``."""
        if self.bias is None:
            return torch.mm(x, self.columns)
        return torch.addmm(self.bias, x, self.columns)

    def unpacked(self) -> torch.nn.Linear:
        """The plain ``nn.Linear`` again, with the same parameters."""
        return _plain_linear(self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, transposed for one-row products"


#: The most memory the transposed copies may take, as a share of the machine's: a large fp32 model
#: decodes from its plain weights instead.
_DECODING_MEMORY_SHARE = 0.15
#: Linear layers of one parent that read the same input, by their names in transformers' text
#: models: their copies sit side by side, so a decode step can run each group as one product.
SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def prepare_float32_decoding(model: torch.nn.Module, decoding: Sequence[torch.nn.Module]) -> int:
    """Replace, in place, fp32 ``nn.Linear`` layers on the CPU inside the ``decoding`` modules (the
    text model and the output layer: what a decode step runs) by ``DecodingLinear``, where their
    copies fit in memory: each group of ``SIBLINGS`` (copied side by side), and the other layers
    with at least as many outputs as inputs (those with fewer read their plain weight as fast or
    faster, measured in the results file that ``DecodingLinear`` cites). Returns how many."""
    parts = [module for part in decoding for module in part.modules()]
    groups = [group for parent in parts for group in _sibling_groups(parent, torch.float32)]
    grouped = [linear for group in groups for linear in group]
    grouped_ids = {id(linear) for linear in grouped}
    alone = [module for module in parts if _widening_float32(module) and id(module) not in grouped_ids]
    if not _copies_fit([*alone, *grouped]):
        return 0
    made = {id(linear): DecodingLinear(linear) for linear in alone}
    for group in groups:
        columns = torch.cat([linear.weight.detach() for linear in group]).t().contiguous()
        starts = itertools.accumulate((linear.out_features for linear in group[:-1]), initial=0)
        for linear, start in zip(group, starts, strict=True):
            made[id(linear)] = DecodingLinear(linear, columns, start)
    return _replace_children(model, lambda module: id(module) in made, lambda module: made[id(module)])


def _copies_fit(linears: Sequence[torch.nn.Linear]) -> bool:
    """Whether copies of these layers' weights fit in the machine's share for them."""
    memory = physical_memory()
    return memory is not None and sum(linear.weight.nbytes for linear in linears) <= memory * _DECODING_MEMORY_SHARE


def _sibling_groups(parent: torch.nn.Module, dtype: torch.dtype) -> list[list[torch.nn.Linear]]:
    """The ``SIBLINGS`` groups among ``parent``'s children: CPU linears in ``dtype`` of one input
    size, all with a bias or all without."""
    found = []
    for names in SIBLINGS:
        linears = [getattr(parent, name, None) for name in names]
        if all(isinstance(linear, torch.nn.Module) and _cpu_linear_in(linear, dtype) for linear in linears):
            typed = cast(list[torch.nn.Linear], linears)
            inputs, biases = {linear.in_features for linear in typed}, {linear.bias is None for linear in typed}
            if len(inputs) == 1 and len(biases) == 1:
                found.append(typed)
    return found


def physical_memory() -> int | None:
    """Bytes of memory this machine has (None where the system does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def _widening_float32(module: torch.nn.Module) -> TypeGuard[torch.nn.Linear]:
    return _cpu_linear_in(module, torch.float32) and module.out_features >= module.in_features


def pack_float32_encoders(model: torch.nn.Module, decoding: Sequence[torch.nn.Module]) -> int:
    """Replace, in place, the fp32 ``nn.Linear`` layers on the CPU outside the ``decoding`` modules
    (the vision encoder and projector: products of many rows) by ``PackedLinear``; their plain
    weights are let go. oneDNN's fp32 kernels on the blocked layout compute these products faster
    than ``F.linear`` (``benchmarks/results/cpu_vs_openvino_avx2.md`` times the picture), equal to
    them within rounding. The decoding parts stay as they are: oneDNN is slow at one-row products.
    The GELU is not fused here: on an AVX2 CPU oneDNN's fused fp32 GELU was slower than torch's
    own after the product. Returns how many were packed."""
    decoders = {id(module) for part in decoding for module in part.modules()}
    return _replace_children(model, lambda module: id(module) not in decoders and _cpu_linear_in(module, torch.float32),
                             PackedLinear)


def pack_bf16_linears(model: torch.nn.Module, decoding: Sequence[torch.nn.Module] = ()) -> int:
    """Replace, in place, every bf16 ``nn.Linear`` of ``model`` on the CPU by a ``PackedLinear``
    (the plain weight is let go, so memory does not grow, except for a weight that another module
    shares). Returns how many were packed.

    Where an MLP applies the tanh-approximated GELU to ``fc1``'s output (an ``activation_fn`` child,
    as in transformers' SigLIP and Moondream's vision encoder), the GELU runs inside ``fc1``'s call,
    on its unrounded sums (one rounding to bf16 instead of two), saving the activation's own pass over
    the vision encoder's largest tensors.

    In the ``decoding`` parts, each group of ``SIBLINGS`` also gets one packed copy of its weights side
    by side (``PackedLinear.siblings``), where the copies fit in memory: a one-row product pays a
    fixed cost per call that the small layers of a decode step feel, so a step makes fewer calls
    (a SmolVLM-256M step with them: ``benchmarks/results/decode_bandwidth.md``)."""
    fused = 0
    for module in list(model.modules()):
        fc1, activation = getattr(module, "fc1", None), getattr(module, "activation_fn", None)
        if isinstance(fc1, torch.nn.Linear) and _packable(fc1) and _is_tanh_gelu(activation):
            module.fc1, module.activation_fn = PackedLinear(fc1, gelu=True), torch.nn.Identity()
            fused += 1
    siblings = _packed_siblings(decoding)
    made = _replace_children(model, _packable, lambda linear: PackedLinear(linear, siblings=siblings.get(id(linear))))
    return fused + made


def _packed_siblings(decoding: Sequence[torch.nn.Module]) -> dict[int, PackedSiblings]:
    """For each bf16 layer of a ``SIBLINGS`` group in the ``decoding`` parts (by ``id``): its group's
    weights side by side, packed; nothing where the copies would not fit in memory."""
    parents = [module for part in decoding for module in part.modules()]
    groups = [group for parent in parents for group in _sibling_groups(parent, torch.bfloat16)]
    if not _copies_fit([linear for group in groups for linear in group]):
        return {}
    made: dict[int, PackedSiblings] = {}
    for group in groups:
        packed = PackedSiblings.of(group)
        made.update((id(linear), packed) for linear in group)
    return made


def unpack_linears(model: torch.nn.Module) -> int:
    """Undo ``pack_bf16_linears``, ``pack_float32_encoders`` and ``prepare_float32_decoding``
    (before a model changes its format or device)."""
    for module in list(model.modules()):
        fc1 = getattr(module, "fc1", None)
        if isinstance(fc1, PackedLinear) and fc1.gelu:
            module.activation_fn = torch.nn.GELU(approximate="tanh")
    return _replace_children(
        model, lambda module: isinstance(module, (PackedLinear, DecodingLinear)), lambda module: module.unpacked()
    )


def _plain_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.nn.Linear:
    """An ``nn.Linear`` with these parameters (none allocated for it)."""
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    linear.weight = cast(torch.nn.Parameter, weight)
    if bias is not None:
        linear.bias = cast(torch.nn.Parameter, bias)
    return linear


def _is_tanh_gelu(module: Any) -> bool:
    """torch's ``GELU(approximate="tanh")``, or transformers' ``GELUTanh`` (a module whose ``act``
    is ``F.gelu`` with ``approximate="tanh"``), recognised without importing transformers."""
    if isinstance(module, torch.nn.GELU):
        return module.approximate == "tanh"
    act = getattr(module, "act", None)
    return (
        isinstance(module, torch.nn.Module)
        and isinstance(act, partial)
        and act.func is torch.nn.functional.gelu
        and act.keywords == {"approximate": "tanh"}
    )


def _packable(module: torch.nn.Module) -> bool:
    return _cpu_linear_in(module, torch.bfloat16)


def _cpu_linear_in(module: torch.nn.Module, dtype: torch.dtype) -> TypeGuard[torch.nn.Linear]:
    """A plain ``nn.Linear`` on the CPU with weights in ``dtype``."""
    weight = getattr(module, "weight", None)
    return (
        type(module) is torch.nn.Linear
        and isinstance(weight, torch.Tensor)
        and weight.dtype == dtype
        and weight.device.type == "cpu"
    )


def _replace_children(
    model: torch.nn.Module, wanted: Callable[[torch.nn.Module], bool], make: Callable[[Any], torch.nn.Module]
) -> int:
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if wanted(child):
                setattr(parent, name, make(child))
                count += 1
    return count
