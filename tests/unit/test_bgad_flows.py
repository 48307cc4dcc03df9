"""BGAD flows and positional encoding: closed-form log-likelihoods, Jacobians, encoding values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from adray.detectors.bgad.flows import build_conditional_flow, log_likelihood
from adray.detectors.bgad.positional import condition_rows, positional_encoding_2d


def _global_scale_for(value: float) -> float:
    # FrEIA SOFTPLUS global affine: 0.1 * softplus_{beta=0.5}(g) = value  =>  g = 2 log(exp(5 value) - 1)
    return 2.0 * math.log(math.exp(5.0 * value) - 1.0)


def test_log_likelihood_of_a_known_flow_equals_the_closed_form():
    c, d = 6, 8
    flow = build_conditional_flow(c, cond_dim=d, n_blocks=2, seed=3)
    offsets = []
    with torch.no_grad():
        for k, block in enumerate(flow.module_list):
            block.subnet[2].weight.zero_()  # coupling s = t = 0
            block.subnet[2].bias.zero_()
            block.global_scale.fill_(_global_scale_for(2.0))
            offsets.append(torch.linspace(-0.5, 0.5, c) * (k + 1))
            block.global_offset.copy_(offsets[-1].view(1, c))
    x = torch.randn(5, c, dtype=torch.float32)
    cond = torch.randn(5, d)
    z = x.double()
    for block, b in zip(flow.module_list, offsets):
        rot = block.w_perm.detach().double().view(c, c)
        z = (2.0 * z + b.double()) @ rot.T
    logdet = 2 * c * math.log(2.0)
    expected = (-0.5 * c * math.log(2 * math.pi) - 0.5 * (z**2).sum(1) + logdet) / c
    got = log_likelihood(flow, x, cond)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


def test_log_likelihood_matches_change_of_variables_with_autograd_jacobian():
    c, d = 3, 4
    flow = build_conditional_flow(c, cond_dim=d, n_blocks=3, seed=0).double()
    with torch.no_grad():
        for block in flow.module_list:  # make the coupling non-trivial
            block.subnet[2].weight.normal_(0, 2.0)
    x = torch.randn(4, c, dtype=torch.float64)
    cond = torch.randn(4, d, dtype=torch.float64)
    got = log_likelihood(flow, x, cond)
    for i in range(x.shape[0]):

        def f(row, i=i):
            return flow(row[None], c=[cond[i : i + 1]])[0][0]

        jac = torch.autograd.functional.jacobian(f, x[i])
        z = f(x[i])
        logp = -0.5 * c * math.log(2 * math.pi) - 0.5 * (z**2).sum() + torch.linalg.slogdet(jac)[1]
        assert float(got[i].detach()) == pytest.approx(float(logp.detach()) / c, rel=1e-6, abs=1e-8)


def test_seeded_flow_construction_is_deterministic_and_leaves_global_rngs_alone():
    np.random.seed(123)
    torch.manual_seed(123)
    a = build_conditional_flow(10, n_blocks=2, seed=7)
    after_np, after_torch = np.random.rand(), torch.rand(1)
    np.random.seed(123)
    torch.manual_seed(123)
    b = build_conditional_flow(10, n_blocks=2, seed=7)
    assert np.random.rand() == after_np and torch.equal(torch.rand(1), after_torch)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    rot = a.module_list[0].w_perm.view(10, 10)
    torch.testing.assert_close(rot @ rot.T, torch.eye(10), atol=1e-5, rtol=0)  # soft permutation: a rotation
    assert float(torch.det(rot.double())) == pytest.approx(1.0, abs=1e-6)


def test_positional_encoding_values():
    enc = positional_encoding_2d(128, 5, 7)
    assert enc.shape == (128, 5, 7)
    y, x = 3, 4
    for k in (0, 1, 5, 31):
        w = math.exp(-2 * k * math.log(1e4) / 64)
        assert float(enc[2 * k, y, x]) == pytest.approx(math.sin(x * w), abs=1e-6)
        assert float(enc[2 * k + 1, y, x]) == pytest.approx(math.cos(x * w), abs=1e-6)
        assert float(enc[64 + 2 * k, y, x]) == pytest.approx(math.sin(y * w), abs=1e-6)
        assert float(enc[64 + 2 * k + 1, y, x]) == pytest.approx(math.cos(y * w), abs=1e-6)
    assert torch.equal(enc[:64, 0, :], enc[:64, 4, :])  # x channels do not depend on y
    assert positional_encoding_2d(128, 5, 7) is enc  # computed once per shape and device
    with pytest.raises(ValueError):
        positional_encoding_2d(130, 2, 2)


def test_condition_rows_follow_batch_row_column_order():
    rows = condition_rows(8, 2, 3, batch=2, device="cpu")
    enc = positional_encoding_2d(8, 2, 3)
    assert rows.shape == (12, 8)
    assert torch.equal(rows[4], enc[:, 1, 1])  # item 0, y=1, x=1
    assert torch.equal(rows[6 + 5], enc[:, 1, 2])  # item 1, y=1, x=2
