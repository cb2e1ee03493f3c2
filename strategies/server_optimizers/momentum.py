"""``momentum``: server momentum on the merged vector (FedAvgM, Hsu et al. 2019).

``v <- beta * v + m``; ``delta = alpha * v`` (or ``alpha * (beta * v + m)`` with Nesterov).
With ``beta = 0`` this is exactly ``none``.
"""

import torch

from atm_fl.plugins import Param, ServerOptimizer


def _init(d: int) -> dict[str, torch.Tensor]:
    return {"velocity": torch.zeros(d, dtype=torch.float32)}


def _step(m, state, lr, t, beta, nesterov):
    v = state["velocity"]
    v.mul_(beta).add_(m)
    return lr * (v * beta + m) if nesterov else lr * v


momentum = ServerOptimizer(
    "momentum", _step, _init,
    (Param("beta", 0.9, "Momentum coefficient; 0 gives 'none'.", check=lambda x: 0.0 <= x < 1.0,
           expect="a number in [0, 1)"),
     Param("nesterov", False, "Nesterov momentum: step along beta * v + m.")),
    "FedAvgM: v <- beta v + m; base <- base + alpha v.")
