"""``adam``: the first bias-corrected step is alpha * m / (|m| + tau); the moments follow Adam by hand."""

import math

import torch

from atm_fl.plugins import resolve_server_optimizer


def test_first_step_is_sign_like_and_later_steps_follow_adam():
    opt, params = resolve_server_optimizer("adam", "beta1=0.9,beta2=0.99,tau=1e-8")
    m1, m2 = torch.tensor([1e-3, -4e-3, 0.0]), torch.tensor([3e-3, 4e-3, 1e-3])
    state = opt.init(3)
    d1 = opt.step(m1, state, 1e-2, 1, **params)
    torch.testing.assert_close(d1, torch.tensor([1e-2, -1e-2, 0.0]), rtol=1e-4, atol=0)  # tau/|m| = 1e-5
    d2 = opt.step(m2, state, 1e-2, 2, **params)
    for i in range(3):
        mom = 0.9 * 0.1 * m1[i].item() + 0.1 * m2[i].item()
        v = 0.99 * 0.01 * m1[i].item() ** 2 + 0.01 * m2[i].item() ** 2
        want = 1e-2 * (mom / (1 - 0.9 ** 2)) / (math.sqrt(v / (1 - 0.99 ** 2)) + 1e-8)
        assert math.isclose(d2[i].item(), want, rel_tol=1e-5)


def test_without_bias_correction_the_first_step_is_smaller():
    opt, params = resolve_server_optimizer("adam", "bias_correction=false")
    d = opt.step(torch.tensor([1e-3]), opt.init(1), 1.0, 1, **params)
    # mom = 0.1 m, v = 0.01 m^2: 0.1 m / (0.1 |m|) = 1 (the corrections cancel here only for beta2 = 1 - (1-beta1)^2)
    assert math.isclose(d.item(), 0.1 * 1e-3 / (math.sqrt(0.01 * 1e-6) + 1e-8), rel_tol=1e-5)
