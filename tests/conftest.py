"""Shared test settings: small hypothesis budgets, deterministic seeds, few threads."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
import torch
from hypothesis import HealthCheck, settings
from torch.nn.attention.flex_attention import flex_attention

settings.register_profile(
    "posenc", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.load_profile("posenc")
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="module")
def _fresh_dynamo() -> None:
    """Each test file starts with empty dynamo caches: compiles of the same code (Attention.forward) in earlier
    files of this worker must not use up its recompile limit, where ``fullgraph=True`` turns that into an error."""
    torch._dynamo.reset()


@pytest.fixture
def eager_flex(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Eager FlexAttention (its reference implementation) in posenc's ``flex`` backend: no kernel compilation."""
    from posenc.attention import flex as flex_module

    monkeypatch.setattr(flex_module, "flex_kernel", lambda device, *callables: flex_attention)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        yield
