"""Experiments: ``posenc compare`` (train short, test long; Press et al. 2022) and its parts.

>>> from posenc.experiments import CompareConfig, preset, run_compare
>>> results = run_compare(CompareConfig.quick(), encodings=["rope", "alibi"], out="runs/quick")  # doctest: +SKIP
>>> from dataclasses import replace
>>> cfg = replace(preset("demo"), seeds=(0, 1, 2))  # mean ± std over three seeds  # doctest: +SKIP
"""

from .compare import CompareConfig, default_encodings, run_compare
from .data import Corpus, load_corpus
from .dist import World, setup_world
from .evaluate import eval_lengths, perplexities, rope_extensions, spread_blocks, window_nll
from .presets import PRESETS, parse_seeds, preset
from .train import TrainConfig, TrainResult, build_model, train_model

__all__ = [
    "PRESETS",
    "CompareConfig",
    "Corpus",
    "TrainConfig",
    "TrainResult",
    "World",
    "build_model",
    "default_encodings",
    "eval_lengths",
    "load_corpus",
    "parse_seeds",
    "perplexities",
    "preset",
    "rope_extensions",
    "run_compare",
    "setup_world",
    "spread_blocks",
    "train_model",
    "window_nll",
]
