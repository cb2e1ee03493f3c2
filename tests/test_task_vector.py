"""Which tensors are merged, and the flatten/unflatten round-trip."""

import torch

from atm_fl.config import parse_run_config
from atm_fl.models import get_family
from atm_fl.task_vector import Layout, apply_update, flatten, mergeable_keys, task_vector, unflatten


def test_efficientnet_merges_trainable_float_params_only():
    backbone = get_family(parse_run_config({})).build_backbone()
    keys = mergeable_keys(backbone)
    state = backbone.state_dict()
    assert keys and all(state[k].is_floating_point() for k in keys)
    assert not any("running_" in k or "num_batches_tracked" in k for k in keys)
    assert not any(k.startswith("net.classifier") for k in keys)
    n = sum(state[k].numel() for k in keys)
    assert n == sum(p.numel() for p in backbone.parameters())
    assert n < sum(v.numel() for v in state.values())  # buffers exist but are left out


def test_flatten_unflatten_round_trip_is_exact():
    gen = torch.Generator().manual_seed(0)
    tensors = {"a": torch.randn(3, 4, generator=gen), "b": torch.randn(5, generator=gen),
               "c": torch.randn((), generator=gen), "d": torch.randn(2, 2, 2, generator=gen)}
    layout = Layout.of(tensors, ["b", "a", "c", "d"])
    flat = flatten(tensors, layout)
    assert flat.shape == (5 + 12 + 1 + 8,)
    back = unflatten(flat, layout)
    for k, v in tensors.items():
        assert torch.equal(back[k], v)


def test_task_vector_and_update():
    base = {"w": torch.ones(2, 2), "steps": torch.tensor(3)}
    tuned = {"w": torch.full((2, 2), 3.0), "steps": torch.tensor(9)}
    tv = task_vector(tuned, base, ["w"])
    assert torch.equal(tv["w"], torch.full((2, 2), 2.0)) and "steps" not in tv
    new = apply_update(base, tv, alpha=0.5)
    assert torch.equal(new["w"], torch.full((2, 2), 2.0)) and new["steps"] is base["steps"]


def test_record_views_read_the_message_bytes_in_place():
    import numpy as np
    from flwr.app import ArrayRecord

    from atm_fl.task_vector import record_views

    gen = torch.Generator().manual_seed(1)
    state = {"w": torch.randn(3, 4, generator=gen), "b": torch.randn(4, generator=gen),
             "scale": torch.tensor(2.5), "steps": torch.tensor(7, dtype=torch.long), "h": torch.randn(2).half()}
    record = ArrayRecord(state)
    views = record_views(record)
    copies = record.to_torch_state_dict()
    assert views.keys() == copies.keys()
    for k in state:
        assert views[k].dtype == copies[k].dtype and views[k].shape == copies[k].shape
        assert torch.equal(views[k], copies[k]) and torch.equal(views[k], state[k])
        # The view's memory lies inside the record's own bytes: nothing was copied.
        buf = np.frombuffer(record[k].data, dtype=np.uint8)
        start = buf.__array_interface__["data"][0]
        assert start <= views[k].data_ptr() < start + buf.nbytes
    layout = Layout.of(state, ["w", "b", "scale"])
    assert torch.equal(flatten({k: views[k] for k in layout.keys}, layout), flatten(state, layout))
