"""PositionEncoding.causal_only_reason's default reads the causal_only class flag, so a user's encoding that
declares causal_only = True (without overriding causal_only_reason) is refused by bidirectional attention, when
built and when assigned later."""

from __future__ import annotations

import pytest
import torch

import posenc


class _Decaying(posenc.PositionEncoding):
    causal_only = True

    def score_bias(self, q: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        return -(q_pos[:, None, :, None] - k_pos[:, None, None, :]).float()  # grows for keys after the query


def test_the_flag_alone_is_the_reason() -> None:
    assert _Decaying().causal_only_reason() == "it is defined for causal attention only"
    assert posenc.NoPE().causal_only_reason() is None


def test_bidirectional_attention_refuses_a_causal_only_user_encoding() -> None:
    with pytest.raises(ValueError, match=r"_Decaying is for causal attention only"):
        posenc.Attention(16, 4, position=_Decaying(), causal=False)
    attn = posenc.Attention(16, 4, causal=False)
    attn.position = _Decaying()  # assigned later: refused at the call
    with torch.no_grad(), pytest.raises(ValueError, match=r"_Decaying is for causal attention only"):
        attn(torch.randn(1, 3, 16))
    posenc.Attention(16, 4, position=_Decaying(), causal=True)  # causal: fine
