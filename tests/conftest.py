import logging

import pytest

from tests.inprocess import flower_identity

logging.getLogger("atm_fl").setLevel(logging.INFO)


@pytest.fixture
def identity():
    """Flower Message construction outside a runtime needs a task identity."""
    with flower_identity():
        yield


# The tests' own client settings: one epoch per round, a fresh optimiser and the paper's step
# (alpha 1), so that what they pin (determinism, resume, Theorem 3.1, example counts) does not
# move with the embedded default.
PLAIN_CLIENT = {"alpha": 1.0, "local-epochs": 1.0, "client-optimizer-state": "fresh", "client-moment-warmup": 0,
                "client-lr-warmup": 0, "head-center": "pretrained"}
# The same as inline run-config text for `atm-fl run --run-config` (ends with a space).
PLAIN_CLIENT_INLINE = "".join(f"{k}={v!r} " for k, v in PLAIN_CLIENT.items())


def small_config(tmp_path, **overrides):
    """A run-config for fast in-process runs on real data with the tiny test backbone."""
    raw = {"model-family": "tiny-mlp", "tasks": "mnist,optdigits,ising", "num-server-rounds": 2,
           "max-train-examples": 48, "max-eval-examples": 64, "batch-size": 16, "lr": 0.01,
           "output-dir": str(tmp_path), "run-name": "run", "discovery-timeout": 5.0,
           **PLAIN_CLIENT}
    raw.update(overrides)
    return raw
