"""``iso-cts`` through the registry: common and task-specific parts by hand; common=1 is iso-c."""

import pytest
import torch

from atm_fl.config import ConfigError
from atm_fl.plugins import MergeContext, resolve_merge
from atm_fl.task_vector import Layout

CTX = MergeContext(Layout((("w", (4, 4)),)), ("a", "b"), 1, 0)


def diag(*xs):
    return torch.diag(torch.tensor(xs)).reshape(-1)


def test_common_and_task_specific_subspaces_by_hand():
    method, params = resolve_merge("iso-cts", "common=0.5")
    assert params == {"common": 0.5, "conv": "matrix"}
    # sum diag(6, 0, 1, 0.5): common e1, e3; only b has a residual (0.5 on e4);
    # three orthonormal directions share the mean singular value 7.5 / 3.
    got = method([diag(4.0, 0, 1, 0), diag(2.0, 0, 0, 0.5)], CTX, **params)
    assert torch.allclose(got, 2.5 * diag(1.0, 0, 1, 1), atol=1e-6)


def test_no_task_specific_share_is_iso_c():
    g = torch.Generator().manual_seed(0)
    vs = [torch.randn(16, generator=g) for _ in range(2)]
    iso_c, p = resolve_merge("iso-c")
    cts, default = resolve_merge("iso-cts")
    assert default["common"] == 0.8
    want = iso_c(vs, CTX, **p)
    assert torch.allclose(cts(vs, CTX, common=1.0, conv="matrix"), want, atol=1e-6)
    # k = 4, T = 2, common 0.8: s = round((4 - int(3.2)) / 2) = round(0.5) = 0, so the
    # default has no task-specific part on so small a layer either
    assert torch.allclose(cts(vs, CTX, **default), want, atol=1e-6)
    # common 0.5: c = 2, s = 1 per task, and the result changes (the check can fail)
    assert not torch.allclose(cts(vs, CTX, common=0.5, conv="matrix"), want, atol=1e-3)


@pytest.mark.parametrize("text", ["common=1.2", "common=-0.5"])
def test_common_outside_zero_one_is_refused(text):
    with pytest.raises(ConfigError, match=r"common.*\[0, 1\]"):
        resolve_merge("iso-cts", text)
