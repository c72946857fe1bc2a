"""Multi-head / grouped-query attention with a pluggable positional encoding (Vaswani et al. 2017;
Ainslie et al. 2023 for GQA)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..base import NoPE, PositionEncoding, as_positions, default_positions, tables_after_load
from ..validation import check_bool, check_float, check_int, check_table_sizes
from .backends import BACKENDS, choose_backend
from .cache import KVCache
from .inputs import AttentionInputs, keep_mask
from .static_cache import check_static_inputs


class Attention(nn.Module):
    """Self-attention whose positional encoding is a module passed in, called through its hooks.

    Args:
        dim: model width.
        heads: query heads ``H``; ``dim % heads == 0``.
        kv_heads: key/value heads ``G`` (grouped-query attention); ``heads % kv_heads == 0``. Default ``heads``.
        position: a :class:`posenc.PositionEncoding` (default :class:`posenc.NoPE`) that acts inside attention:
            relative, rotary or bias. An absolute encoding is refused: it belongs on the token embeddings
            (``x = enc.embed(x)`` before the first layer, as :class:`posenc.models.TransformerLM` does), and
            inside attention it would do nothing.
        causal: mask future keys.
        dropout: attention-weight dropout.
        backend: "auto", "sdpa", "flex", "math" (and any other key of ``posenc.attention.BACKENDS``); see
            :func:`posenc.attention.backends.choose_backend` for what "auto" picks.
        bias: use biases in the projections.

    Shapes: ``x: (B, S, dim)`` -> ``(B, S, dim)``.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        kv_heads: int | None = None,
        position: PositionEncoding | None = None,
        causal: bool = True,
        dropout: float = 0.0,
        backend: str = "auto",
        bias: bool = False,
    ) -> None:
        super().__init__()
        dim = check_int("dim", dim, at_least=1, owner="Attention")
        heads = check_int("heads", heads, at_least=1, owner="Attention")
        kv_heads = (
            heads if kv_heads is None else check_int("kv_heads", kv_heads, at_least=1, owner="Attention")
        )
        causal = check_bool("causal", causal, owner="Attention")
        dropout = check_float("dropout", dropout, at_least=0, at_most=1, owner="Attention")
        bias = check_bool("bias", bias, owner="Attention")
        if heads <= 0 or dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        if kv_heads <= 0 or heads % kv_heads:
            raise ValueError(f"heads ({heads}) must be divisible by kv_heads ({kv_heads})")
        BACKENDS.check(backend)
        if position is not None and not isinstance(position, PositionEncoding):
            raise TypeError(f"position must be a posenc.PositionEncoding, got {type(position).__name__}")
        if position is not None and position.is_absolute:
            raise ValueError(
                f"position: {type(position).__name__} is an absolute encoding; add it to the token embeddings "
                "(x = position.embed(x)) before the first layer, as TransformerLM does. Attention takes "
                "relative, rotary and bias encodings (inside attention an absolute one would do nothing)"
            )
        item = torch.get_default_dtype().itemsize
        check_table_sizes(  # q and out (dim, dim), k and v (kv_heads * head_dim, dim), and their biases
            "Attention",
            {"dim": (dim, heads)},
            lambda n: item * (n["dim"] + 1) * (2 * n["dim"] + 2 * kv_heads * (n["dim"] // heads)),
            "the q, k, v and output projections",
        )
        self.dim, self.heads, self.kv_heads = dim, heads, kv_heads
        self.head_dim = dim // heads
        if position is not None:
            check_sizes(position, heads=heads, head_dim=self.head_dim)
        if position is not None and not causal:
            check_direction(position)
        self.causal, self.dropout, self.backend = causal, dropout, backend
        self.position = position if position is not None else NoPE()
        self.q_proj = nn.Linear(dim, heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(dim, kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(dim, kv_heads * self.head_dim, bias=bias)
        self.out_proj = nn.Linear(heads * self.head_dim, dim, bias=bias)
        self.register_load_state_dict_post_hook(tables_after_load)  # an encoding without weights: its tables

    def forward(
        self,
        x: Tensor,
        *,
        positions: Tensor | None = None,
        mask: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> Tensor:
        """Attend.

        Args:
            x: ``(B, S, dim)`` new tokens.
            positions: ``(S,)`` or ``(B, S)`` positions of the new tokens; default ``len(cache) + arange(S)``.
            mask: bool, True = may attend: ``(B, K)`` key padding or ``(1|B, 1|H, 1|S, K)``, ``K`` counting cached
                keys; combined with the causal mask when ``causal``. Float (additive) masks are refused. A query
                that sees no key gives 0.
            cache: a :class:`KVCache` to read and extend (incremental decoding).

        Returns:
            ``(B, S, dim)``, in ``x``'s dtype (autocast's under autocast).
        """
        if not isinstance(x, Tensor):
            raise TypeError(
                f"Attention: x must be a floating-point tensor (batch, seq, {self.dim}), got {type(x).__name__}"
            )
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"Attention: x must be (batch, seq, {self.dim}), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"Attention: x must be a floating-point tensor (hidden states), got {x.dtype}")
        weight = self.q_proj.weight
        if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(
                f"Attention: x is {x.dtype} but the projections are {weight.dtype}; convert one to the other "
                "(module.to(dtype)) or run under torch.autocast"
            )
        # a meta module's linear layers return uninitialised CPU memory for real inputs
        if weight.is_meta and not x.is_meta:
            raise ValueError(
                f"Attention: x is on {x.device} but the module's weights are on meta; move one to the other's device "
                "(module.to(...), or to_empty(...) / load_state_dict(..., assign=True) for a module built on meta)"
            )
        if cache is not None and not isinstance(cache, KVCache):
            raise TypeError(
                f"Attention: cache must be a posenc.KVCache (or StaticKVCache) or None, got {type(cache).__name__}"
            )
        if mask is not None and not isinstance(mask, torch.Tensor):
            raise TypeError(
                f"Attention: mask must be a bool tensor (True = attend) or None, got {type(mask).__name__}"
            )
        check_static_inputs(cache, positions, mask, "Attention")
        if not self.causal:
            check_direction(self.position)
        b, s, _ = x.shape
        offset = 0 if cache is None else len(cache)
        q = self.q_proj(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)  # (B, H, S, D)
        k = self.k_proj(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)  # (B, G, S, D)
        v = self.v_proj(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)  # (B, G, S, D)
        explicit = (
            None if positions is None else as_positions(positions, s, x.device, batch=b, owner="Attention")
        )  # (1|B, S)
        if explicit is None and offset:
            explicit = default_positions(s, x.device, offset)
        q, k = self.position.rotate(q, k, explicit)
        q_pos = explicit if explicit is not None else default_positions(s, x.device)  # (1|B, S)
        k_pos = q_pos
        if cache is not None:
            # (autograd saves the cache's keys and values for q's gradient even where they need none)
            saved = q.requires_grad and torch.is_grad_enabled()
            k, v, k_pos = (
                cache.update(k, v, q_pos, saved=True) if saved else cache.update(k, v, q_pos)
            )  # (B, G, K, D), (1|B, K)
        ctx = AttentionInputs(
            position=self.position,
            q_pos=q_pos,
            k_pos=k_pos,
            keep=keep_mask(mask, k.shape[-2], b),
            causal=self.causal,
            dropout_p=self.dropout if self.training else 0.0,
            training=self.training,
            runs=explicit is None and cache is None,  # q_pos = k_pos = arange(S)
        )
        out = choose_backend(self.backend, q, ctx)(q, k, v, ctx)  # (B, H, S, D)
        out = out.transpose(1, 2).reshape(b, s, self.heads * self.head_dim)  # (B, S, H*D)
        return self.out_proj(out)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.heads}, kv_heads={self.kv_heads}, causal={self.causal}, backend={self.backend!r}"


def check_direction(position: PositionEncoding) -> None:
    """Refuse, in bidirectional attention, an encoding that serves causal attention only
    (:meth:`posenc.PositionEncoding.causal_only_reason`)."""
    reason = position.causal_only_reason()
    if reason is not None:
        raise ValueError(
            f"position: {type(position).__name__} is for causal attention only ({reason}); use causal=True or "
            "another encoding"
        )


def check_sizes(position: PositionEncoding, **sizes: int) -> None:
    """Refuse, when the attention is built, an encoding built for other ``heads`` or ``head_dim`` than ``sizes``
    (it would fail at the first call, or, for a per-head Shaw table, index other heads' rows)."""
    for name, want in sizes.items():
        got = getattr(position, name, None)
        if isinstance(got, int) and not isinstance(got, bool) and got != want:
            raise ValueError(
                f"position: {type(position).__name__} was built for {name}={got}, but this Attention has "
                f"{name}={want}; build the encoding with {name}={want}"
            )
