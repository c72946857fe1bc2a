"""A small pre-norm decoder-only language model (GPT-2 style) built on :class:`posenc.Attention`."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from ..attention import Attention, KVCache
from ..attention.static_cache import check_static_inputs
from ..base import NoPE, PositionEncoding, as_positions, default_positions, tables_after_load
from ..registry import build
from ..validation import check_float, check_int, check_table_sizes

EncodingFactory = Callable[[], PositionEncoding]


class Block(nn.Module):
    """``x + attn(norm(x))`` then ``x + mlp(norm(x))``. Shapes: ``x: (B, S, dim)``."""

    def __init__(
        self, dim: int, heads: int, position: PositionEncoding, mlp_ratio: int, dropout: float, **attn: Any
    ):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, position=position, dropout=dropout, **attn)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(
        self, x: Tensor, positions: Tensor | None, mask: Tensor | None, cache: KVCache | None
    ) -> Tensor:
        x = x + self.drop(self.attn(self.norm1(x), positions=positions, mask=mask, cache=cache))
        return x + self.drop(self.mlp(self.norm2(x)))


class TransformerLM(nn.Module):
    """Decoder-only LM whose positional encoding is given by name or factory.

    An absolute encoding (family "absolute") is applied once to the token embeddings; any other encoding is
    built once per layer and handed to that layer's attention.

    Args:
        position: a name for :func:`posenc.build` or a zero-argument factory of encodings.
        vocab_size: 256 for bytes.
        dim, depth, heads, kv_heads: sizes.
        position_options: extra keyword options for :func:`posenc.build`.
        backend: attention backend, see :class:`posenc.Attention`.
        embed_scale: token embeddings are multiplied by this before the encoding is added; ``dim ** 0.5`` as in
            Vaswani et al. 2017 (section 3.4) and fairseq's LMs (Press et al. 2022), so a fixed sinusoidal table
            does not drown the (tied, small-initialised) token embeddings. Default 1 (GPT-2).

    Shapes: ``tokens: (B, S)`` int -> logits ``(B, S, vocab_size)``.
    """

    def __init__(
        self,
        position: str | EncodingFactory = "rope",
        *,
        vocab_size: int = 256,
        dim: int = 128,
        depth: int = 4,
        heads: int = 4,
        kv_heads: int | None = None,
        mlp_ratio: int = 4,
        dropout: float = 0.0,
        backend: str = "auto",
        position_options: dict[str, Any] | None = None,
        embed_scale: float = 1.0,
    ) -> None:
        super().__init__()
        vocab_size, dim, depth, heads, mlp_ratio = (
            check_int(field, value, at_least=1, owner="TransformerLM")
            for field, value in (
                ("vocab_size", vocab_size),
                ("dim", dim),
                ("depth", depth),
                ("heads", heads),
                ("mlp_ratio", mlp_ratio),
            )
        )
        dropout = check_float("dropout", dropout, at_least=0, at_most=1, owner="TransformerLM")
        if position_options is not None and not isinstance(position_options, Mapping):
            raise TypeError(
                "TransformerLM: position_options must be a dict of options for posenc.build or None, got "
                f"{position_options!r} ({type(position_options).__name__})"
            )
        item = torch.get_default_dtype().itemsize
        check_table_sizes(  # the embedding; the blocks' Attention checks its projections
            "TransformerLM",
            {"vocab_size": (vocab_size, 1), "dim": (dim, 1)},
            lambda n: n["vocab_size"] * n["dim"] * item,
            "a (vocab_size, dim) embedding",
        )
        self.embed_scale = check_float("embed_scale", embed_scale, owner="TransformerLM")
        factory = _factory(position, position_options, dim, heads)
        first = _built(factory)
        absolute = first.is_absolute
        self.input_position: PositionEncoding = first if absolute else NoPE()
        layer_pos = [NoPE() if absolute else (first if i == 0 else _built(factory)) for i in range(depth)]
        self.embed = nn.Embedding(vocab_size, dim)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(dim, heads, p, mlp_ratio, dropout, kv_heads=kv_heads, backend=backend) for p in layer_pos
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        self.head.weight = self.embed.weight  # tied
        self.apply(_init)
        self.register_load_state_dict_post_hook(tables_after_load)  # the input encoding's tables (sinusoidal)
        self.register_load_state_dict_pre_hook(_note_tie)
        self.register_load_state_dict_post_hook(_retie)

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> TransformerLM:
        """``nn.Module._apply`` (``to``, ``to_empty``, ``half`` ...) keeping the head tied to the embedding: moving
        a model built on the meta device (``to_empty``) made each module its own new Parameter of the shared one,
        so the two trained apart (and ``parameters()`` counted both)."""
        tied = self.head.weight is self.embed.weight
        super()._apply(fn, recurse)
        if tied and self.head.weight is not self.embed.weight:
            self.head.weight = self.embed.weight
        return self

    def encodings(self) -> list[PositionEncoding]:
        """The encoding of every attention layer, in order (all :class:`NoPE` for an absolute encoding), then
        the input encoding when it is absolute: every encoding the model applies."""
        layers = self.layer_encodings()
        return [*layers, self.input_position] if self.input_position.is_absolute else layers

    def attention_layers(self) -> list[Attention]:
        """The :class:`posenc.Attention` of every block, in order."""
        return [block.attn for block in self.blocks if isinstance(block, Block)]

    def layer_encodings(self) -> list[PositionEncoding]:
        """The encoding of every attention layer, in order."""
        return [attn.position for attn in self.attention_layers()]

    def replace_positions(self, fn: Callable[[PositionEncoding], PositionEncoding]) -> list[PositionEncoding]:
        """Give every attention layer ``fn(its encoding)``; return the encodings replaced (to restore them)."""
        old = self.layer_encodings()
        new = [fn(p) for p in old]
        for p in new:
            if not isinstance(p, PositionEncoding):
                raise TypeError(
                    f"replace_positions: fn must return a PositionEncoding, got {type(p).__name__}"
                )
        for attn, p in zip(self.attention_layers(), new, strict=True):
            attn.position = p
        return old

    @contextmanager
    def positions_replaced(
        self, fn: Callable[[PositionEncoding], PositionEncoding]
    ) -> Iterator[TransformerLM]:
        """``with model.positions_replaced(lambda p: p.with_scaling(s)):`` for a temporary change of encodings."""
        old = self.replace_positions(fn)
        try:
            yield self
        finally:
            for attn, p in zip(self.attention_layers(), old, strict=True):
                attn.position = p

    @property
    def max_length(self) -> int | None:
        """The longest input the model takes: the smallest ``max_length`` of its encodings, or None."""
        limits = [n for n in (p.max_length for p in self.encodings()) if n is not None]
        return min(limits) if limits else None

    def max_length_in(self, dtype: torch.dtype) -> int | None:
        """:attr:`max_length` when the model runs in ``dtype`` (an xPos model in float16 takes fewer positions)."""
        limits = [n for n in (p.max_length_in(dtype) for p in self.encodings()) if n is not None]
        return min(limits) if limits else None

    def new_caches(self, max_len: int | None = None) -> list[KVCache]:
        """One empty :class:`KVCache` per layer (preallocated for ``max_len`` tokens if given)."""
        return [KVCache(max_len) for _ in self.blocks]

    def forward(
        self,
        tokens: Tensor,
        positions: Tensor | None = None,
        mask: Tensor | None = None,
        caches: list[KVCache] | None = None,
    ) -> Tensor:
        """``tokens: (B, S)`` -> logits ``(B, S, V)``; with ``caches`` the tokens continue the cached ones."""
        if not isinstance(tokens, Tensor):
            raise TypeError(
                f"TransformerLM: tokens must be an integer tensor (batch, seq), got {type(tokens).__name__}"
            )
        bad_kind = tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool
        if tokens.dim() != 2 or bad_kind:
            raise ValueError(
                f"tokens must be integer ids (batch, seq), got {tokens.dtype} {tuple(tokens.shape)}"
            )
        weight = self.embed.weight
        # (meta ids on a CPU model gave CPU logits of uninitialised memory)
        if tokens.device != weight.device:
            raise ValueError(
                f"TransformerLM: tokens are on {tokens.device} but the model on {weight.device}; move one to the "
                "other's device"
            )
        if tokens.dtype != torch.int64 and tokens.dtype != torch.int32:
            tokens = tokens.long()  # the embedding takes int64 and int32 ids only (generate converts too)
        self._check_ids(tokens)
        b, s = tokens.shape
        if caches is not None:
            if not isinstance(caches, (list, tuple)) or not all(isinstance(c, KVCache) for c in caches):
                got = (
                    type(caches).__name__
                    if not isinstance(caches, (list, tuple))
                    else "a sequence holding " + ", ".join(sorted({type(c).__name__ for c in caches}))
                )
                raise TypeError(
                    f"TransformerLM: caches must be a list of posenc.KVCache (model.new_caches()), got {got}"
                )
            if len(caches) != len(self.blocks):
                raise ValueError(
                    f"caches must hold one KVCache per layer ({len(self.blocks)}), got {len(caches)}"
                )
            _check_cache_set(caches)
        if caches is not None:
            check_static_inputs(caches[0], positions, mask, "TransformerLM")
        offset = 0 if caches is None else len(caches[0])
        if positions is not None:
            positions = as_positions(positions, s, tokens.device, batch=b, owner="TransformerLM")  # (1|B, S)
        elif offset:
            positions = default_positions(s, tokens.device, offset)
        x = self.embed(tokens)  # (B, S, dim)
        if self.embed_scale != 1.0:
            x = x * self.embed_scale
        x = self.drop(self.input_position.embed(x, positions))
        for i, block in enumerate(self.blocks):
            x = block(x, positions, mask, None if caches is None else caches[i])
        return self.head(self.norm(x))  # (B, S, V)

    def _check_ids(self, tokens: Tensor) -> None:
        """Refuse ids outside ``[0, vocab_size)`` where that costs no device sync (CPU tensors, eager mode): the
        embedding's own error was "index out of range in self", naming neither the argument nor the range."""
        if not tokens.is_cpu or tokens.numel() == 0 or torch.compiler.is_compiling():
            return
        low, high = (int(t) for t in torch.aminmax(tokens))  # one pass
        vocab = self.embed.num_embeddings
        if low < 0 or high >= vocab:
            raise ValueError(
                f"TransformerLM: tokens must be ids in [0, {vocab}) (vocab_size), got ids from {low} to {high}"
            )

    def generate(self, tokens: Tensor, max_new_tokens: int, **options: Any) -> Tensor:
        """Sample a continuation ``(B, S + n)``; see :func:`posenc.models.generate.generate` for ``options``."""
        from .generate import generate

        return generate(self, tokens, max_new_tokens, **options)


def _note_tie(model: nn.Module, *args: object) -> None:
    """Before a load: whether the head is tied to the embedding (:func:`_retie` keeps it so, and only then)."""
    assert isinstance(model, TransformerLM)
    model.__dict__["_tied_before_load"] = model.head.weight is model.embed.weight


def _retie(model: nn.Module, incompatible_keys: object = None) -> None:
    """After a load: the head's weight made the embedding's Parameter again if it was before
    (``load_state_dict(..., assign=True)`` gives each its own Parameter of the loaded tensor: the tie was lost
    though both read one storage). A head the caller untied stays untied."""
    assert isinstance(model, TransformerLM)
    if model.__dict__.pop("_tied_before_load", False) and model.head.weight is not model.embed.weight:
        model.head.weight = model.embed.weight


def _check_cache_set(caches: list[KVCache] | tuple[KVCache, ...]) -> None:
    """Refuse caches that cannot be one decode's per-layer caches: one object in two layers (``[KVCache()] * n``:
    every layer would append to, and attend over, the others' keys) or layers holding different numbers of
    keys (one reset or filled alone), either of which gave wrong logits without an error."""
    lengths = {len(c) for c in caches}  # host ints (a StaticKVCache's is its max_len): no device sync
    if len(lengths) > 1:
        raise ValueError(
            "TransformerLM: caches are out of step: the layers' caches hold "
            f"{', '.join(str(len(c)) for c in caches)} keys; use one fresh set (model.new_caches()) per sequence"
        )
    if not torch.compiler.is_compiling() and len({id(c) for c in caches}) != len(caches):
        raise ValueError(
            "TransformerLM: caches holds one cache object for several layers (as [KVCache()] * depth makes); "
            "each layer needs its own: model.new_caches() or [KVCache() for _ in range(depth)]"
        )


def _factory(position: object, options: Mapping[str, Any] | None, dim: int, heads: int) -> EncodingFactory:
    """The encoding factory for :class:`TransformerLM`'s ``position`` (a name or a zero-argument factory)."""
    if isinstance(position, str):
        name, opts = position, dict(options or {})
        return lambda: build(name, dim=dim, heads=heads, **opts)
    if isinstance(position, PositionEncoding):
        raise TypeError(
            f"TransformerLM: position must be an encoding name or a zero-argument factory, got a "
            f"{type(position).__name__} instance; pass a factory (lambda: ...) so each layer gets its own encoding"
        )
    if not callable(position):
        raise TypeError(
            f"TransformerLM: position must be an encoding name or a zero-argument factory, got {position!r}"
        )
    if options:
        raise ValueError(
            f"TransformerLM: position_options {sorted(options)} apply to an encoding name only; the factory "
            "builds its encodings itself (give it the options)"
        )
    return position  # type: ignore[return-value]


def _built(factory: EncodingFactory) -> PositionEncoding:
    """``factory()``, refused unless it is a :class:`posenc.PositionEncoding`."""
    out = factory()
    if not isinstance(out, PositionEncoding):
        raise TypeError(
            f"TransformerLM: the position factory must return a posenc.PositionEncoding, got {type(out).__name__}"
        )
    return out


def _init(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Embedding):
        nn.init.normal_(m.weight, std=0.02)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (tied weights once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters() if p.requires_grad}.values())


__all__ = ["Block", "TransformerLM", "count_parameters"]
