"""``adam``: FedAdam (Reddi et al. 2021) on merged task vectors: ``v <- beta2 v + (1 - beta2) m^2``."""

from atm_fl.plugins import ServerOptimizer
from strategies.server_optimizers import adaptive


def _second(v, m2, beta2):
    v.mul_(beta2).add_(m2, alpha=1.0 - beta2)


def _step(m, state, lr, t, beta1, beta2, tau, bias_correction):
    return adaptive.step(m, state, lr, t, beta1=beta1, beta2=beta2, tau=tau, bias_correction=bias_correction,
                         second=_second)


adam = ServerOptimizer("adam", _step, adaptive.init, adaptive.params(0.9, 0.99, 1e-8),
                       "FedAdam: Adam on the merged vector; alpha is the per-coordinate step length.")
