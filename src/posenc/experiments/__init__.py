"""Experiments: ``posenc compare`` (train short, test long; Press et al. 2022) and its parts.

>>> from posenc.experiments import CompareConfig, run_compare
>>> results = run_compare(CompareConfig.quick(), encodings=["rope", "alibi"], out="runs/quick")  # doctest: +SKIP
"""

from .compare import CompareConfig, default_encodings, run_compare
from .data import Corpus, load_corpus
from .dist import World, setup_world
from .evaluate import eval_lengths, perplexities, rope_extensions, window_nll
from .train import TrainConfig, TrainResult, build_model, train_model

__all__ = [
    "CompareConfig",
    "Corpus",
    "TrainConfig",
    "TrainResult",
    "World",
    "build_model",
    "default_encodings",
    "eval_lengths",
    "load_corpus",
    "perplexities",
    "rope_extensions",
    "run_compare",
    "setup_world",
    "train_model",
    "window_nll",
]
