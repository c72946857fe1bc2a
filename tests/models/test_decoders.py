"""generate's decoders (posenc.models.decoders): the prefill attends over the prompt's own keys only."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from posenc.attention import attention as attention_module
from posenc.models import TransformerLM


@pytest.mark.parametrize("padded", [False, True])
def test_the_prefill_attends_over_the_prompt_only(padded: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The prefill attended over every one of ``max_len`` slots with a ``(B, 1, S, max_len)`` mask for the slots it
    cannot see (and SDPA a float copy of it, and no causal fast path): 113 MB against 60 MB for a 4,096-token
    rope prompt. Now over its ``S`` keys, with no mask at all unless the prompt is padded; the tokens are those
    of full forwards over the growing sequence."""
    seen: list[tuple[int, bool]] = []
    choose = attention_module.choose_backend

    def spy(name: str, q: torch.Tensor, ctx: Any) -> Any:
        fn = choose(name, q, ctx)

        def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: Any) -> torch.Tensor:
            seen.append((k.shape[-2], ctx.keep is not None))
            return fn(q, k, v, ctx)  # type: ignore[no-any-return]

        return run

    monkeypatch.setattr(attention_module, "choose_backend", spy)
    torch.manual_seed(0)
    model = TransformerLM("rope", dim=32, depth=2, heads=2).eval()
    tokens = torch.randint(0, 256, (2, 6), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(tokens, dtype=torch.bool)
    if padded:
        mask[0, :2] = False
    out = model.generate(tokens, 5, temperature=0, prompt_mask=mask, max_len=32)
    assert seen[:2] == [(6, padded)] * 2  # the prefill, both layers: 6 keys, a mask only for padding
    assert all(keys == 32 and masked for keys, masked in seen[2:])  # the steps: every slot, masked
    if not padded:  # greedy: each token the argmax of a full forward of the sequence so far
        with torch.no_grad():
            for i in range(6, 11):
                assert torch.equal(model(out[:, :i])[:, -1].argmax(-1), out[:, i])
