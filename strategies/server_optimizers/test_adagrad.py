"""``adagrad``: v accumulates m^2; each step is alpha * m / (sqrt(v) + tau)."""

import math

import torch

from atm_fl.plugins import resolve_server_optimizer


def test_adagrad_by_hand():
    opt, params = resolve_server_optimizer("adagrad", "tau=1e-12")
    assert "beta2" not in params and params["beta1"] == 0.0
    state = opt.init(1)
    d1 = opt.step(torch.tensor([3.0]), state, 0.1, 1, **params)
    d2 = opt.step(torch.tensor([4.0]), state, 0.1, 2, **params)
    assert math.isclose(d1.item(), 0.1, rel_tol=1e-6)                 # 3 / sqrt(9)
    assert math.isclose(d2.item(), 0.1 * 4.0 / 5.0, rel_tol=1e-6)     # 4 / sqrt(9 + 16)
    assert math.isclose(state["second_moment"].item(), 25.0, rel_tol=1e-6)
