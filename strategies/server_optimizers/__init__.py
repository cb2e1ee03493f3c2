"""Server update rules (``server-optimizer``), one module each, registered as entry points in pyproject.toml.

The server treats the round's merged task vector m as a pseudo-gradient step (it points
the way the tasks moved, so it is *added*) and the rule turns it into the change of the
base: ``base <- base + step(m)``. ``none`` is ATM's ``base + alpha * m``; the others are
the federated-optimisation rules of Hsu et al. 2019 (FedAvgM) and Reddi et al. 2021
(FedAdam, FedYogi, FedAdagrad), applied to merged task vectors instead of averaged
weights. ``alpha`` (after ``alpha-schedule``) is the server learning rate of every rule.
"""
