"""A posenc :class:`RoPE` behind transformers' rotary-embedding interface, in each table layout transformers uses.

Layouts of the ``(B, S, ·)`` tables a transformers rotary module returns for ``R`` rotated dims:

* ``"half"``: ``(cos, sin)``, each ``R`` wide, the two halves repeated (``cat((f, f))``; Llama, Mistral, Qwen,
  GPT-NeoX, Phi, DeepSeek-V3 ...);
* ``"interleaved"``: ``(cos, sin)``, each ``R`` wide, every column repeated (``repeat_interleave(f, 2)``; Cohere);
* ``"compact"``: ``(cos, sin)``, each ``R/2`` wide, un-duplicated (GPT-OSS); ``order="sin_cos"`` returns
  ``(sin, cos)`` (GPT-J, CodeGen);
* ``"complex"``: one complex ``freqs_cis = (cos + i sin)``, ``R/2`` wide (Llama 4, DeepSeek-V2).

The attention factor (YaRN / LongRoPE temperature) is folded into the tables, as transformers does.

GPT-J and CodeGen compute their frequencies as ``1 / 10000 ** (arange(int64) / dim)``: an integer division
that yields torch's *default* dtype, so a model built in bfloat16 (``from_config(config, dtype=torch.bfloat16)``,
``from_pretrained(..., dtype=torch.bfloat16)``) has frequencies rounded to bfloat16 in its float32 table (5e-4
off the exact table at position 7, 0.2 rad of angle at position 2000). :func:`match_layout` recognises such a
table and :class:`HFRotaryEmbedding` then rounds its frequencies the same way (``freq_dtype``), so the model
keeps exactly the logits it had. CodeGen also returns its table as it is stored, float32 for bfloat16 activations
(``table_dtype``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NamedTuple, cast

import torch
from torch import Tensor, nn

from ..functional.rotary import rope_cos_sin
from ..rotary.rope import RoPE
from ..validation import check_position_range
from .errors import UnsupportedRotary

Layout = Literal["half", "interleaved", "compact", "complex"]
Order = Literal["cos_sin", "sin_cos"]
LAYOUTS: tuple[Layout, ...] = ("half", "interleaved", "compact", "complex")


class Match(NamedTuple):
    """How a transformers rotary module lays out its tables (:func:`match_layout`), as :class:`HFRotaryEmbedding`
    takes it: ``HFRotaryEmbedding(rope, *match)``."""

    layout: Layout
    order: Order
    freq_dtype: torch.dtype | None = None
    table_dtype: torch.dtype | None = None


class HFRotaryEmbedding(nn.Module):
    """``forward(x, position_ids)`` with ``x: (B, S, ...)``, ``position_ids: (B, S)`` returns the tables of
    ``rope`` in ``layout`` (see the module docstring): ``(cos, sin)`` in ``x``'s dtype, or a complex64 table.

    Args:
        rope: the posenc RoPE (its ``interleaved`` flag is the pairing of q and k, not the table layout).
        layout: "half", "interleaved", "compact" or "complex".
        order: "cos_sin" (all but GPT-J and CodeGen) or "sin_cos".
        freq_dtype: None (exact frequencies), or a floating dtype the frequencies are rounded to before the
            (float64) angles, as a GPT-J or CodeGen built in that dtype computes them (see the module docstring).
        table_dtype: None (the tables in ``x``'s dtype), or the one dtype the tables are returned in whatever ``x``'s
            (CodeGen built in bfloat16 returns its float32 table as it is and rotates in float32).
    """

    def __init__(
        self,
        rope: RoPE,
        layout: Layout = "half",
        order: Order = "cos_sin",
        freq_dtype: torch.dtype | None = None,
        table_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(rope, RoPE):
            raise TypeError(
                f"HFRotaryEmbedding: rope must be a posenc.RoPE (posenc.hf.rope_from_config(config) builds one from a "
                f"transformers config), got {type(rope).__name__}"
            )
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if order not in ("cos_sin", "sin_cos"):
            raise ValueError(f"order must be 'cos_sin' or 'sin_cos', got {order!r}")
        for label, dtype in (("freq_dtype", freq_dtype), ("table_dtype", table_dtype)):
            if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
                raise TypeError(f"{label} must be None or a floating torch.dtype, got {dtype!r}")
        self.rope, self.layout, self.order = rope, layout, order
        self.freq_dtype, self.table_dtype = freq_dtype, table_dtype
        self.config: Any = (
            None  # the transformers config the replaced module was built from (set by install_rope)
        )

    @property
    def attention_scaling(self) -> float:
        """The attention factor folded into the tables (transformers' attribute name)."""
        return self.rope.attention_scale

    @property
    def match(self) -> Match:
        """The layout this adapter was built with."""
        return Match(self.layout, self.order, self.freq_dtype, self.table_dtype)

    def forward(self, x: Tensor, position_ids: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """The tables at ``position_ids (B, S)``: ``(cos, sin)`` (or ``(sin, cos)``) ``(B, S, R | R/2)`` in ``x``'s
        dtype (or ``table_dtype``), or one complex64 ``(B, S, R/2)``; ``x`` gives only the dtype and device."""
        if (
            not isinstance(position_ids, Tensor)
            or position_ids.is_floating_point()
            or position_ids.is_complex()
            or position_ids.dtype == torch.bool  # (True would be position 1)
        ):
            got = (
                type(position_ids).__name__
                if not isinstance(position_ids, Tensor)
                else f"{position_ids.dtype}"
            )
            raise TypeError(
                f"HFRotaryEmbedding: position_ids must be an integer tensor (batch, seq), got {got}"
            )
        if position_ids.dim() > 2:
            raise UnsupportedRotary(
                "multimodal",
                f"position_ids of shape {tuple(position_ids.shape)}: multi-axis (mrope) positions; this posenc RoPE "
                "takes (batch, seq) positions only",
            )
        if position_ids.dim() == 0:
            raise ValueError(
                "HFRotaryEmbedding: position_ids must be (batch, seq) or (seq,), got a 0-d tensor"
            )
        dtype = x.dtype if self.table_dtype is None else self.table_dtype
        if self.freq_dtype is not None:  # (the other branch's cos_sin checks the positions' range itself)
            check_position_range(position_ids, position_ids.shape[-1], owner="HFRotaryEmbedding")
            cos, sin = rounded_cos_sin(self.rope, position_ids.to(x.device), self.freq_dtype)  # (1|B, S, R/2)
            return lay_out(cos, sin, self.layout, self.order, dtype)
        cos, sin = self.rope.cos_sin(
            position_ids.shape[-1], position_ids, x.device
        )  # (1|B, 1, S, R/2) float32
        if cos.dim() == 4:
            cos, sin = cos.squeeze(-3), sin.squeeze(-3)  # (1|B, S, R/2)
        return lay_out(cos, sin, self.layout, self.order, dtype)

    def extra_repr(self) -> str:
        extra = "".join(
            f", {k}={v}" for k, v in (("freq_dtype", self.freq_dtype), ("table_dtype", self.table_dtype)) if v
        )
        return f"layout={self.layout}, order={self.order}{extra}"


def rounded_cos_sin(rope: RoPE, positions: Tensor, freq_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """float32 ``(..., S, R/2)`` cos and sin of ``rope`` at ``positions (..., S)`` from its frequencies rounded to
    ``freq_dtype`` (through float32, as transformers), angles in float64."""
    rounded = rope.inv_freq_for(positions).float().to(freq_dtype).double()
    return rope_cos_sin(positions, rounded, scale=rope.attention_scale)


def lay_out(
    cos: Tensor, sin: Tensor, layout: Layout, order: Order, dtype: torch.dtype
) -> Tensor | tuple[Tensor, Tensor]:
    """``(.., R/2)`` float32 ``cos``/``sin`` in ``layout`` and ``order``, ``(cos, sin)`` in ``dtype`` or complex64."""
    if layout == "complex":
        return torch.complex(cos, sin)
    if layout == "half":
        cos, sin = torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)
    elif layout == "interleaved":
        cos, sin = cos.repeat_interleave(2, dim=-1), sin.repeat_interleave(2, dim=-1)
    pair = (cos.to(dtype), sin.to(dtype))
    return pair if order == "cos_sin" else (pair[1], pair[0])


class HFLayerTypeRotaryEmbedding(nn.Module):
    """One :class:`HFRotaryEmbedding` per layer type behind ``forward(x, position_ids, layer_type)``, the interface
    of transformers' rotary modules for configs with one RoPE per layer type (Gemma 3, OLMo 3)."""

    def __init__(self, by_type: Mapping[str, HFRotaryEmbedding]) -> None:
        super().__init__()
        self.by_type = nn.ModuleDict(dict(by_type))
        self.layer_types = sorted(by_type)  # as transformers' module (LFM3 reads it)
        self.config: Any = None

    def forward(self, x: Tensor, position_ids: Tensor, layer_type: str) -> Tensor | tuple[Tensor, Tensor]:
        return cast(HFRotaryEmbedding, self.by_type[layer_type])(x, position_ids)


def _tables(out: object) -> list[Tensor] | None:
    """The tensors of a rotary module's output: one complex table or a (cos, sin) pair; None otherwise."""
    if isinstance(out, Tensor) and out.is_complex():
        return [out]
    if isinstance(out, tuple | list) and len(out) == 2 and all(isinstance(t, Tensor) for t in out):
        return list(cast(tuple[Tensor, Tensor], tuple(out)))
    return None


def _max_error(got: list[Tensor], want: list[Tensor]) -> float:
    if len(got) != len(want) or any(
        a.shape != b.shape or a.is_complex() != b.is_complex() for a, b in zip(got, want, strict=False)
    ):
        return float("inf")
    return max((a - b.to(a.dtype)).abs().max().item() for a, b in zip(got, want, strict=True))


#: largest difference between a rotary module's tables and posenc's (float64 angles against transformers'
#: float32 product: ~1e-7 at positions 0..7) that still counts as the same RoPE.
_TOLERANCE = 1e-5


#: dtypes a transformers module built in half precision may have rounded its frequencies to (GPT-J, CodeGen).
_FREQ_DTYPES: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16)


def _reference_tables(
    rope: RoPE, pos: Tensor, original: nn.Module, buffer: object
) -> list[tuple[tuple[Tensor, Tensor], torch.dtype | None]]:
    """``rope``'s float32 ``(1, S, R/2)`` cos and sin at ``pos``, each with the ``freq_dtype`` the installed adapter
    must round its frequencies to for them (None: exact). When ``original`` keeps tensors in a precision below
    float32 (``model.to(torch.bfloat16)`` casts its buffers), also the tables such a module computes: from
    frequencies (``buffer``, its ``inv_freq``) rounded to that dtype, or the tables themselves rounded (GPT-J's
    ``embed_positions``); those install exact (the model equals transformers built in that dtype). Last, for a
    module without an ``inv_freq`` buffer, the tables from frequencies rounded to bfloat16 or float16 in float32
    tables (GPT-J or CodeGen built in that dtype); those install rounded. Comparing all at float32 tolerance
    keeps the check as strict in bfloat16 as in float32: a tolerance sized for bfloat16 would let a misread base
    through."""
    with torch.no_grad():
        cos, sin = rope.cos_sin(pos.shape[-1], pos, pos.device)
        exact = (cos.squeeze(-3), sin.squeeze(-3))
        tables: list[tuple[tuple[Tensor, Tensor], torch.dtype | None]] = [(exact, None)]
        low = {t.dtype for t in original.buffers() if t.is_floating_point() and t.element_size() < 4}
        for dtype in sorted(low, key=str):
            tables.append(((exact[0].to(dtype).float(), exact[1].to(dtype).float()), None))
            if isinstance(buffer, Tensor) and buffer.dtype == dtype:
                rounded = rope.inv_freq_for(pos).float().to(dtype).double()  # float32 first, as transformers
                tables.append((rope_cos_sin(pos, rounded, scale=rope.attention_scale), None))
        if not isinstance(buffer, Tensor):
            tables.extend((rounded_cos_sin(rope, pos, dtype), dtype) for dtype in _FREQ_DTYPES)
    return tables


def _position_axes(
    original: nn.Module, x: Tensor, pos: Tensor, layer_type: str | None, want: list[Tensor]
) -> int | None:
    """The number of position axes (2 to 4) ``original`` takes as ``(axes, B, S)`` position_ids, found by calling
    it with one row per axis: an mrope module returns the ``(B, S, ·)`` tables of the 1-D positions, a 1-D module
    fails or returns tables of another shape. None for a 1-D module."""
    for axes in (2, 3, 4):
        try:
            with torch.no_grad():
                args = (x, pos.expand(axes, -1, -1)) + (() if layer_type is None else (layer_type,))
                out = _tables(original(*args))
        except Exception:  # noqa: BLE001 -- a 1-D module given (axes, B, S) positions
            continue
        if out is not None and [t.shape for t in out] == [t.shape for t in want]:
            return axes
    return None


def _kept_dtype(original: nn.Module, pos: Tensor, layer_type: str | None) -> torch.dtype | None:
    """The one dtype ``original`` returns its (cos, sin) tables in for bfloat16 activations when that is not
    bfloat16 (CodeGen built in bfloat16: its float32 table as stored), else None (tables in ``x``'s dtype)."""
    x = torch.zeros(1, pos.shape[-1], 1, device=pos.device, dtype=torch.bfloat16)
    try:
        with torch.no_grad():
            out = _tables(original(x, pos) if layer_type is None else original(x, pos, layer_type))
    except Exception:  # noqa: BLE001 -- a module without bfloat16 support: tables in x's dtype as before
        return None
    kept = {t.dtype for t in out or () if not t.is_complex()} - {torch.bfloat16}
    return kept.pop() if len(kept) == 1 else None


def match_layout(
    original: nn.Module, rope: RoPE, device: torch.device, layer_type: str | None = None
) -> Match:
    """The table layout in which ``rope`` reproduces ``original``'s output (positions 0..7; for ``layer_type``),
    the dtype its frequencies must be rounded to for that (None: exact), and the dtype ``original`` returns its
    tables in for bfloat16 activations when not theirs (see :class:`HFRotaryEmbedding`).

    Raises:
        UnsupportedRotary: with cause ``multimodal`` (the module has an ``mrope_section``: Qwen3.5 builds one
            with a default section when the config names none, and passes it 3-D positions), ``table-output`` (neither a (cos, sin) pair nor a complex table),
            ``rotary-size`` (the table width matches no layout of ``rope.rotary_dim``) or ``table-values``
            (the width fits but the values differ: the base or scaling was read differently), ``meta-device``
            (no values to compare).
    """
    name = type(original).__name__ + ("" if layer_type is None else f" ({layer_type})")
    if getattr(original, "mrope_section", None):  # a section default in the module, not in the config
        raise UnsupportedRotary(
            "multimodal",
            f"{name} is a multimodal RoPE (mrope_section={original.mrope_section}): the model passes it 3-D "
            "(temporal, height, width) positions even for text; posenc.hf supports 1-D RoPE only",
        )
    buffer = getattr(original, "inv_freq" if layer_type is None else f"{layer_type}_inv_freq", None)
    if device.type == "meta" or (isinstance(buffer, Tensor) and buffer.is_meta):
        raise UnsupportedRotary(
            "meta-device",
            f"{name} is on the meta device: its tables have no values to check the config against; load the "
            "weights (e.g. from_pretrained, or to_empty and load_state_dict) before install_rope",
        )
    x = torch.zeros(1, 8, 1, device=device)
    pos = torch.arange(8, device=device).unsqueeze(0)  # (1, 8)
    try:
        with torch.no_grad():
            want = _tables(original(x, pos) if layer_type is None else original(x, pos, layer_type))
    except Exception as err:  # noqa: BLE001 -- a module posenc cannot call cannot be vouched for
        raise UnsupportedRotary(
            "table-output", f"calling {name}(x, position_ids) failed ({type(err).__name__}: {err})"
        ) from err
    if want is None:
        raise UnsupportedRotary(
            "table-output",
            f"{name}(x, position_ids) returns neither a (cos, sin) pair nor one complex freqs_cis table; "
            "posenc.hf swaps rotary modules with those outputs only",
        )
    axes = _position_axes(original, x, pos, layer_type, want)
    if axes is not None:
        raise UnsupportedRotary(
            "multimodal",
            f"{name} takes ({axes}, batch, seq) positions, one row per axis (a multimodal RoPE such as NeoMME's "
            "two-axis one): the model passes it multi-axis positions even for text; posenc.hf supports 1-D RoPE only",
        )
    table_dtype = _kept_dtype(original, pos, layer_type)
    rotary = rope.rotary_dim
    candidates: list[tuple[Layout, Order]] = (
        [("complex", "cos_sin")]
        if len(want) == 1
        else [(lay, order) for lay in LAYOUTS[:3] for order in ("cos_sin", "sin_cos")]  # type: ignore[misc]
    )
    errors: dict[tuple[Layout, Order], float] = {}
    for (cos, sin), freq_dtype in _reference_tables(rope, pos, original, buffer):
        for layout, order in candidates:
            got = _tables(lay_out(cos, sin, layout, order, x.dtype))
            assert got is not None
            errors[(layout, order)] = min(errors.get((layout, order), float("inf")), _max_error(got, want))
            if errors[(layout, order)] <= _TOLERANCE:
                return Match(layout, order, freq_dtype, table_dtype)
    width = want[0].shape[-1]
    fits = {"complex": rotary // 2, "compact": rotary // 2, "half": rotary, "interleaved": rotary}
    if all(width != fits[layout] for layout, _ in candidates):
        kind = "complex freqs_cis" if len(want) == 1 else "(cos, sin)"
        raise UnsupportedRotary(
            "rotary-size",
            f"{name} returns a {kind} table {width} wide, but the config gives {rotary} rotated dims of head_dim "
            f"{rope.head_dim} (expected {rotary} or {rotary // 2} wide): the rotated size is stored somewhere "
            "posenc.hf does not read, or the model derives it differently",
        )
    best = min(errors.values())
    raise UnsupportedRotary(
        "table-values",
        f"{name}'s table has the width of a RoPE with {rotary} rotated dims, but its values differ from "
        f"posenc.RoPE(base={rope.base}, rotary_dim={rotary}, scaling={rope.scaling}) by {best:.3g} in every layout "
        "(half, interleaved, R/2, complex): the config's base or scaling does not describe what the module computes",
    )
