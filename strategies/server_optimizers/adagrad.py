"""``adagrad``: FedAdagrad (Reddi et al. 2021): ``v <- v + m^2`` (beta2 unused; beta1 default 0)."""

from atm_fl.plugins import ServerOptimizer
from strategies.server_optimizers import adaptive


def _second(v, m2, beta2):
    v.add_(m2)


def _step(m, state, lr, t, beta1, tau, bias_correction):
    # Adagrad's sum has no zero-initialisation bias in v; beta2 = 0 switches its correction off.
    return adaptive.step(m, state, lr, t, beta1=beta1, beta2=0.0, tau=tau, bias_correction=bias_correction,
                         second=_second)


adagrad = ServerOptimizer("adagrad", _step, adaptive.init,
                          tuple(p for p in adaptive.params(0.0, 0.0, 1e-8) if p.name != "beta2"),
                          "FedAdagrad: accumulated squared merged vectors scale each coordinate's step.")
