"""``none``: base + alpha * m, no state."""

import torch

from atm_fl.plugins import resolve_server_optimizer


def test_none_is_alpha_times_m():
    opt, params = resolve_server_optimizer("none")
    m = torch.tensor([1.0, -2.0, 0.5])
    state = opt.init(3)
    assert state == {} and params == {}
    assert torch.equal(opt.step(m, state, 0.5, 1, **params), torch.tensor([0.5, -1.0, 0.25]))
