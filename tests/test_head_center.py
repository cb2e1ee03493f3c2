"""head-center: a prototype head's center, frozen at the pretrained features' mean or re-estimated.

Why it matters (docs/merging.md, "The head's center"): the head scores cos(features - center,
prototype). When the backbone moves, the features' mean moves away from a frozen center, and
that common offset pulls every example towards the same class.
"""

import torch

from atm_fl.config import parse_run_config
from atm_fl.models.base import PrototypeHead, extract_features
from atm_fl.runtime import get_task_runtime, release_runtimes
from tests.conftest import small_config


def _perturbed(rt, scale=0.2):
    gen = torch.Generator().manual_seed(0)
    return {k: (v + scale * v.abs().mean() * torch.randn(v.shape, generator=gen)) if v.is_floating_point() else v
            for k, v in rt.pretrained.items()}


def _features_mean(rt, state):
    rt.load(state)
    with torch.no_grad():
        return extract_features(rt.backbone, rt._center_data(), 32).mean(0)


def test_a_common_feature_shift_is_cancelled_only_by_recentring():
    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(60, 16, generator=gen)
    labels = torch.arange(60) % 3
    center = feats.mean(0)
    protos = torch.stack([torch.nn.functional.normalize(feats[labels == c] - center, dim=-1).mean(0)
                          for c in range(3)])
    head = PrototypeHead(protos, center)
    shifted = feats + 20.0 * torch.nn.functional.normalize(protos[0], dim=0)  # every feature moved the same way
    frozen = head(shifted).argmax(1)
    assert (frozen == 0).float().mean() > 0.9  # a frozen center sends nearly everything to class 0
    head.center.copy_(shifted.mean(0))
    torch.testing.assert_close(head(shifted), PrototypeHead(protos, center)(feats))


def test_site_center_is_the_current_features_mean(tmp_path):
    release_runtimes()
    rt = get_task_runtime(parse_run_config(small_config(tmp_path, tasks="mnist", **{"head-center": "site"})), "mnist")
    pretrained_center = rt.head.center.clone()
    moved = _perturbed(rt)
    rt.evaluate(moved, "test")
    expected = _features_mean(rt, moved)
    torch.testing.assert_close(rt.head.center, expected)
    assert (expected - pretrained_center).norm() > 1e-3 * pretrained_center.norm()
    # Fine-tuning from a base re-centres on that base first.
    rt.train_round(dict(rt.pretrained), 1)
    torch.testing.assert_close(rt.head.center, pretrained_center, rtol=1e-5, atol=1e-6)


def test_pretrained_center_stays_frozen_and_the_cached_head_is_never_touched(tmp_path):
    release_runtimes()
    frozen_rt = get_task_runtime(parse_run_config(small_config(tmp_path, tasks="mnist")), "mnist")
    frozen_center = frozen_rt.head.center.clone()
    frozen_head = frozen_rt.head
    frozen_rt.evaluate(_perturbed(frozen_rt), "test")
    torch.testing.assert_close(frozen_rt.head.center, frozen_center, rtol=0, atol=0)

    site_rt = get_task_runtime(parse_run_config(small_config(tmp_path, tasks="mnist", **{"head-center": "site"})),
                               "mnist")
    assert site_rt.head is not frozen_head
    site_rt.evaluate(_perturbed(site_rt), "test")
    assert (site_rt.head.center - frozen_center).norm() > 0
    torch.testing.assert_close(frozen_head.center, frozen_center, rtol=0, atol=0)
    release_runtimes()


def test_scoring_then_fine_tuning_the_same_base_estimates_the_center_once(tmp_path, monkeypatch):
    release_runtimes()
    rt = get_task_runtime(parse_run_config(small_config(tmp_path, tasks="mnist", **{"head-center": "site"})), "mnist")
    calls = []
    real = rt.recenter
    monkeypatch.setattr(rt, "recenter", lambda *a, **k: (calls.append(1), real(*a, **k)))
    base = _perturbed(rt)
    rt.evaluate(base, "test")
    rt.train_round(base, 1)  # evaluate-in-train: the same object, already centred on
    assert len(calls) == 1
    rt.evaluate(base, "test")  # after fine-tuning the backbone moved: centre again
    assert len(calls) == 2
    torch.testing.assert_close(rt.head.center, _features_mean(rt, base))
    release_runtimes()


def test_the_center_comes_from_a_fixed_subset_of_the_head_examples(tmp_path):
    release_runtimes()
    rt = get_task_runtime(parse_run_config(small_config(tmp_path, tasks="mnist", **{
        "head-center": "site", "head-center-examples": 20})), "mnist")
    subset = rt._center_data()
    assert subset.num_examples == 20 and rt.train.num_examples == 48
    assert set(subset.labels.tolist()) <= set(rt.train.labels.tolist())
    # Indexed out of the encoded training split: the same tensors as encoding those rows afresh.
    from atm_fl.models.base import subset_indices
    from atm_fl.runtime import _SALT
    idx = subset_indices(48, 20, seed=rt.cfg.seed * 1000 + _SALT["center"])
    fresh = rt._make(rt._rows("train").select(idx), "check")
    assert all(torch.equal(subset[k], fresh[k]) for k in fresh)
    assert rt._center_data() is subset
    c0 = rt.head.center.clone()
    moved = _perturbed(rt)
    rt.evaluate(moved, "test")
    # The drift of the subset's mean moves the head's own center (not the subset's mean itself).
    drift = _features_mean(rt, moved) - _features_mean(rt, rt.pretrained)
    torch.testing.assert_close(rt.head.center, c0 + drift)
    assert (drift.norm() > 1e-3 * c0.norm()) and (_features_mean(rt, rt.pretrained) - c0).norm() > 1e-4
    rt.evaluate(rt.pretrained, "test")  # no drift: the head exactly as built
    torch.testing.assert_close(rt.head.center, c0, rtol=1e-6, atol=1e-6)
    release_runtimes()
