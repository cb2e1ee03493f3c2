"""``none``: ATM's own update, ``base + alpha * m`` (no server state)."""

from atm_fl.plugins import ServerOptimizer


def _step(m, state, lr, t):
    return lr * m


none = ServerOptimizer("none", _step, doc="base + alpha * m: ATM's update (the paper's eq. 7 with scaling alpha).")
