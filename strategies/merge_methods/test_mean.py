"""``mean`` and ``sum`` through the registry: exact on hand-checked vectors."""

import torch

from atm_fl.plugins import MergeContext, resolve_merge
from atm_fl.task_vector import Layout

LAYOUT = Layout((("w", (2, 2)), ("b", (2,))))
CTX = MergeContext(LAYOUT, ("a", "b"), 1, 0)
A = torch.tensor([1.0, -2.0, 3.0, 0.0, 4.0, 6.0])
B = torch.tensor([3.0, 2.0, -1.0, 0.5, 0.0, -6.0])


def test_mean_is_the_average():
    method, params = resolve_merge("mean")
    assert params == {}
    assert torch.equal(method([A, B], CTX), torch.tensor([2.0, 0.0, 1.0, 0.25, 2.0, 0.0]))


def test_sum_is_the_sum_and_equals_mean_times_t():
    method, _ = resolve_merge("sum")
    assert torch.equal(method([A, B], CTX), A + B)
    assert torch.equal(method([A, B], CTX), 2 * resolve_merge("mean")[0]([A, B], CTX))


def test_inputs_are_not_modified():
    a, b = A.clone(), B.clone()
    resolve_merge("mean")[0]([a, b], CTX)
    assert torch.equal(a, A) and torch.equal(b, B)
