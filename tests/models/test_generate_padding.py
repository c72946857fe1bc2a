"""generate with a left-padded prompt: every decode step of the padded row gives the logits of a full forward of
that row's sequence without its padding (the padding slots stay masked after the prefill)."""

from __future__ import annotations

import pytest
import torch

from posenc.models import TransformerLM
from posenc.models import decoders as decoders_mod


@pytest.mark.parametrize("name", ["rope", "alibi", "shaw", "t5", "fire"])
def test_every_decode_step_of_a_padded_row_ignores_the_padding(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    logits: list[torch.Tensor] = []
    step = decoders_mod._Decoder._step

    def spy(self: decoders_mod._Decoder, token: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        out = step(self, token, pos)
        logits.append(out.detach().clone())
        return out

    monkeypatch.setattr(decoders_mod._Decoder, "_step", spy)
    torch.manual_seed(0)
    model = TransformerLM(name, dim=32, depth=2, heads=2).eval()
    tokens = torch.tensor([[50, 60, 70, 7, 8, 9], [1, 2, 3, 4, 5, 6]])
    mask = torch.ones_like(tokens, dtype=torch.bool)
    mask[0, :3] = False  # three padding tokens before the first row's prompt
    out = model.generate(tokens, 5, temperature=0, prompt_mask=mask)
    assert len(logits) == 4  # the steps after the prefill's token
    with torch.no_grad():
        for j, got in enumerate(logits):
            row = out[0, 3 : 7 + j]  # the first row's prompt and tokens so far, no padding
            want = model(row[None])[:, -1]
            torch.testing.assert_close(got[:1], want, rtol=1e-4, atol=1e-4)
            full = model(out[1:, : 7 + j])[:, -1]  # the unpadded row too
            torch.testing.assert_close(got[1:], full, rtol=1e-4, atol=1e-4)
