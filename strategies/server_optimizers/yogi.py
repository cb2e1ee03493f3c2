"""``yogi``: FedYogi (Reddi et al. 2021): ``v <- v - (1 - beta2) m^2 sign(v - m^2)``, slower to grow than Adam's."""

import torch

from atm_fl.plugins import ServerOptimizer
from strategies.server_optimizers import adaptive


def _second(v, m2, beta2):
    v.sub_(torch.sign(v - m2).mul_(m2), alpha=1.0 - beta2)


def _step(m, state, lr, t, beta1, beta2, tau, bias_correction):
    return adaptive.step(m, state, lr, t, beta1=beta1, beta2=beta2, tau=tau, bias_correction=bias_correction,
                         second=_second)


yogi = ServerOptimizer("yogi", _step, adaptive.init, adaptive.params(0.9, 0.99, 1e-8),
                       "FedYogi: Yogi's additive second moment on the merged vector.")
