"""FIRE: normalized log distance through a learned MLP; the elementwise (score_mod) MLP equals the batched one."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import posenc
from posenc.functional import fire_input, fire_mlp_unrolled


def test_input_is_the_papers_normalized_distance() -> None:
    c, threshold = torch.tensor(0.3), torch.tensor(4.0)
    i, j = torch.tensor([[2], [10], [10]]), torch.tensor([[0, 1, 2], [0, 5, 10], [11, 12, 20]])
    psi = lambda x: torch.log(0.3 * x.float() + 1)  # noqa: E731
    expected = psi((i - j).abs()) / (psi(torch.maximum(i, torch.tensor(4))) + 1e-6)
    torch.testing.assert_close(fire_input(c, threshold, i, j), expected)


@pytest.mark.parametrize("eps", [1e-6, 0.5])
def test_input_and_bias_follow_the_formula_at_any_eps(eps: float) -> None:
    """``eps`` is added to the denominator, ``psi(|i-j|) / (psi(max(i, L)) + eps)``, at a non-default value too:
    checked against the formula written out here (every other FIRE test compares paths that all share
    ``fire_input``; ``log1p(c max(i, L) + eps)`` was 10 % off at eps=0.5 and went unseen, review s5)."""
    c, threshold = 0.25, 4.0  # (exact in float32: the module's parameters are float32 made float64)
    i = torch.tensor([[0], [2], [10], [600]])
    j = torch.tensor([[0, 1, 2], [0, 1, 5], [0, 5, 11], [0, 100, 599]])
    want = torch.log1p(c * (i - j).abs().double()) / (
        torch.log1p(c * torch.maximum(i.double(), torch.tensor(threshold, dtype=torch.float64))) + eps
    )
    got = fire_input(
        torch.tensor(c, dtype=torch.float64), torch.tensor(threshold, dtype=torch.float64), i, j, eps
    )
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    enc = posenc.FIRE(2, width=3, init_c=c, init_threshold=threshold, eps=eps).double()
    q_pos, k_pos = torch.arange(3), torch.arange(8)
    x = (
        torch.log1p(c * (q_pos[:, None] - k_pos[None, :]).abs().double())
        / (torch.log1p(c * q_pos.double().clamp(min=threshold)) + eps)[:, None]
    )
    mlp = enc.out(torch.relu(enc.hidden(x.unsqueeze(-1)))).permute(2, 0, 1)  # (H, 3, 8)
    torch.testing.assert_close(enc.bias(3, 8), mlp, rtol=1e-12, atol=1e-12)


def test_unrolled_mlp_equals_linear_layers() -> None:
    enc = posenc.FIRE(3, width=5)
    x = torch.rand(7, 11) * 3
    ref = enc.out(torch.relu(enc.hidden(x.unsqueeze(-1)))).permute(2, 0, 1)  # (H, 7, 11)
    _, _, w1, b1, w2, b2 = enc.tables()
    ours = fire_mlp_unrolled(x, torch.arange(3).view(-1, 1, 1), w1, b1, w2, b2)
    torch.testing.assert_close(ours, ref)


@given(offset=st.integers(0, 5000))
def test_score_mod_formula_equals_materialized_bias(offset: int) -> None:
    enc = posenc.FIRE(2, width=4, init_threshold=8.0)
    q_pos, k_pos = torch.arange(offset, offset + 3)[None], torch.arange(offset + 4)[None]
    head = torch.arange(2).view(-1, 1, 1)
    formula = enc.formula(enc.tables(), head, q_pos[:, None, :, None], k_pos[:, None, None, :])
    torch.testing.assert_close(formula, enc.pairwise(q_pos, k_pos))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_weights_give_the_float32_bias_of_those_weights(dtype: torch.dtype) -> None:
    """The batched MLP ran in the weights' dtype (1e-2 off in bf16; the flex formula was 5e-7 off)."""
    torch.manual_seed(0)
    enc = posenc.FIRE(4, init_threshold=64.0).to(dtype)
    exact = posenc.FIRE(4, init_threshold=64.0).double()
    exact.load_state_dict({k: v.double() for k, v in enc.state_dict().items()})
    got = enc.bias(4, 94, offset=90)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), exact.bias(4, 94, offset=90), rtol=0, atol=2e-6)


def test_learned_parameters_get_gradients_and_errors() -> None:
    enc = posenc.build("fire", heads=2)
    (enc.bias(6, 6, offset=600).sum() + enc.bias(6, 6).sum()).backward()  # past and below the threshold L
    for name, p in enc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    with pytest.raises(ValueError, match="width"):
        posenc.FIRE(2, width=0)


def test_unbound_score_mod_equals_the_formula_values_and_gradients() -> None:
    """The accelerator-learning score_mod (each weight its own tensor, read once) is the same function of the
    same parameters: equal bias and equal parameter gradients, evaluated here elementwise on CPU."""
    torch.manual_seed(0)
    enc = posenc.FIRE(3, width=4, init_threshold=6.0)
    q_pos, k_pos = torch.tensor([[0, 3, 9, 20]]), torch.tensor([[0, 3, 9, 20, 21, 40]])
    b, h = torch.zeros(1, 1, 1, dtype=torch.long), torch.arange(3).view(-1, 1, 1)
    qi, ki = torch.arange(4).view(1, -1, 1), torch.arange(6).view(1, 1, -1)
    score = torch.zeros(3, 4, 6)
    ref_mod = super(posenc.FIRE, enc).score_mod(torch.zeros(1, 3, 4, 1), q_pos, k_pos)
    assert ref_mod is not None
    ref = ref_mod(score, b, h, qi, ki)
    got = enc.score_mod_unbound(q_pos, k_pos)(score, b, h, qi, ki)
    torch.testing.assert_close(got, ref)
    weights = torch.randn_like(ref)
    params = list(enc.parameters())
    for g, w in zip(
        torch.autograd.grad((got * weights).sum(), params),
        torch.autograd.grad((ref * weights).sum(), params),
        strict=True,
    ):
        torch.testing.assert_close(g, w)


def test_settings_that_overflow_float32_are_refused() -> None:
    """FIRE(init_c=3e38) gave NaN attention (c * d overflows float32: inf / inf), and so did eps=1e-46 (0 in
    float32: 0 / 0 at query 0 with threshold 0) (fuzz #4)."""
    with pytest.raises(ValueError, match=r"FIRE: init_c must be <= 1e\+30, got 3e\+38"):
        posenc.FIRE(2, init_c=3e38)
    with pytest.raises(ValueError, match=r"FIRE: eps must be >= 1.17549e-38, got 1e-46"):
        posenc.FIRE(2, init_threshold=0.0, eps=1e-46)
    with pytest.raises(ValueError, match="FIRE: init_threshold must be <="):
        posenc.FIRE(2, init_threshold=1e39)
    a = posenc.Attention(16, 2, position=posenc.FIRE(2, init_c=1e30, init_threshold=0.0, eps=1.2e-38))
    with torch.no_grad():
        assert not a(torch.randn(1, 4, 16)).isnan().any()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_threshold_is_float32(dtype: torch.dtype) -> None:
    """``L = threshold_scale * init_threshold`` was computed in the weights' dtype: 300 for 301 in bf16, the bias
    of queries 290..299 4e-4 off (review s4)."""
    enc = posenc.FIRE(4, init_threshold=301.0).to(dtype)
    assert enc.threshold().dtype == torch.float32 and enc.threshold().item() == 301.0
    exact = posenc.FIRE(4, init_threshold=301.0).double()
    exact.load_state_dict({k: v.double() for k, v in enc.state_dict().items()})
    torch.testing.assert_close(
        enc.bias(10, 300, offset=290).double(), exact.bias(10, 300, offset=290), rtol=0, atol=2e-6
    )


def test_autocast_leaves_the_bias_in_float32() -> None:
    """Under CPU autocast the MLP's linear layer ran in bf16: 1.3e-2 off the float32 bias (review s4)."""
    torch.manual_seed(0)
    enc = posenc.FIRE(4, init_threshold=64.0)
    plain = enc.bias(16, 80, offset=64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = enc.bias(16, 80, offset=64)
    assert cast.dtype == torch.float32
    torch.testing.assert_close(cast, plain, rtol=0, atol=1e-6)


def test_forward_mode_gradients() -> None:
    """``torch.func.jvp`` raised "expected m1 and m2 to have the same dtype" (an integer position met the float
    threshold in torch.maximum and got a float64 tangent, review s4); the tangent now matches differences."""
    from torch.func import jvp

    torch.manual_seed(0)
    enc = posenc.FIRE(2, init_threshold=8.0).double()
    params = {k: v.detach() for k, v in enc.named_parameters()}
    tangent = {k: torch.randn_like(v) for k, v in params.items()}
    q_pos, k_pos = torch.arange(4, 10).view(1, -1), torch.arange(10).view(1, -1)

    def f(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return _bias(enc, p, q_pos, k_pos)

    _, got = jvp(f, (params,), (tangent,))
    h = 1e-6
    ahead = f({k: v + h * tangent[k] for k, v in params.items()})
    behind = f({k: v - h * tangent[k] for k, v in params.items()})
    torch.testing.assert_close(got, (ahead - behind) / (2 * h), rtol=1e-5, atol=1e-7)


def _bias(
    enc: posenc.FIRE, params: dict[str, torch.Tensor], q_pos: torch.Tensor, k_pos: torch.Tensor
) -> torch.Tensor:
    from torch.func import functional_call

    class Pairwise(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = enc

        def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
            return self.enc.pairwise(q, k)

    return functional_call(Pairwise(), {f"enc.{k}": v for k, v in params.items()}, (q_pos, k_pos))


def test_a_negative_threshold_scale_gives_the_bias_of_its_absolute_value() -> None:
    """``L = |init_threshold * s|`` (the class docstring): the learned ``s`` may go negative in training, and the
    bias at ``-s`` must be the one at ``+s`` on every path: the materialized MLP, the per-score formula of the
    flex path (inference and learning), and a decode session's per-distance vector (with a signed L a query
    below it was divided by ``log1p(c q) + eps``: -7509 at query 0, review s5)."""
    torch.manual_seed(0)
    pos_enc = posenc.FIRE(2, width=4, init_threshold=8.0)
    neg_enc = posenc.FIRE(2, width=4, init_threshold=8.0)
    neg_enc.load_state_dict(pos_enc.state_dict())
    with torch.no_grad():
        pos_enc.threshold_scale.fill_(0.75)  # L = 6
        neg_enc.threshold_scale.fill_(-0.75)
    q_pos, k_pos = torch.tensor([[0, 3, 5, 6, 9]]), torch.tensor([[0, 1, 3, 5, 6, 9, 12]])
    with torch.no_grad():
        torch.testing.assert_close(neg_enc.bias(10, 12), pos_enc.bias(10, 12), rtol=0, atol=0)
        torch.testing.assert_close(
            neg_enc.pairwise(q_pos, k_pos), pos_enc.pairwise(q_pos, k_pos), rtol=0, atol=0
        )
    b, h = torch.zeros(1, 1, 1, dtype=torch.long), torch.arange(2).view(-1, 1, 1)
    qi, ki = torch.arange(5).view(1, -1, 1), torch.arange(7).view(1, 1, -1)
    score = torch.zeros(2, 5, 7)
    q = torch.zeros(1, 2, 5, 4)
    for grad in (False, True):  # the bound formula (inference) and score_mod_unbound (learning)
        with torch.set_grad_enabled(grad):
            mods = [enc.score_mod(q, q_pos, k_pos) for enc in (neg_enc, pos_enc)]
            assert mods[0] is not None and mods[1] is not None
            got, want = (mod(score, b, h, qi, ki) for mod in mods)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        torch.testing.assert_close(want, pos_enc.pairwise_reference(q_pos, k_pos)[0])
    keys = torch.arange(12)[None]
    for step in (0, 3, 6, 11):  # decode steps below, at and past |L|
        with posenc.DecodeSession(slots=12), torch.no_grad():
            got = neg_enc.pairwise(torch.tensor([[step]]), keys)
        with torch.no_grad():
            want = pos_enc.pairwise(torch.tensor([[step]]), keys)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
