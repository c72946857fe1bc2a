"""check_specs refuses a runtime option (rope's impl / cache_len, xpos's cache_len) wherever it stands among
the spec's options, not only as the first one (options are kept sorted: "base" sorts before "impl")."""

from __future__ import annotations

import pytest

from posenc.experiments import specs


@pytest.mark.parametrize(
    "text",
    ["rope:base=500000:impl=reference", "rope:base=500000:cache_len=64", "xpos:cache_len=64:scale_base=256"],
)
def test_a_runtime_option_after_another_option_makes_no_variant(text: str) -> None:
    with pytest.raises(ValueError, match=r"chooses how \w+ computes, not what"):
        specs.check_specs([text])
