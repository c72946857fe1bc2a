"""The seam between attention and positional encodings.

Every encoding is a :class:`PositionEncoding` and overrides only the hooks of its family; the others are
identities. ``posenc.Attention`` and ``posenc.models.TransformerLM`` call the hooks at fixed places and never
ask which encoding they hold (see ``docs/architecture.md``):

========================  ==========================================  ===========================
hook                      called where                                family
========================  ==========================================  ===========================
``embed``                 token embeddings, once, before the blocks   absolute
``rotate``                on q and k, before the KV cache             rotary
``score_bias``            added to the logits (materialized)          bias, Shaw's key term
``score_mod``             the same bias as a FlexAttention score_mod  bias (lean backend)
``value_term``            added to the attention output               Shaw's value term
``kv_rows``               both terms as rows added to k, v (Q = 1)    Shaw's key and value terms
========================  ==========================================  ===========================

Positions are integer tensors ``(1, S)`` or ``(B, S)``: the absolute position of every query and key
(KV-cache offsets and packed sequences are just other positions). Hooks must accept positions past the real ones:
a CPU ``flex`` call padded to a bucket length continues them into padding rows that are masked and dropped
(see ``docs/architecture.md``).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from .functional.tables import RowViews
from .registry import ENCODINGS, FAMILIES, Sizes
from .session import SessionMemo
from .state_options import OptionsInState
from .validation import check_int, check_positions

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")

ScoreMod = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]
E = TypeVar("E", bound="PositionEncoding")


class PositionEncoding(nn.Module):
    """Base class: every hook is the identity (this alone is NoPE).

    A subclass is a whole encoding, in one file. Its class attributes say what it is:

    * ``name``: the registry name; defining the subclass registers it (``posenc.build(name, ...)``,
      ``posenc.available()``). None (the default) for abstract bases that are not encodings by themselves.
    * ``family``: "none", "absolute", "relative", "rotary" or "bias" (the model applies "absolute" ones to the
      token embeddings, the others in every attention layer).
    * ``sizes``: the model sizes ("dim", "heads", "head_dim") its constructor takes first, in that order;
      ``build`` passes them positionally and every other option by keyword, so the constructor's defaults are
      the only defaults.

    It overrides the hooks of its family, and :meth:`from_sizes` only when the sizes do not map one to one onto
    constructor arguments.
    """

    name: ClassVar[str | None] = None
    family: ClassVar[str] = "none"
    sizes: ClassVar[tuple[str, ...]] = ()
    #: Constructor options that choose how the encoding computes (a kernel, a precomputed table's length), never
    #: what: the same result for every value (bitwise for a table's length; a kernel's within its rounding).
    #: ``posenc compare`` and ``tasks`` refuse them in ``--encodings`` (a variant would be the same model under
    #: another name; an earlier run's files keep loading) and :func:`posenc.hf.install_rope` takes only these.
    runtime_options: ClassVar[tuple[str, ...]] = ()
    #: True when ``value_term`` needs the attention weights (forces the explicit-softmax path).
    needs_probs: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if isinstance(name, str) and (name == "all" or not _NAME.fullmatch(name)):
            raise ValueError(
                f"{cls.__qualname__}: encoding name {name!r} is not allowed: a name is letters, digits and _ . - "
                "(not starting with . or -; it names files, and ':', '+', '@', '=', ',' separate options, "
                "extensions and entries), and 'all' stands for every encoding in a list"
            )
        _check_declaration(cls)
        for hook in ("score_bias", "score_mod", "pairwise"):  # hooks written before `runs`: never pass it
            fn = cls.__dict__.get(hook)
            params = inspect.signature(fn).parameters.values() if callable(fn) else ()
            if callable(fn) and not any(p.name == "runs" or p.kind is p.VAR_KEYWORD for p in params):
                cls.takes_runs = False
        if name is not None:
            old = ENCODINGS._items.get(name)
            same = old is not None and (old.__module__, old.__qualname__) == (
                cls.__module__,
                cls.__qualname__,
            )
            ENCODINGS.add(name, cls, replace=same)  # a re-imported module may redefine its own class

    def __init__(self) -> None:
        super().__init__()
        self.register_load_state_dict_post_hook(tables_after_load)

    # -- what experiments and models may ask of any encoding ------------------------------------------------
    @classmethod
    def from_sizes(cls: type[E], sizes: Sizes, **options: Any) -> E:
        """Construct from model sizes (those named in ``sizes``) and keyword ``options``."""
        return cls(*(sizes.require(field) for field in cls.sizes), **options)

    @classmethod
    def training_options(cls, train_len: int) -> dict[str, Any]:
        """Options to build this encoding for training at length ``train_len`` (e.g. a learned table's rows)."""
        return {}

    @property
    def max_length(self) -> int | None:
        """The longest sequence of positions ``0 .. n-1`` this encoding takes, or None for no limit."""
        return None

    def max_length_in(self, dtype: torch.dtype) -> int | None:
        """:attr:`max_length` for queries and keys of ``dtype`` (xPos's scales: float16 holds fewer)."""
        return self.max_length

    @property
    def is_absolute(self) -> bool:
        """Whether the encoding is added to token embeddings (``embed``) rather than used inside attention."""
        return self.family == "absolute"

    #: True when :meth:`with_scaling` gives a context-extended copy (RoPE).
    scalable: ClassVar[bool] = False
    #: True when :meth:`score_bias` and :meth:`score_mod` take ``runs=True`` (positions vouched to be runs,
    #: :class:`posenc.attention.inputs.AttentionInputs`); hooks of encodings that leave it False get three arguments.
    takes_runs: ClassVar[bool] = False
    #: True when the encoding is defined for causal attention only (xPos: for keys after the query its factor
    #: grows instead of decaying); ``posenc.Attention(causal=False)`` refuses it. See :meth:`causal_only_reason`.
    causal_only: ClassVar[bool] = False

    def causal_only_reason(self) -> str | None:
        """Why this encoding, as configured, gives no meaningful bias for keys after the query, or None when it
        serves bidirectional attention: ``posenc.Attention(causal=False)`` refuses it (when built, and at every
        call, for an encoding assigned to ``attn.position`` later). Default: :attr:`causal_only`."""
        return "it is defined for causal attention only" if self.causal_only else None

    def with_scaling(self, scaling: Any) -> PositionEncoding:
        """A copy of this encoding with the RoPE context-extension ``scaling`` (rotary encodings that support it)."""
        raise TypeError(f"{type(self).__name__} has no RoPE context-extension scaling")

    def embed(self, x: Tensor, positions: Tensor | None = None) -> Tensor:
        """Absolute hook. ``x: (B, S, dim)``, ``positions: (S,)`` or ``(B, S)`` -> ``(B, S, dim)``."""
        return x

    def rotate(self, q: Tensor, k: Tensor, positions: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Rotary hook on new queries and keys. ``q: (B, H, S, D)``, ``k: (B, Hkv, S, D)``, both at ``positions``."""
        return q, k

    def score_bias(self, q: Tensor, q_pos: Tensor, k_pos: Tensor, runs: bool = False) -> Tensor | None:
        """Additive logit bias (already on the scale of ``q.k / sqrt(D)``), or None.

        ``runs`` (only passed where :attr:`takes_runs`): the caller vouches that ``q_pos`` and ``k_pos`` are each
        ``start + arange`` shared by the batch.

        Args:
            q: ``(B, H, Q, D)`` queries after ``rotate``.
            q_pos: ``(1|B, Q)`` query positions; k_pos: ``(1|B, K)`` key positions.

        Returns:
            Tensor broadcastable to ``(B, H, Q, K)``, or None for no bias.
        """
        return None

    def score_mod(self, q: Tensor, q_pos: Tensor, k_pos: Tensor, runs: bool = False) -> ScoreMod | None:
        """The same bias as a FlexAttention ``score_mod(score, b, h, q_idx, kv_idx)``, or None for no bias
        (``runs``: as in :meth:`score_bias`)."""
        return None

    def value_term(self, probs: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor | None:
        """Term added to the attention output. ``probs: (B, H, Q, K)`` -> ``(B, H, Q, D)`` or None."""
        return None

    def kv_rows(self, q_pos: Tensor, k_pos: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """For one query: rows added to the keys and to the values that carry the encoding's terms.

        For ``Q == 1``, ``(key_rows, value_rows)``, each ``(1|B, 1|H, K, D)`` or None: ``q . (k_j + key_rows_j)
        / sqrt(D)`` is the logit with :meth:`score_bias` included (key rows, when given, stand for the whole
        ``score_bias``), and ``probs @ (v + value_rows)`` the output with :meth:`value_term` included. A backend
        that takes neither a bias nor the weights (``sdpa``) then runs the encoding as plain attention (a
        decode step). ``(None, None)`` when the encoding has neither or ``Q != 1``. ``q_pos: (1|B, 1)``,
        ``k_pos: (1|B, K)``.
        """
        return None, None

    def pair_bytes(self, heads: int, item: int, grad: bool) -> int:
        """Memory estimate: bytes per (query, key) pair and batch row of the tensors :meth:`score_bias` and
        :meth:`value_term` build where a backend materializes them (``math``, ``sdpa``; ``flex`` reads
        ``score_mod`` per score and builds none). ``grad=False``: the most alive at once while they run, their
        ``(H,)`` result included; ``grad=True``: what autograd keeps of them until the backward pass. ``item``:
        the bytes of one logit (4 for float32, 8 for float64). Read by :mod:`posenc.attention.memory` (the
        memory checks of ``generate`` and of training); err high. Default: 0 (no per-pair tensor)."""
        return 0

    def bias(self, q_len: int, k_len: int, offset: int = 0) -> Tensor:
        """The additive logit bias ``(heads, q_len, k_len)`` for queries at ``offset...`` and keys at ``0...``.

        Only for encodings whose bias does not depend on the query content.
        """
        dev = _device_of(self)
        q_pos, k_pos = bias_positions(f"{type(self).__name__}.bias", q_len, k_len, offset, dev)
        q_len = q_pos.shape[-1]
        dummy = torch.zeros(1, 1, q_len, 1, device=dev)
        out = self.score_bias(dummy, q_pos, k_pos)
        if out is None:
            return torch.zeros(1, q_len, k_len, device=dev)
        return out.reshape(-1, q_len, k_len) if out.dim() == 4 else out

    # -- derived buffers: tables computed from the configuration, never learned, never cast --------------
    def derived_buffers(self, device: torch.device) -> dict[str, Tensor]:
        """Non-persistent buffers computed from the configuration (phase tables, slopes, bucket maps), by name.

        Registered by :meth:`register_derived` and rebuilt on the new device whenever the module moves, so
        ``.to(torch.bfloat16)`` never degrades them and ``to_empty`` after meta-device construction gives real
        values. Default: none.
        """
        return {}

    def register_derived(self, device: torch.device | None = None) -> None:
        """Register :meth:`derived_buffers` (call at the end of ``__init__``; default device: the current one)."""
        dev = torch.empty(0).device if device is None else torch.device(device)
        for name, value in self.derived_buffers(dev).items():
            self.register_buffer(name, value, persistent=False)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> PositionEncoding:  # type: ignore[override]
        super()._apply(fn, recurse)
        device = next((b.device for _, b in self.named_buffers(recurse=False)), None)
        self._rebuild_derived(device)
        return self

    def _rebuild_derived(self, device: torch.device | None) -> None:
        """Recompute :meth:`derived_buffers` on ``device`` (None: leave them) and drop every view of the old ones.

        Outside inference mode whatever the caller's mode: tables rebuilt by a move under
        ``torch.inference_mode()`` (even ``.to`` where the module already is) were inference tensors, which no
        later training step may save for backward."""
        if device is not None and type(self).derived_buffers is not PositionEncoding.derived_buffers:
            with torch.inference_mode(False):
                tables = self.derived_buffers(device)
            for name, value in tables.items():
                setattr(self, name, value)
        for value in vars(self).values():  # views of the old tables: dropped, so nothing keeps those alive
            if isinstance(value, (RowViews, SessionMemo)):
                value.clear()

    def tables_on_meta(self) -> bool:
        """Whether this encoding's tensors are on the meta device: its first parameter or buffer (its own before its
        children's); False without any. Dict reads only (a hook's check on the per-token path)."""
        for t in (*self._parameters.values(), *self._buffers.values()):
            if t is not None:
                return t.is_meta
        for child in self._modules.values():
            for t in () if child is None else (*child.parameters(), *child.buffers()):
                return t.is_meta
        return False

    def forward(self, *args: Tensor, **kwargs: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        raise TypeError(f"{type(self).__name__} is used through its hooks (embed, rotate, ...), not called")


def tables_after_load(module: nn.Module, incompatible_keys: object = None) -> None:
    """A load_state_dict post-hook (:class:`PositionEncoding`, ``posenc.Attention`` and ``TransformerLM`` register it):
    derived tables left on the meta device, as ``load_state_dict(..., assign=True)`` into a model built on meta
    leaves them (they are not in the state_dict), are computed where the loaded tensors now live. Without it T5's
    buckets stayed on meta and its bias came out wrong without an error; other encodings failed at the first
    call."""
    device = next((t.device for t in (*module.parameters(), *module.buffers()) if not t.is_meta), None)
    if device is None:
        return
    for m in module.modules():
        if isinstance(m, PositionEncoding) and any(b.is_meta for b in m.buffers(recurse=False)):
            m._rebuild_derived(device)


#: The sizes an encoding may ask for in ``sizes`` (fields of :class:`posenc.registry.Sizes`).
SIZE_NAMES = ("dim", "heads", "head_dim")


def _check_declaration(cls: type[PositionEncoding]) -> None:
    """Refuse, when the class is defined, the declarations that would otherwise fail far away or silently: a
    ``family`` outside :data:`FAMILIES` (an "Absolute" encoding was applied in attention, its ``embed`` never
    called), ``sizes`` that are not a tuple of :data:`SIZE_NAMES`, and :class:`OptionsInState` listed after the
    encoding's base (its options then were not saved). (A ``value_term`` without ``needs_probs`` is refused at
    the first attention call: see :func:`posenc.attention.inputs.check_value_term`.)"""
    where = cls.__qualname__
    if cls.family not in FAMILIES:
        raise TypeError(f"{where}: family must be one of {', '.join(FAMILIES)}, got {cls.family!r}")
    if not isinstance(cls.sizes, (tuple, list)) or any(s not in SIZE_NAMES for s in cls.sizes):
        raise TypeError(
            f"{where}: sizes must be a tuple of {', '.join(map(repr, SIZE_NAMES))} (the model sizes its constructor "
            f"takes first, in that order), got {cls.sizes!r}"
        )
    if issubclass(cls, OptionsInState) and cls.state_options:
        mro = cls.__mro__
        if mro.index(OptionsInState) > mro.index(nn.Module):
            raise TypeError(
                f"{where}: list OptionsInState before the encoding's base class (class {cls.__name__}"
                "(OptionsInState, Base)); after it, nn.Module's extra-state methods win and the options are not saved"
            )


class NoPE(PositionEncoding):
    """No positional information at all: the causal mask is the only source of order (Kazemnejad et al. 2023).

    ``forward(x)`` returns ``x`` unchanged, so it also drops in where an absolute encoding would go.
    """

    name: ClassVar[str | None] = "none"
    family: ClassVar[str] = "none"

    def forward(self, x: Tensor, positions: Tensor | None = None) -> Tensor:  # type: ignore[override]
        return x


def _device_of(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")


def default_positions(seq_len: int, device: torch.device, offset: int = 0) -> Tensor:
    """``(1, S)`` positions ``offset ... offset + S - 1``."""
    return torch.arange(offset, offset + seq_len, device=device).unsqueeze(0)


def bias_positions(
    owner: str, q_len: int, k_len: int, offset: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Positions ``(1, Q)`` and ``(1, K)`` of a ``bias(q_len, k_len, offset)`` call: queries at ``offset ...``, keys
    at ``0 ...``, each argument checked (an integer >= 0, the last position within ``2**62``: int64 distances)."""
    q_len, k_len, offset = (
        check_int(n, v, at_least=0, owner=owner)
        for n, v in (("q_len", q_len), ("k_len", k_len), ("offset", offset))
    )
    if offset + q_len > 2**62 or k_len > 2**62:
        raise ValueError(
            f"{owner}: positions reach {max(offset + q_len, k_len) - 1} (offset={offset}, q_len={q_len}, "
            f"k_len={k_len}); they must stay below 2**62, where int64 distances k - q are exact"
        )
    q_pos = torch.arange(offset, offset + q_len, device=device).unsqueeze(0)  # (1, Q)
    k_pos = torch.arange(k_len, device=device).unsqueeze(0)  # (1, K)
    return q_pos, k_pos


def as_positions(
    positions: Tensor | None,
    seq_len: int,
    device: torch.device,
    offset: int = 0,
    batch: int | None = None,
    *,
    owner: str,
) -> Tensor:
    """Normalize user positions to ``(1|B, S)`` long, or build the default; raise on a length (or, when
    ``batch`` is given, batch) mismatch and on non-integer (bool, float, complex) positions, the message naming
    ``owner`` (the encoding or module they were given to, e.g. "LearnedAbsolute"). Checks only shape and dtype:
    no device sync."""
    if positions is None:
        return default_positions(seq_len, device, offset)
    check_positions(owner, positions, seq_len, batch=batch, meta=device.type == "meta")
    if positions.dim() == 1:
        positions = positions.unsqueeze(0)
    return positions.to(device=device, dtype=torch.long)
