"""The SVD part of experiments/bench_merge.py: the exact ViT-B-16 layout and a small real run."""

from __future__ import annotations

import json
import logging

from experiments import bench_merge


def test_layout_is_open_clips_vit_b16_visual_tower():
    import open_clip

    logging.getLogger().setLevel(logging.ERROR)          # "no pretrained weights loaded" is expected
    model = open_clip.create_model("ViT-B-16", pretrained=None)
    real = [(n, tuple(p.shape)) for n, p in model.visual.named_parameters()]
    assert bench_merge.vit_b16_layout(12) == real
    assert bench_merge._numel(real) == bench_merge.VIT_B16_VISUAL
    cut = bench_merge.vit_b16_layout(1)
    assert [n for n, _ in cut if "resblocks" in n] == [n for n, _ in real if n.startswith("transformer.resblocks.0.")]


def test_small_run_compares_fast_and_direct_and_keeps_the_other_section(tmp_path):
    # The stem and tail only (conv1 as a 768 x 768 matrix and the 768 x 512 projection).
    out, md = tmp_path / "merge.json", tmp_path / "merge.md"
    bench_merge.main(["--methods", "mean", "--d", "1000", "--tasks", "2", "--repeat", "1", "--out", str(out)])
    elementwise = json.loads(out.read_text())["rows"]
    bench_merge.main(["--methods", "iso_c", "--tasks", "2", "--blocks", "0", "--repeat", "1",
                      "--inputs", "decaying", "--out", str(out), "--out", str(md)])
    doc = json.loads(out.read_text())
    assert doc["rows"] == elementwise                           # element-wise section kept
    fast, ref = doc["svd"]["decaying"]["rows"]
    assert (fast["impl"], ref["impl"], fast["matrices"]) == ("fast", "ref", 2)
    assert fast["rel_err_vs_ref"] < 1e-5 and fast["speedup_vs_ref"] > 0
    assert "SVD-based merges" in md.read_text()
