"""What defines a ``posenc compare`` run (:class:`CompareConfig`), its named presets and the ``--seeds`` syntax.

Presets (``--preset``; every value can still be overridden by its own flag):

* ``demo`` (the default, ``make demo``): the 4-layer dim-128 model, 1,200 steps at peak lr 4e-3 in mixed precision
  where the CPU computes bfloat16 natively: every registered encoding on 2 CPU cores in under 10 minutes, two
  models at a time (6 min 32 s measured on 2026-11-29; the day before, on a machine 1.5x slower, the earlier
  default took 8 min 4 s).
* ``cpu-long``: the same model trained 3.5x longer (4,200 steps at peak lr 2e-3; one seed of every encoding in
  about 30 minutes on 2 idle cores, an estimate from the demo's time per step; add seeds later with
  ``--seeds 3``, which trains only the new ones).
* ``gpu``: a 6-layer dim-256 model, batch 64, 3 seeds, compiled (aimed at 10 encodings x 3 seeds in about 20
  minutes on one H100-class GPU; not yet timed there).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ..validation import check_int, check_seed
from .evaluate import MULTIPLES
from .train import MAX_SEED, TrainConfig

#: The most seeds ``--seeds N`` may ask for (each is one more model per encoding).
MAX_SEED_COUNT = 1000

#: Steps of the ``demo`` preset (the default): three times the first version's 400, paid for by training two
#: models at a time on two cores (:mod:`posenc.experiments.pool`) and by bfloat16 products (``precision="auto"``).
DEMO_STEPS = 1200

#: Peak learning rate of the ``demo`` preset. At 1,200 steps (one seed, five encodings, 2026-11-29) 4e-3 gave the
#: lowest mean perplexity at L and the smallest gap between rope, alibi, xpos, kerple and shaw (1.12x; 2e-3 1.18x,
#: 3e-3 1.16x, 5e-3 1.14x, 6e-3 1.17x): ALiBi gains most from the higher rate. ``cpu-long`` keeps TrainConfig's 2e-3.
DEMO_LR = 4e-3


@dataclass(frozen=True)
class CompareConfig:
    """Everything that defines a comparison besides which encodings take part.

    Attributes:
        train: model sizes and budget; its ``seed`` is replaced by each of ``seeds``.
        seeds: one model per (encoding, seed); results show the mean and standard deviation over seeds.
        multiples: evaluation lengths as multiples of ``train.train_len``, increasing from 1, each dividing the
            last.
        eval_windows: blocks of the longest evaluation length scored when ``eval_bytes`` is None, spread evenly
            over the held-out text (:func:`posenc.experiments.evaluate.spread_blocks`).
        eval_bytes: bytes scored at every length, rounded down to whole windows of the longest length (at least
            one), or None for ``eval_windows`` windows.
        curve_points: times per training run that validation perplexity is measured at L and 4L (0: no curve).
        curve_bytes: bytes scored for each curve point, in whole windows of 4L (at least one).
        data: a text file or folder, or None for the standard library.
        max_train_bytes, max_val_bytes: caps on the text read (whole files; see ``load_corpus``).
        preset: the preset these values started from (recorded, not used).
    """

    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=DEMO_STEPS, lr=DEMO_LR, precision="auto")
    )
    seeds: tuple[int, ...] = (0,)
    multiples: tuple[int, ...] = MULTIPLES
    # 16 blocks of 16L (32 KB at L = 128) spread over the held-out text: 4 blocks from its start (95 % test_doctest.py)
    # put the gap at L between rope, alibi, xpos, kerple and shaw at 1.25x where the whole text gives 1.18x (the
    # same lr 2e-3 checkpoints; 64 blocks: 1.18x)
    eval_windows: int = 16
    eval_bytes: int | None = None
    curve_points: int = 20
    curve_bytes: int = 2048
    data: str | None = None
    max_train_bytes: int | None = 8_000_000
    max_val_bytes: int | None = 1_000_000
    preset: str = "demo"

    def __post_init__(self) -> None:
        for m in self.multiples:  # a float or bool multiple failed only at evaluation, after training
            check_int("multiples", m, owner="CompareConfig")
        for name in ("eval_windows", "curve_points", "curve_bytes", "eval_bytes"):  # bounds checked below
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), owner="CompareConfig")
        for name in ("max_train_bytes", "max_val_bytes"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), at_least=1, owner="CompareConfig")
        if (
            not self.multiples
            or min(self.multiples) < 1
            or list(self.multiples) != sorted(set(self.multiples))
        ):
            raise ValueError(f"multiples must be increasing positive integers, got {self.multiples}")
        if self.multiples[0] != 1:  # every ratio, verdict and "best at L" is relative to the perplexity at L
            raise ValueError(
                f"multiples must start at 1 (the training length, which every ratio and verdict compares "
                f"with), got {self.multiples}"
            )
        uneven = [m for m in self.multiples if self.multiples[-1] % m]
        if uneven:  # the scored bytes are whole windows of the longest length, and so must be of every length
            raise ValueError(
                f"multiples must each divide the largest ({self.multiples[-1]}) so that the same bytes are cut "
                f"into whole windows at every length, got {self.multiples} ({', '.join(map(str, uneven))} do(es) "
                "not)"
            )
        if self.eval_windows < 1:
            raise ValueError(f"eval_windows must be >= 1, got {self.eval_windows}")
        if self.eval_bytes is not None and self.eval_bytes < 1:
            raise ValueError(f"--eval-bytes must be a positive number of bytes, got {self.eval_bytes}")
        if not self.seeds or any(s < 0 for s in self.seeds) or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"--seeds must be distinct non-negative integers, got {list(self.seeds)}")
        for seed in self.seeds:  # the seeds training takes, refused before any file is written
            check_seed("--seeds", seed, low=0, high=MAX_SEED - 1)
        if self.curve_points < 0 or self.curve_bytes < 1:
            raise ValueError(
                f"curve_points must be >= 0 and curve_bytes >= 1, got {self.curve_points}, {self.curve_bytes}"
            )

    @classmethod
    def quick(cls, **train_overrides: Any) -> CompareConfig:
        """A tiny configuration that runs in seconds (for tests and smoke checks)."""
        train = TrainConfig(dim=32, depth=2, heads=2, train_len=16, batch_size=8, steps=30, lr=3e-3)
        return cls(
            train=replace(train, **train_overrides),
            eval_windows=2,
            curve_points=4,
            curve_bytes=128,
            max_train_bytes=200_000,
            max_val_bytes=20_000,
            preset="quick",
        )

    def with_train(self, **overrides: Any) -> CompareConfig:
        """A copy with some :class:`TrainConfig` fields replaced (``None`` values are ignored)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return replace(self, train=replace(self.train, **given)) if given else self

    def for_seed(self, seed: int) -> TrainConfig:
        """The training configuration of one seed."""
        return replace(self.train, seed=seed)


def _demo() -> CompareConfig:
    return CompareConfig()


def _cpu_long() -> CompareConfig:
    return CompareConfig(train=TrainConfig(steps=4200, precision="auto"), curve_points=32, preset="cpu-long")


def _gpu() -> CompareConfig:
    train = TrainConfig(
        dim=256,
        depth=6,
        heads=8,
        batch_size=64,
        steps=2000,
        lr=1e-3,
        compile=True,
        warmup_fraction=0.05,
        precision="auto",
    )
    return CompareConfig(
        train=train,
        seeds=(0, 1, 2),
        eval_windows=16,
        curve_points=40,
        curve_bytes=8192,
        max_train_bytes=32_000_000,
        max_val_bytes=2_000_000,
        preset="gpu",
    )


#: The named starting points of ``posenc compare --preset``.
PRESETS = {"demo": _demo, "cpu-long": _cpu_long, "gpu": _gpu}


def preset(name: str) -> CompareConfig:
    """The :class:`CompareConfig` of a preset (``demo``, ``cpu-long``, ``gpu``, or ``quick`` for smoke runs)."""
    if name == "quick":
        return CompareConfig.quick()
    if name not in PRESETS:
        raise ValueError(f"unknown --preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()


def parse_seeds(text: str) -> tuple[int, ...]:
    """``--seeds``: ``"3"`` means seeds 0, 1, 2; ``"0,4,7"`` (any comma) lists them.

    Raises:
        ValueError: not integers, a count below 1 or above :data:`MAX_SEED_COUNT`, seeds outside what training
            takes (``[0, 2**32)``), repeated seeds, or an empty entry (``"0,,2"``; only the trailing comma of
            ``"5,"`` is allowed).
    """
    parts = [p.strip() for p in text.split(",")]
    if "," in text and not all(parts[:-1]):  # "5," is a list of one seed; "0,,2" or ",1" a typo
        raise ValueError(
            f"--seeds got {text!r}, which has an empty entry; it takes a count (3) or a comma list (0,1,2)"
        )
    try:
        values = [int(p) for p in parts if p]
    except ValueError:
        raise ValueError(f"--seeds takes a count (3) or a comma list (0,1,2), got {text!r}") from None
    if "," not in text:
        if len(values) != 1 or not 1 <= values[0] <= MAX_SEED_COUNT:
            raise ValueError(
                f"--seeds N needs a count N >= 1 and <= {MAX_SEED_COUNT} (or a list like 0,1,2), got {text!r}"
            )
        return tuple(range(values[0]))
    if not values or len(set(values)) != len(values):
        raise ValueError(f"--seeds list must hold distinct non-negative integers, got {text!r}")
    return tuple(check_seed("--seeds", v, low=0, high=MAX_SEED - 1) for v in values)
