"""The trained models of a ``posenc compare`` run folder, and held-out text to show them.

A run folder holds ``config.json`` and ``checkpoints/<encoding>/seed<k>.pt`` (the lowest seed is shown) (see :mod:`posenc.experiments.compare`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from ..experiments.checkpoints import (
    checkpoint_refusal,
    config_differences,
    json_roundtrip,
    load_model,
    read_json_object,
)
from ..experiments.data import load_corpus
from ..experiments.specs import spec_of_stem, spec_order
from ..models import TransformerLM


@dataclass
class TrainedRun:
    """A compare run: its folder, configuration, ``L``, evaluation lengths and models by encoding name."""

    folder: Path
    config: dict[str, Any]
    train_len: int
    lengths: list[int]
    models: dict[str, TransformerLM]

    _text: Tensor | None = field(default=None, init=False, repr=False)

    def held_out_text(self) -> Tensor:
        """``(N,)`` uint8 validation bytes of the run's corpus, read as ``posenc compare`` read it (cached).

        Raises:
            ValueError: the text is no longer the run's (its ``config.json`` records the corpus's source, sizes
                and SHA-256; a changed or missing ``--data`` folder, or another Python's standard library, differs),
                as ``posenc compare`` refuses to resume on it; the run and what differs are named.
        """
        if self._text is None:
            self._text = self._read_text()
        return self._text

    def _read_text(self) -> Tensor:
        data = self.config.get("data")
        source = data.get("source") if isinstance(data, dict) else None
        if not isinstance(data, dict) or not isinstance(source, str):
            raise ValueError(
                f"--run {self.folder}: its config.json records no corpus (data.source); give a `posenc compare` "
                "output folder"
            )
        is_stdlib = "standard library" in source and not Path(source).exists()
        if not is_stdlib and not Path(source).exists():
            raise ValueError(
                f"--run {self.folder} was trained on {source}, which is not on this machine; its attention "
                "pictures need that text (restore it there, or leave them out with --only)"
            )
        try:
            corpus = load_corpus(  # as run_compare reads it, so the digest can be compared
                None if is_stdlib else source,
                min_val_tokens=self.lengths[-1] + 1,
                max_train_bytes=self.config.get("max_train_bytes") if is_stdlib else None,
                max_val_bytes=self.config.get("max_val_bytes") if is_stdlib else None,
            )
        except ValueError as err:
            raise ValueError(
                f"--run {self.folder}: the text it was trained on cannot be read as it was: {err}"
            ) from None
        diffs = config_differences(data, json_roundtrip(corpus.describe()), "data.")
        if diffs:
            raise ValueError(
                f"--run {self.folder} was trained on other text than {corpus.source} holds now "
                f"({'; '.join(diffs[:4])}); its attention pictures need the run's own text (restore it, or leave "
                "them out with --only)"
            )
        return corpus.val


def first_seed_checkpoints(folder: Path) -> dict[str, Path]:
    """Encoding (or spec, ``alibi:max_bias=4``) -> the checkpoint of its lowest seed (``<encoding>/seed<k>.pt``, the
    folder named by :func:`posenc.experiments.specs.file_stem`; a folder from before seeds, ``<encoding>.pt``, is
    read too)."""
    found: dict[str, tuple[int, Path]] = {}
    for path in folder.glob("*/seed*.pt"):
        seed, name = path.stem.removeprefix("seed"), spec_of_stem(path.parent.name)
        if seed.isdigit() and (name not in found or int(seed) < found[name][0]):
            found[name] = (int(seed), path)
    out = {name: path for name, (_, path) in found.items()}
    for path in folder.glob("*.pt"):
        out.setdefault(spec_of_stem(path.stem), path)
    return dict(sorted(out.items()))


def load_run(folder: Path, device: str = "cpu") -> TrainedRun:
    """The checkpoints of the run in ``folder``, in ``posenc.available()`` order.

    Each checkpoint must be the run's own: of the encoding its folder names, trained with the run's
    ``config.json`` (any seed), as ``posenc compare`` itself requires on resuming; else the pictures would show
    another model under this one's name or at another ``L``.

    Raises:
        FileNotFoundError: ``folder`` has no ``config.json`` or no checkpoint.
        ValueError: ``config.json`` is damaged or not a compare configuration; a checkpoint is not a posenc compare
            checkpoint, or not of this run (the file is named).
    """
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(
            f"--run {folder}: no config.json there; give a `posenc compare` output folder"
        )
    config = read_json_object(cfg_path, "run configuration")
    train = config.get("train")
    train_len = train.get("train_len") if isinstance(train, dict) else None
    multiples = config.get("multiples", [1])
    if not (
        isinstance(train_len, int)
        and train_len >= 1
        and isinstance(multiples, list)
        and multiples
        and all(isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in multiples)
    ):
        raise ValueError(
            f"{cfg_path} is not a `posenc compare` configuration (no train.train_len >= 1 or multiples); "
            "give a `posenc compare` output folder"
        )
    paths = first_seed_checkpoints(folder / "checkpoints")
    if not paths:
        raise FileNotFoundError(
            f"--run {folder}: no checkpoints/<encoding>/seed<k>.pt; has the compare run trained anything?"
        )
    order = spec_order(set(paths))
    models, refusals = {}, {}
    for name in order:
        model, ckpt = load_model(paths[name], device)
        theirs = ckpt.get("config", {})
        theirs = {**theirs, "train": {k: v for k, v in theirs.get("train", {}).items() if k != "seed"}}
        diffs = config_differences(theirs, config)
        if ckpt.get("encoding") != name:
            diffs = [f"a checkpoint of {ckpt.get('encoding')!r}, not of {name!r}"]
        refusals[name] = diffs
        models[name] = model
    differing = {name: tuple(d) for name, d in refusals.items() if d}
    if differing and len(differing) == len(order) > 1 and len(set(differing.values())) == 1:
        raise ValueError(  # every checkpoint agrees with the others, not with config.json: it was edited
            f"{cfg_path} disagrees with every checkpoint of this run ({'; '.join(differing[order[0]])}); was it "
            "edited? Restore it (each checkpoint records the configuration it was trained with)"
        )
    for name, found in differing.items():
        raise checkpoint_refusal(paths[name], list(found), f"retrain {name} with `posenc compare`")
    lengths = [m * train_len for m in sorted(set(multiples))]
    return TrainedRun(folder, config, train_len, lengths, models)
