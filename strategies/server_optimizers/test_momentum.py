"""``momentum``: FedAvgM by hand; beta = 0 is exactly ``none``."""

import pytest
import torch

from atm_fl.config import ConfigError
from atm_fl.plugins import resolve_server_optimizer


def run(name, text, ms, lr=0.5):
    opt, params = resolve_server_optimizer(name, text)
    state = opt.init(ms[0].numel())
    return [opt.step(m, state, lr, t, **params) for t, m in enumerate(ms, start=1)]


def test_momentum_with_beta_zero_is_none_bit_for_bit():
    gen = torch.Generator().manual_seed(0)
    ms = [torch.randn(1000, generator=gen) for _ in range(4)]
    for a, b in zip(run("momentum", "beta=0", ms), run("none", "", ms)):
        assert torch.equal(a, b)


def test_momentum_by_hand():
    m1, m2 = torch.tensor([1.0, -1.0]), torch.tensor([2.0, 0.0])
    d1, d2 = run("momentum", "beta=0.5", [m1, m2], lr=1.0)
    assert torch.equal(d1, m1)                                  # v1 = m1
    assert torch.equal(d2, torch.tensor([2.5, -0.5]))           # v2 = 0.5 v1 + m2
    n1, n2 = run("momentum", "beta=0.5,nesterov=true", [m1, m2], lr=1.0)
    assert torch.equal(n1, torch.tensor([1.5, -1.5]))           # 0.5 v1 + m1
    assert torch.equal(n2, torch.tensor([3.25, -0.25]))         # 0.5 v2 + m2


def test_beta_one_is_refused():
    with pytest.raises(ConfigError, match="beta"):
        resolve_server_optimizer("momentum", "beta=1")
