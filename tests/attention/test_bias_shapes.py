"""score_bias's shape check compares the bias's trailing dims with (B, H, Q, K) from the right, as broadcasting
does: a 3-d (H, Q, K) bias (fewer dims than 4) is valid and means the same as (1, H, Q, K)."""

from __future__ import annotations

import pytest
import torch

import posenc


class _HeadBias(posenc.PositionEncoding):
    """A user's bias of (H, Q, K), or (1, H, Q, K) with four_d."""

    def __init__(self, heads: int, four_d: bool = False) -> None:
        super().__init__()
        self.heads, self.four_d = heads, four_d

    def score_bias(self, q: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        d = (q_pos[0][:, None] - k_pos[0][None, :]).abs().float()  # (Q, K)
        bias = -d * torch.arange(1, self.heads + 1).view(-1, 1, 1) / 4  # (H, Q, K)
        return bias[None] if self.four_d else bias


@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_a_three_dim_bias_broadcasts_like_its_four_dim_form(backend: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 6, 16)  # B = 2, H = 4: a (H, Q, K) bias compared from the left would meet B
    outs = []
    for four_d in (False, True):
        torch.manual_seed(1)
        attn = posenc.Attention(16, 4, position=_HeadBias(4, four_d), backend=backend).eval()
        with torch.no_grad():
            outs.append(attn(x))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-6, rtol=1e-5)
