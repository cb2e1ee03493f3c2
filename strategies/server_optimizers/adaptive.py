"""The shared arithmetic of the adaptive server rules (FedAdam, FedYogi, FedAdagrad; Reddi et al. 2021).

``mom <- beta1 * mom + (1 - beta1) * m``; the second moment ``v`` is updated by the rule;
``delta = alpha * mom_hat / (sqrt(v_hat) + tau)``, where the hats undo the zero
initialisation (``/ (1 - beta^t)``) when ``bias-correction`` is on. Per coordinate the
step is then about ``alpha`` in size, so ``alpha`` is a step length in weight units (try
1e-4 to 1e-2), not a multiple of m as with ``none``.
"""

from __future__ import annotations

import torch

from atm_fl.plugins import Param


def init(d: int) -> dict[str, torch.Tensor]:
    return {"first_moment": torch.zeros(d, dtype=torch.float32), "second_moment": torch.zeros(d, dtype=torch.float32)}


def step(m: torch.Tensor, state: dict, lr: float, t: int, *, beta1: float, beta2: float, tau: float,
         bias_correction: bool, second) -> torch.Tensor:
    mom, v = state["first_moment"], state["second_moment"]
    mom.mul_(beta1).add_(m, alpha=1.0 - beta1)
    second(v, m * m, beta2)
    c1 = 1.0 - beta1 ** t if bias_correction and beta1 > 0 else 1.0
    c2 = 1.0 - beta2 ** t if bias_correction and 0 < beta2 < 1 else 1.0
    denom = (v / c2).sqrt_().add_(tau)
    return (mom / c1).div_(denom).mul_(lr)


def params(beta1: float, beta2: float, tau: float) -> tuple[Param, ...]:
    return (
        Param("beta1", beta1, "First-moment (momentum) coefficient.", check=lambda x: 0.0 <= x < 1.0,
              expect="a number in [0, 1)"),
        Param("beta2", beta2, "Second-moment coefficient.", check=lambda x: 0.0 <= x < 1.0,
              expect="a number in [0, 1)"),
        Param("tau", tau, "Added to sqrt(v): the adaptivity floor, in weight units.", check=lambda x: x > 0,
              expect="a number > 0"),
        Param("bias_correction", True, "Divide the moments by (1 - beta^t) (Adam); false: as in Reddi et al."),
    )
