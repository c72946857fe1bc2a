"""Training: schedule, batches (and their split across ranks), determinism."""

from __future__ import annotations

import math

import pytest
import torch

from posenc.experiments.dist import World
from posenc.experiments.train import (
    TrainConfig,
    batch_starts,
    build_model,
    lr_factor,
    probe_steps,
    sample_batch,
    train_model,
)

TINY = TrainConfig(dim=16, depth=1, heads=2, train_len=8, batch_size=4, steps=6, lr=3e-3)


def _tokens(n: int = 2000) -> torch.Tensor:
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)


def test_schedule_warms_up_then_decays_to_the_floor() -> None:
    cfg = TrainConfig(steps=100, warmup_fraction=0.1, min_lr_ratio=0.1)
    factors = [lr_factor(s, cfg) for s in range(cfg.steps)]
    assert factors[:10] == sorted(factors[:10]) and factors[9] == 1.0
    assert factors[10:] == sorted(factors[10:], reverse=True)
    assert factors[-1] == pytest.approx(0.1, abs=1e-3)
    assert lr_factor(0, TrainConfig(steps=5, warmup_fraction=0.0)) == 1.0


def test_warmup_steps_are_the_fraction_as_written() -> None:
    """100 steps with warmup_fraction 0.29 warmed up for 28 steps (int(28.999999999999996)); now 29. Fractions
    that are not whole steps still round down, and the presets' warmups are unchanged."""
    assert TrainConfig(steps=100, warmup_fraction=0.29).warmup == 29
    assert TrainConfig(steps=400, warmup_fraction=0.57).warmup == 228
    assert TrainConfig(steps=10, warmup_fraction=0.25).warmup == 2
    assert TrainConfig(steps=1200, warmup_fraction=0.1).warmup == 120
    assert TrainConfig(steps=4200, warmup_fraction=0.05).warmup == 210


def test_schedule_is_the_documented_formula() -> None:
    """lr_factor's docstring, value by value: (t + 1) / W while warming up, then a half cosine that reaches the
    floor at t = steps (one past the last step), so the last step is a hair above it."""
    cfg = TrainConfig(steps=10, warmup_fraction=0.2, min_lr_ratio=0.1)
    assert [lr_factor(t, cfg) for t in range(2)] == [0.5, 1.0]
    for t in range(2, 11):
        cosine = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (t - 2) / 8))
        assert lr_factor(t, cfg) == pytest.approx(cosine, abs=1e-12), t
    assert lr_factor(10, cfg) == pytest.approx(0.1) and lr_factor(9, cfg) > 0.1


def test_batches_are_windows_of_the_tokens() -> None:
    tokens = _tokens()
    batch = sample_batch(tokens, 3, TINY)
    starts = batch_starts(tokens.numel(), 3, TINY)
    assert batch.shape == (4, 9) and batch.dtype == torch.long
    for row, s in zip(batch, starts, strict=True):
        assert torch.equal(row, tokens[int(s) : int(s) + 9].long())


def test_ranks_split_the_global_batch() -> None:
    tokens = _tokens()
    whole = sample_batch(tokens, 5, TINY)
    parts = [sample_batch(tokens, 5, TINY, World(rank=r, size=2)) for r in range(2)]
    assert torch.equal(torch.cat(parts), whole)
    with pytest.raises(ValueError, match="divisible by the number of ranks"):
        sample_batch(tokens, 0, TINY, World(rank=0, size=3))


def test_training_is_deterministic_for_a_seed() -> None:
    tokens = _tokens()
    a = train_model("rope", tokens, TINY, progress=False)
    b = train_model("rope", tokens, TINY, progress=False)
    c = train_model("rope", tokens, TrainConfig(**{**TINY.to_dict(), "seed": 1}), progress=False)
    assert a.losses == b.losses and a.losses != c.losses
    for (name, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    assert all(math.isfinite(x) for x in a.losses) and not a.model.training


def test_training_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model("none", TINY)
    assert torch.equal(torch.rand(3), expected)


def test_learned_table_covers_the_training_length() -> None:
    model = build_model("learned", TINY)
    assert model.input_position.max_len == TINY.train_len  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("dim", 0, "dim"),
        ("heads", 3, "divisible"),
        ("steps", -1, "steps"),
        ("warmup_fraction", 1.0, "warmup"),
        ("lr", 0.0, "lr must be > 0, got 0"),
        ("grad_clip", 0.0, "grad_clip must be > 0, got 0"),
        ("min_lr_ratio", 1.5, "min_lr_ratio must be <= 1, got 1.5"),
        ("min_lr_ratio", -0.1, "min_lr_ratio must be >= 0, got -0.1"),
        ("compile", "no", "compile must be"),
    ],
)
def test_bad_config(field: str, value: float, match: str) -> None:
    """Values that would train silently wrong are refused, naming the field: a grad_clip of 0 scaled every
    gradient to zero (the model never moved), a min_lr_ratio above 1 made the cosine "decay" rise, the string
    "no" turned torch.compile on."""
    with pytest.raises((ValueError, TypeError), match=match):
        TrainConfig(**{field: value})


def test_too_few_tokens() -> None:
    with pytest.raises(ValueError, match="cannot hold a window"):
        batch_starts(5, 0, TINY)


def test_every_window_of_the_tokens_can_be_drawn() -> None:
    """``batch_starts``: windows of ``train_len + 1`` tokens. ``train_len + 1`` tokens hold exactly one (what
    ``load_corpus``'s ``min_train_tokens = train_len + 1`` accepts), and a longer corpus's last window is drawn
    too."""
    n = TINY.train_len + 1
    assert batch_starts(n, 0, TINY).tolist() == [0] * TINY.batch_size
    n = TINY.train_len + 4
    starts = {int(s) for step in range(50) for s in batch_starts(n, step, TINY)}
    assert starts == set(range(n - TINY.train_len))


def test_embeddings_are_scaled_as_in_fairseq() -> None:
    plain_cfg = TrainConfig(**{**TINY.to_dict(), "scale_embeddings": False})
    scaled, plain = build_model("none", TINY), build_model("none", plain_cfg)
    assert scaled.embed_scale == pytest.approx(TINY.dim**0.5) and plain.embed_scale == 1.0
    tokens = torch.randint(0, 256, (1, 5))
    seen: list[torch.Tensor] = []
    scaled.blocks[0].register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    with torch.no_grad():
        scaled(tokens)
    torch.testing.assert_close(seen[0], scaled.embed.weight[tokens] * TINY.dim**0.5)


def test_probe_measures_in_eval_mode_without_changing_training() -> None:
    tokens = _tokens()
    seen: list[tuple[bool, bool]] = []

    def probe(model: torch.nn.Module) -> dict[str, float | None]:
        seen.append((model.training, torch.is_grad_enabled()))
        return {"8": float(len(seen))}

    plain = train_model("rope", tokens, TINY, progress=False)
    probed = train_model("rope", tokens, TINY, progress=False, probe=probe, probe_points=3)
    assert probed.losses == plain.losses  # probing neither trains nor draws random numbers
    assert probed.curve == {"steps": probe_steps(TINY.steps, 3), "8": [1.0, 2.0, 3.0, 4.0][: len(seen)]}
    assert seen and all(not training and not grad for training, grad in seen)
    assert plain.curve == {} and plain.tokens_per_second > 0


@pytest.mark.slow
def test_compiled_step_matches_the_eager_step() -> None:
    tokens = _tokens()
    cfg = TrainConfig(**{**TINY.to_dict(), "steps": 3})
    eager = train_model("none", tokens, cfg, progress=False)
    compiled = train_model("none", tokens, TrainConfig(**{**cfg.to_dict(), "compile": True}), progress=False)
    torch.testing.assert_close(
        torch.tensor(compiled.losses), torch.tensor(eager.losses), rtol=1e-4, atol=1e-5
    )
    for name, value in eager.model.state_dict().items():
        torch.testing.assert_close(compiled.model.state_dict()[name], value, rtol=1e-3, atol=1e-4, msg=name)
