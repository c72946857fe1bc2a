"""The decoders behind :func:`posenc.models.generate.generate`: one model's caches, padding mask and (compiled)
decode step for one batch, cache length, dtype and device, kept on the model (a few, least recently used
dropped first) and used by one ``generate`` call at a time."""

from __future__ import annotations

import contextlib
import threading
import types
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..attention.cache import KVCache
from ..attention.static_cache import StaticKVCache

if TYPE_CHECKING:
    from .lm import TransformerLM

Step = Callable[[Tensor, Tensor], Tensor]


class _Decoder:
    """Caches, padding mask and (compiled) step of one model for one (batch, max_len, dtype, device)."""

    def __init__(
        self, model: TransformerLM, batch: int, max_len: int, device: torch.device, compile: bool | str
    ):
        self.model, self.max_len = model, max_len
        self.caches = [StaticKVCache(max_len, checked=False) for _ in model.blocks]  # generate checks max_len
        self.valid = torch.ones(batch, max_len, dtype=torch.bool, device=device)  # False: padding slots
        self.step: Step = self._step
        self.compiled = bool(compile)
        if compile:
            backend = "inductor" if compile is True else str(compile)
            self.step = torch.compile(
                _own_code(self._step),
                fullgraph=True,
                dynamic=False,
                backend=backend,
                **_tuning(backend, device),
            )

    @contextlib.contextmanager
    def trusted(self) -> Iterator[None]:
        """Within one ``generate`` call, after its first compiled step: skip dynamo's guard evaluation.

        Checking the guards of the compiled step (every parameter, buffer and attribute the model reads) costs
        about 0.4 ms per token on a CPU, a fifth of the step. The first step of each call evaluates them all
        (and recompiles if the model changed since the last call); the later steps of the same call run the
        same decoder on the same model with inputs of the same shapes, dtypes and devices, which is exactly
        the condition under which ``torch.compiler.set_stance(skip_guard_eval_unsafe=True)`` is safe.
        """
        if not self.compiled:
            yield
            return
        with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
            yield

    def _step(self, token: Tensor, pos: Tensor) -> Tensor:
        """``token, pos: (B, 1)`` -> next-token logits ``(B, V)``; writes the token's keys at the next slot."""
        keep = self.caches[0].keep_mask(self.valid, 1)  # (B, 1, 1, max_len)
        return self.model(token, positions=pos, mask=keep, caches=self.caches)[:, -1]  # type: ignore[no-any-return]

    def prefill(self, tokens: Tensor, positions: Tensor, prompt_mask: Tensor) -> Tensor:
        """Reset, run the prompt ``(B, S)`` through the model (eager) and return the last logits ``(B, V)``.

        The prompt attends to its own ``S`` keys only, in growing caches, which are then written to the first
        ``S`` slots of the preallocated ones: over all ``max_len`` slots it needed a ``(B, 1, S, max_len)``
        mask (and SDPA a float copy of it, and no causal fast path) for slots it cannot see. Without padding
        there is no mask at all (plain causal attention, as a forward of the prompt)."""
        for c in self.caches:
            c.reset()
        s = tokens.shape[1]
        self.valid.fill_(True)
        self.valid[:, :s] = prompt_mask
        growing = [KVCache() for _ in self.caches]
        mask = None if bool(prompt_mask.all()) else prompt_mask  # (B, S) key padding (one host read a call)
        logits = self.model(tokens, positions=positions, mask=mask, caches=growing)[:, -1]  # (B, V)
        for cache, prompt in zip(self.caches, growing, strict=True):
            assert prompt.k is not None and prompt.v is not None and prompt.positions is not None
            cache.update(prompt.k, prompt.v, prompt.positions)  # slots 0 .. S-1
        return logits  # type: ignore[no-any-return]


def _tuning(backend: str, device: torch.device) -> dict[str, Any]:
    """How inductor compiles the decode step: on CUDA ``mode="reduce-overhead"`` (replayed as a CUDA graph); on a
    CPU ``cpp_wrapper`` (the compiled graph calls its kernels from C++, not from Python).

    A decode step is a few dozen small kernels around memory-bound matrix-vector products, so the Python code
    that calls them is a large part of it: with ``cpp_wrapper`` a compiled step of the decode bench's model
    takes 13-27 % less (``generate``, 128 tokens, 2-core CPU), for a longer first compile (about 10-15 s
    instead of 1-4 s, C++ code). Other backends take no options.
    """
    if backend != "inductor":
        return {}
    if device.type == "cuda":
        return {"mode": "reduce-overhead"}
    return {"options": {"cpp_wrapper": True}} if device.type == "cpu" else {}


def _own_code(method: Step) -> Step:
    """``method`` bound to its own copy of its code object.

    Dynamo keeps compiled graphs per code object, at most ``recompile_limit`` (8) of them, and every decoder
    (another model, batch or cache length) needs its own graph of ``_step``: with one shared code object the
    ninth decoder in a process would fail to compile (``fullgraph=True`` turns the limit into an error). A
    copy per decoder gives each its own cache, freed with the decoder.
    """
    func = method.__func__  # type: ignore[attr-defined]
    clone = types.FunctionType(func.__code__.replace(), func.__globals__, func.__name__, func.__defaults__)
    return types.MethodType(clone, method.__self__)  # type: ignore[attr-defined,return-value]


#: Decoders kept per model, least recently used dropped first: each holds every layer's caches (and, compiled,
#: its graph), so a model called with ever new batches or lengths must not pile them up.
KEEP_DECODERS = 4
_ATTR = "_posenc_decoders"  # the model's attribute holding its _Decoders (a plain one: not in state_dict)
_NEW_TABLE = threading.Lock()  # two threads' first calls on one model must not each make a table


class _Decoders:
    """One model's decoders, most recently used last, and the lock its ``generate`` calls take in turn.

    Kept on the model itself, so they live exactly as long as it does (a decoder refers to its model: in a
    module-level map they kept every model alive). Copies and pickles of the model start with an empty table
    (``__reduce__``), as does a shallow copy on its first call (``owner`` is the model the table belongs to).
    """

    def __init__(self, owner: TransformerLM | None = None) -> None:
        self.owner = None if owner is None else weakref.ref(owner)
        self.table: OrderedDict[tuple[Any, ...], _Decoder] = OrderedDict()
        self.lock = threading.Lock()
        self.holder: int | None = None  # the thread inside a generate call of this model, if any

    def __reduce__(self) -> tuple[type[_Decoders], tuple[()]]:
        return (_Decoders, ())

    @contextlib.contextmanager
    def held(self) -> Iterator[_Decoders]:
        """The table, for one ``generate`` call at a time: a call from another thread waits for the running
        one (they would share the caches); a call from inside the running one (a forward hook) raises."""
        if self.holder == threading.get_ident():
            raise RuntimeError(
                "generate: called on a model from inside its own generate call (a hook?); the two would share "
                "one set of caches"
            )
        with self.lock:
            self.holder = threading.get_ident()
            try:
                yield self
            finally:
                self.holder = None


def _decoders(model: TransformerLM) -> _Decoders:
    """The model's :class:`_Decoders`, made on first use."""
    table = model.__dict__.get(_ATTR)
    if isinstance(table, _Decoders) and table.owner is not None and table.owner() is model:
        return table
    with _NEW_TABLE:
        table = model.__dict__.get(_ATTR)
        if not (isinstance(table, _Decoders) and table.owner is not None and table.owner() is model):
            table = _Decoders(model)
            object.__setattr__(model, _ATTR, table)  # a plain attribute: no parameter, buffer or submodule
        return table


def kept_decoders(model: TransformerLM) -> list[_Decoder]:
    """The decoders ``generate`` keeps for ``model``, least recently used first (at most ``KEEP_DECODERS``)."""
    table = model.__dict__.get(_ATTR)
    return list(table.table.values()) if isinstance(table, _Decoders) else []


def _decoder(
    model: TransformerLM, batch: int, max_len: int, device: torch.device, compile: bool | str
) -> _Decoder:
    """The model's decoder for this call (made if new, the least recently used one dropped past the limit)."""
    if device.index is None and device.type != "cpu":  # "cuda" -> "cuda:0", as tensors report it: one key
        device = torch.empty(0, device=device).device
    # the dtype the keys are computed in: the parameters', or autocast's (a decoder's caches hold one dtype)
    autocast = torch.is_autocast_enabled(device.type) and torch.get_autocast_dtype(device.type)
    # under inference_mode the caches are inference tensors, which a later plain call may not write
    inference = torch.is_inference_mode_enabled()
    key = (batch, max_len, device, next(model.parameters()).dtype, autocast, inference, compile)
    table = _decoders(model).table
    dec = table.get(key)
    if dec is None:
        while len(table) >= KEEP_DECODERS:
            table.popitem(last=False)
        dec = table[key] = _Decoder(model, batch, max_len, device, compile)
    table.move_to_end(key)
    return dec
