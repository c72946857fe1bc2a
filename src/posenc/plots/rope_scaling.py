"""What each RoPE context-extension method does to the frequencies: the picture every context-extension paper
draws (wavelength per rotary dimension against the training length; Chen et al. 2023, bloc97 2023, Peng et al.
2023 Figure 1, Meta 2024, Ding et al. 2024).

Every method of ``posenc.rotary.available_scalings()`` is drawn, set up to extend a model trained at ``L`` to
``factor * L``, and evaluated at that length (so dynamic NTK and LongRoPE show their long-context frequencies).
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

import torch
from torch import Tensor

from ..experiments.evaluate import rope_extensions
from ..rotary import RoPE, RopeScaling, YaRNScaling, available_scalings, parse_scaling
from ..rotary.scaling import SCALINGS
from .common import Picture, new_figure, rounded
from .palette import NEUTRAL, scaling_color


def _scaling_classes() -> dict[str, type[RopeScaling]]:
    return dict(SCALINGS.items())


def example_scalings(train_len: int, factor: float, rotary_dim: int) -> dict[str, RopeScaling]:
    """One scaling per registered method, extending ``train_len`` to ``factor * train_len``, by ``rope_type``.

    Methods that ``posenc compare`` evaluates are set up as it does (``rope_extensions()``: dynamic NTK keeps its
    fixed factor). The others get the parameters they declare from one pool: ``factor``,
    ``original_max_position_embeddings = train_len`` and, for per-frequency methods (LongRoPE), short factors of 1
    and long factors rising from 1 (highest frequency) to ``factor`` (lowest) along ``(i / (P-1))^2``: LongRoPE's
    real factors come from a search per model, this is only their usual shape. Other parameters keep their
    defaults.
    """
    if not (isinstance(train_len, int) and train_len > 0):
        raise ValueError(f"train_len must be a positive integer, got {train_len!r}")
    pairs = rotary_dim // 2
    rising = [1.0 + (factor - 1.0) * (i / max(pairs - 1, 1)) ** 2 for i in range(pairs)]
    pool: dict[str, Any] = {
        "factor": float(factor),
        "original_max_position_embeddings": train_len,
        "short_factor": [1.0] * pairs,
        "long_factor": rising,
    }
    as_compared = rope_extensions()
    classes = _scaling_classes()
    out: dict[str, RopeScaling] = {}
    for kind in available_scalings():
        if kind in as_compared:
            extended = as_compared[kind].extension(train_len, int(factor * train_len))
            assert extended is not None  # rope_extensions() lists only methods with an extension
            out[kind] = extended
            continue
        declared = {f.name for f in fields(classes[kind])}
        spec = {"rope_type": kind, **{k: v for k, v in pool.items() if k in declared}}
        scaling = parse_scaling(spec)  # raises, naming the parameter, for a method the pool cannot set up
        assert scaling is not None
        out[kind] = scaling
    return out


def scaled_frequencies(
    head_dim: int, base: float, scaling: RopeScaling | None, length: int
) -> tuple[Tensor, float]:
    """``(R/2,)`` float64 frequencies of ``RoPE(head_dim, base, scaling=scaling)`` at a call of ``length``
    positions, and its attention factor (the temperature folded into cos and sin)."""
    rope = RoPE(head_dim, base=base, scaling=scaling, cache_len=1)
    inv_freq = rope.inv_freq_for(torch.arange(length))
    return inv_freq.double(), rope.attention_scale


def yarn_ramp(plain: Tensor, scaled: Tensor, factor: float) -> Tensor:
    """YaRN's ramp per dimension pair, read back from its frequencies ``theta' = theta (1 - r (1 - 1/factor))``:
    0 where a frequency is kept, 1 where it is interpolated by ``factor``."""
    return ((1.0 - scaled / plain) / (1.0 - 1.0 / factor)).clamp(0.0, 1.0)


def rope_scaling_figure(head_dim: int, base: float, train_len: int, factor: float = 16.0) -> Picture:
    """Wavelength ``2 pi / theta_i`` per dimension pair ``i`` (log y) for plain RoPE and every scaling, with
    ``L`` and ``factor * L`` marked, and each method's interpolation ratio ``theta_i / theta'_i`` below.
    YaRN's ramp (the pairs it partly interpolates) is shaded."""
    length = int(factor * train_len)
    plain, _ = scaled_frequencies(head_dim, base, None, length)
    rows = {"default": (plain, 1.0)} | {
        kind: scaled_frequencies(head_dim, base, s, length)
        for kind, s in example_scalings(train_len, factor, head_dim).items()
    }
    fig = new_figure(7.5, 6.5)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    pairs = torch.arange(plain.numel()).numpy()
    data: dict[str, Any] = {"head_dim": head_dim, "base": base, "train_len": train_len, "factor": factor}
    data["length"], data["scalings"] = length, {}
    for kind, (inv_freq, temperature) in rows.items():
        color = NEUTRAL if kind == "default" else scaling_color(kind)
        style = "-" if kind == "default" else "--"
        label = "plain RoPE" if kind == "default" else f"{kind} (temp {temperature:.3g})"
        wavelength = 2 * math.pi / inv_freq
        top.plot(pairs, wavelength.numpy(), style, color=color, linewidth=1.4, label=label)
        bottom.plot(pairs, (plain / inv_freq).numpy(), style, color=color, linewidth=1.4)
        data["scalings"][kind] = {
            "inv_freq": rounded(inv_freq.tolist()),
            "wavelength": rounded(wavelength.tolist()),
            "attention_factor": temperature,
        }
    yarn = [k for k, s in example_scalings(train_len, factor, head_dim).items() if isinstance(s, YaRNScaling)]
    for kind in yarn:
        ramp = yarn_ramp(plain, rows[kind][0], factor)
        inside = torch.nonzero((ramp > 1e-9) & (ramp < 1 - 1e-9)).flatten().tolist()
        if inside:
            lo, hi = inside[0] - 0.5, inside[-1] + 0.5
            for ax in (top, bottom):
                ax.axvspan(lo, hi, color=scaling_color(kind), alpha=0.12, linewidth=0)
            data["scalings"][kind]["ramp"] = rounded(ramp.tolist())
            data["scalings"][kind]["ramp_pairs"] = [inside[0], inside[-1]]
    for value, text in ((train_len, "L"), (length, f"{factor:g}L")):
        top.axhline(value, color="grey", linestyle=":", linewidth=1)
        top.annotate(text, (0, value), xytext=(2, 2), textcoords="offset points", fontsize=8, color="grey")
    top.set_yscale("log")
    top.set(ylabel="wavelength 2π/θᵢ (tokens, log)", title=f"RoPE scalings, L = {train_len} → {length}")
    top.legend(fontsize=7, ncol=2)
    bottom.set(xlabel=f"dimension pair i (head_dim {head_dim}, base {base:g})", ylabel="θᵢ / θ'ᵢ")
    bottom.set_yscale("log", base=2)
    for ax in (top, bottom):
        ax.grid(alpha=0.3, which="both")
    return Picture(fig, data)
