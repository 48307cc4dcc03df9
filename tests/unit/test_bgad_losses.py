"""BGAD losses on hand-made inputs: boundary, hinges, focal weights, empty-set guards, lr schedule."""

from __future__ import annotations

import math

import pytest
import torch

from adray.detectors.bgad.config import BgadTrainConfig
from adray.detectors.bgad.fit import learning_rate
from adray.detectors.bgad.losses import (
    LossConfig,
    anomalous_focal_weights,
    ml_loss,
    normal_boundary,
    normal_focal_weights,
    pull_loss,
    push_loss,
    push_pull_chunk_loss,
)


def test_normal_boundary_is_the_lower_tail_quantile_over_the_normaliser():
    ll = torch.arange(200, 0, -1, dtype=torch.float32) * -0.1  # -20.0 .. -0.1, shuffled order irrelevant
    ll = ll[torch.randperm(200)]
    b = normal_boundary(ll, beta=0.01, normalizer=10.0)
    assert float(b) == pytest.approx(-1.98)  # sorted ascending, index floor(0.01 * 200) = 2 -> -19.8 / 10
    assert normal_boundary(torch.tensor([-5.0]), 0.01, 10.0) == pytest.approx(-0.5)
    assert normal_boundary(torch.zeros(0), 0.01, 10.0) is None


def test_pull_and_push_hinges_on_hand_made_inputs():
    s_normal = torch.tensor([-1.5, -1.0, -0.8, -0.2])
    b_n = torch.tensor(-0.9)
    assert float(pull_loss(s_normal, b_n)) == pytest.approx(((-0.9 + 1.5) + (-0.9 + 1.0)) / 2)
    s_anom = torch.tensor([-2.0, -0.95, -0.5])
    b_a = b_n - 0.1  # -1.0
    assert float(push_loss(s_anom, b_a)) == pytest.approx(((-0.95 + 1.0) + (-0.5 + 1.0)) / 2)
    w = torch.tensor([1.0, 2.0, 3.0])
    assert float(push_loss(s_anom, b_a, w)) == pytest.approx((2 * 0.05 + 3 * 0.5) / 2)


def test_ml_loss_is_softplus_of_negative_log_likelihood():
    ll = torch.tensor([-1.0, 0.5, -3.0])
    assert float(ml_loss(ll)) == pytest.approx(float(-torch.nn.functional.logsigmoid(ll).mean()))
    w = torch.tensor([1.0, 0.0, 2.0])
    expected = (math.log1p(math.exp(1.0)) + 2 * math.log1p(math.exp(3.0))) / 3
    assert float(ml_loss(ll, w)) == pytest.approx(expected)


def test_focal_weights():
    s = torch.tensor([-0.1, -0.5, -2.0])
    wn = normal_focal_weights(s)
    assert float(wn[0]) == 1.0
    assert float(wn[1]) == pytest.approx(11.7 * math.sqrt(1 - math.exp(-0.5)) * 0.5, rel=1e-6)
    assert float(wn[2]) == pytest.approx(11.7 * math.sqrt(1 - math.exp(-2.0)) * 2.0, rel=1e-6)
    assert float(normal_focal_weights(torch.tensor([-0.2]))) == pytest.approx(1.0, abs=0.01)  # continuous
    wa = anomalous_focal_weights(torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.3]))
    assert float(wa[0]) == 1.0 and float(wa[1]) == 1.0
    assert float(wa[2]) == pytest.approx(0.53 * (1 + math.exp(-0.5)) ** 2 / 0.5, rel=1e-6)
    assert torch.isfinite(wa).all() and float(wa[3]) > float(wa[2])  # floored |s| at s = 0
    assert float(wa[4]) == pytest.approx(0.53 * (1 + math.exp(0.3)) ** 2 / 0.3, rel=1e-6)
    assert not normal_focal_weights(torch.tensor([-1.0], requires_grad=True)).requires_grad


@pytest.mark.parametrize(
    "labels",
    [
        [False] * 6,  # no anomalies: ML only
        [True] * 6,  # no normals: no boundary
        [False, False, False, False, True, True],
    ],
)
def test_chunk_loss_never_nan_and_gradients_stay_finite(labels):
    ll = torch.tensor([-9.0, -10.0, -12.0, -8.0, -3.0, -30.0], requires_grad=True)
    out = push_pull_chunk_loss(ll, torch.tensor(labels), LossConfig())
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert ll.grad is not None and torch.isfinite(ll.grad).all()


def test_empty_violator_sets_give_attached_zeros():
    s = torch.tensor([-0.1, -0.2], requires_grad=True)
    pull = pull_loss(s, torch.tensor(-1.0))  # nobody below the boundary
    push = push_loss(s, torch.tensor(0.5))  # nobody above the anomaly boundary
    assert float(pull.detach()) == 0.0 and float(push.detach()) == 0.0
    (pull + push).backward()
    assert torch.equal(s.grad, torch.zeros(2))
    assert float(ml_loss(torch.zeros(0, requires_grad=True)).detach()) == 0.0


def test_chunk_loss_composes_ml_pull_and_push():
    cfg = LossConfig(focal_weighting=False)
    ll = torch.tensor([-9.0, -10.0, -12.0, -8.0, -3.0, -30.0])
    labels = torch.tensor([False, False, False, False, True, True])
    out = push_pull_chunk_loss(ll, labels, cfg)
    b_n = -1.2  # normals / 10 = [-0.9, -1.0, -1.2, -0.8], index floor(0.01 * 4) = 0
    ml = float(ml_loss(ll[:4]))
    pull = 0.0  # only -1.2 <= b_n, contributes 0
    push = (-0.3 - (b_n - 0.1)) / 1  # -0.3 >= -1.3 violates; -3.0 does not
    assert out.boundary == pytest.approx(b_n)
    assert float(out.loss) == pytest.approx(ml + pull + push, rel=1e-6)


def test_learning_rate_warm_up_and_cosine():
    cfg = BgadTrainConfig()
    assert learning_rate(cfg, 0, 0.0) == pytest.approx(2e-5)
    peak = learning_rate(cfg, 2, 0.0)
    assert peak == pytest.approx(2e-7 + (2e-4 - 2e-7) * (1 + math.cos(math.pi * 2 / 25)) / 2)
    assert learning_rate(cfg, 1, 0.999999) == pytest.approx(peak, rel=1e-4)  # warm-up ends at the cosine
    warm = [learning_rate(cfg, e, p) for e in (0, 1) for p in (0.0, 0.25, 0.5, 0.75)]
    assert warm == sorted(warm) and max(warm) <= peak  # no saw-tooth, no overshoot (official I=2 bug)
    late = [learning_rate(cfg, e, 0.0) for e in range(2, 25)]
    assert late == sorted(late, reverse=True) and late[-1] > 2e-7
