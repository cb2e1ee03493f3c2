"""``yogi``: v moves towards m^2 by a fixed fraction of m^2 (additive), unlike Adam's multiplicative decay."""

import math

import torch

from atm_fl.plugins import resolve_server_optimizer


def test_yogi_second_moment_by_hand():
    opt, params = resolve_server_optimizer("yogi", "beta1=0,beta2=0.9,bias_correction=false,tau=1e-12")
    state = opt.init(1)
    opt.step(torch.tensor([2.0]), state, 1.0, 1, **params)
    assert math.isclose(state["second_moment"].item(), 0.1 * 4.0, rel_tol=1e-6)    # 0 - 0.1 * sign(0 - 4) * 4
    opt.step(torch.tensor([1.0]), state, 1.0, 2, **params)
    assert math.isclose(state["second_moment"].item(), 0.4 + 0.1 * 1.0, rel_tol=1e-6)  # v < m^2: grows by 0.1 m^2
    opt.step(torch.tensor([0.1]), state, 1.0, 3, **params)
    assert math.isclose(state["second_moment"].item(), 0.5 - 0.1 * 0.01, rel_tol=1e-6)  # v > m^2: shrinks by 0.1 m^2
