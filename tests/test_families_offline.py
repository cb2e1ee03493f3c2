"""The open_clip and transformers families, hub task specs and a site's local data, all offline.

Every run goes through the real ServerApp (``run_atm``), strategy and ClientApp via
the in-process grid; models are tiny random configs (CLIP from a JSON config, BERT
from a directory the test writes) plus the real offline MiniLM. Nothing is downloaded.
"""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from atm_fl.config import ConfigError, parse_run_config
from atm_fl.models import get_family
from strategies.server_app import run_atm
from atm_fl.task_vector import mergeable_keys
from atm_fl.tasks import TaskSplits, get_task, load_task
from clients.task_client import app as client_app
from tests.conftest import PLAIN_CLIENT
from tests.inprocess import InProcessGrid

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
CAPS = {"num-server-rounds": 1, "max-train-examples": 32, "max-eval-examples": 32, "batch-size": 16, "lr": 1e-3,
        "run-name": "run", "discovery-timeout": 5.0, **PLAIN_CLIENT}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "atm-tiny-clip.json"
    path.write_text(json.dumps(TINY_CLIP))
    return str(path)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A 2-layer random BERT with the MiniLM (bert-base-uncased) tokenizer, saved like a hub checkpoint."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from atm_fl.models.hf_text import resolve_model_path

    out = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    tok.save_pretrained(out)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(out)
    return str(out)


def run(tmp_path, node_configs=None, **overrides):
    raw = {"output-dir": str(tmp_path), **CAPS, **overrides}
    cfg = parse_run_config(raw)
    grid = InProcessGrid(client_app, raw, num_nodes=None if node_configs else len(cfg.task_list),
                         node_configs=node_configs)
    rec = run_atm(grid, cfg)
    return rec, cfg, tmp_path / raw["run-name"]


def check_finished(rec, out, cfg):
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "finished" and [r["round"] for r in res["rounds"]] == [0, 1]
    for task in cfg.task_list:
        assert 0.0 <= rec.rounds[1].eval[task]["accuracy"] <= 1.0
    backbone = get_family(cfg).build_backbone()
    backbone.load_state_dict(load_file(str(out / "model.safetensors")), strict=True)
    return res, backbone


# ----------------------------------------------------------------------------- open_clip
def test_open_clip_tiny_zero_shot_heads_one_round(tmp_path, identity, tiny_clip):
    import open_clip

    from atm_fl.models import clip

    rec, cfg, out = run(tmp_path, **{"model-family": "open-clip", "model-name": tiny_clip, "model-pretrained": "none",
                                     "tasks": "mnist,optdigits"})
    res, backbone = check_finished(rec, out, cfg)
    # Only the image tower is merged, all of it.
    keys = mergeable_keys(backbone)
    assert keys and all(k.startswith("visual.") for k in keys)
    assert res["merged_parameters"] == sum(p.numel() for p in backbone.visual.parameters())
    assert rec.rounds[1].eval != rec.rounds[0].eval
    # Each task's head is its zero-shot classifier from the (seeded, random) model's own text tower.
    model = clip.create_clip("atm-tiny-clip", None)
    tokenizer = open_clip.get_tokenizer("atm-tiny-clip")
    for task in ("mnist", "optdigits"):
        spec = get_task(task)
        weight, scale = clip._HEADS[("atm-tiny-clip", None, spec.classes(), spec.templates)]
        with torch.no_grad():
            rows = []
            for c in spec.classes():
                e = model.encode_text(tokenizer([t.format(c) for t in spec.templates]))
                rows.append(torch.nn.functional.normalize(torch.nn.functional.normalize(e, dim=-1).mean(0), dim=0))
        torch.testing.assert_close(weight, torch.stack(rows), atol=1e-5, rtol=1e-5)
        assert scale == pytest.approx(float(model.logit_scale.detach().exp()))


def test_open_clip_encoding_is_open_clips_own_preprocessing(tiny_clip):
    import open_clip

    from atm_fl.models.clip import resolve_model

    cfg = parse_run_config({"model-family": "open-clip", "model-name": tiny_clip, "model-pretrained": "none",
                            "tasks": "optdigits"})
    fam = get_family(cfg)
    rgb = Image.fromarray((np.arange(40 * 50 * 3) % 255).astype(np.uint8).reshape(40, 50, 3))
    gray = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    split = datasets.Dataset.from_dict({"image": [rgb, Image.fromarray(gray)], "label": [0, 1]},
                                       features=datasets.Features({"image": datasets.Image(),
                                                                   "label": datasets.Value("int64")}))
    arrays = datasets.Dataset.from_dict({"image": [gray], "label": [1]}, features=datasets.Features(
        {"image": datasets.Array2D((28, 28), "uint8"), "label": datasets.Value("int64")}))
    task = TaskSplits("x", ("a", "b"), split, split, split)
    enc = fam.encode(split, task)
    assert enc["pixel_values"].dtype == torch.uint8 and enc["pixel_values"].shape == (2, 3, 32, 32)
    # The array (Array2D) and PIL forms of the same grayscale image encode identically.
    assert torch.equal(fam.encode(arrays, task)["pixel_values"][0], enc["pixel_values"][1])
    _, _, preprocess = open_clip.create_model_and_transforms(resolve_model(tiny_clip, "none")[0], pretrained=None)
    backbone = fam.build_backbone()
    for i, img in enumerate([rgb, Image.fromarray(gray)]):
        ours = (enc["pixel_values"][i:i + 1].float() / 255 - backbone.mean) / backbone.std
        torch.testing.assert_close(ours[0], preprocess(img), atol=1e-6, rtol=0)


def test_open_clip_paper_model_settings_resolve_without_download():
    from atm_fl.models.clip import _quick_gelu, preprocess_for, resolve_model, split_transform

    cfg = parse_run_config({"model-family": "open-clip", "tasks": "mnist"})
    name, tag = resolve_model(cfg.model_name, cfg.model_pretrained)
    assert (name, tag) == ("ViT-B-16", "openai") and _quick_gelu(name, tag)
    _, (mean, std) = split_transform(preprocess_for(name, tag))
    assert mean[0] == pytest.approx(0.4815, abs=1e-4) and std[0] == pytest.approx(0.2686, abs=1e-4)
    assert resolve_model("ViT-B-32", "none") == ("ViT-B-32", None)


# ----------------------------------------------------------------------------- transformers
def test_tiny_bert_on_offline_text_tasks_merges_encoder_only(tmp_path, identity, tiny_bert):
    rec, cfg, out = run(tmp_path, **{"model-family": "transformers", "model-name": tiny_bert,
                                     "tasks": "rt-sentiment,debate-party", "max-seq-length": 32})
    res, backbone = check_finished(rec, out, cfg)
    keys = mergeable_keys(backbone)
    assert all(k.startswith("encoder.") for k in keys)
    assert not any(".pooler." in k for k in keys)  # unused by mean pooling
    assert any("word_embeddings" in k for k in keys)  # hub checkpoints fine-tune their embeddings
    assert res["merged_parameters"] == sum(p.numel() for n, p in backbone.named_parameters() if n in keys)


def test_minilm_one_round(tmp_path, identity):
    rec, cfg, out = run(tmp_path, **{"model-family": "transformers", "model-name": "minilm",
                                     "tasks": "debate-party", "max-seq-length": 24,
                                     "max-train-examples": 16, "max-eval-examples": 16})
    res, backbone = check_finished(rec, out, cfg)
    assert not any("embeddings" in k for k in mergeable_keys(backbone))  # frozen for CPU speed (offline model)
    assert res["model"]["model"] == "sentence-transformers/all-MiniLM-L6-v2"


# ----------------------------------------------------------------------------- a site's local data
def write_image_folder(root, classes, per_class=(4, 2), size=16):
    rng = np.random.default_rng(0)
    for split, n in zip(("train", "test"), per_class):
        for c, name in enumerate(classes):
            if n:
                (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8) // (c + 1)
                Image.fromarray(img).save(root / split / name / f"{i}.png")
    return root


EUROSAT_FOLDERS = ("AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
                   "PermanentCrop", "Residential", "River", "SeaLake")


def test_local_image_folder_serves_a_hub_task_from_node_config(tmp_path, identity, tiny_clip):
    from atm_fl.models import clip

    data = write_image_folder(tmp_path / "eurosat", EUROSAT_FOLDERS)
    nodes = [{"task": "eurosat", "data-dir": str(data)}, {"task": "optdigits"}]
    rec, cfg, out = run(tmp_path, node_configs=nodes, **{
        "model-family": "open-clip", "model-name": tiny_clip, "model-pretrained": "none", "tasks": "eurosat,optdigits"})
    check_finished(rec, out, cfg)
    assert rec.rounds[1].eval["eurosat"]["num-examples"] == 20  # the site's 10 classes x 2 test images
    # The zero-shot head was built from the site's class names (its folder names).
    assert ("atm-tiny-clip", None, EUROSAT_FOLDERS, get_task("eurosat").templates) in clip._HEADS


def test_local_csv_sentence_pairs_serve_glue_mrpc(tmp_path, identity, tiny_bert):
    import pandas as pd

    data = tmp_path / "mrpc"
    data.mkdir()
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "away"]
    for split, n in (("train", 40), ("test", 12)):
        rows = []
        for i in range(n):
            a = " ".join(rng.choice(words, 6))
            same = i % 2 == 0
            rows.append({"text": a, "text_pair": a if same else " ".join(rng.choice(words, 6)),
                         "label": "equivalent" if same else "not equivalent"})
        pd.DataFrame(rows).to_csv(data / f"{split}.csv", index=False)
    (data / "classes.txt").write_text("not equivalent\nequivalent\n")
    rec, cfg, out = run(tmp_path, node_configs=[{"task": "mrpc", "data-dir": str(data)}], **{
        "model-family": "transformers", "model-name": tiny_bert, "tasks": "mrpc", "max-seq-length": 32})
    check_finished(rec, out, cfg)
    assert "f1" in rec.rounds[1].eval["mrpc"]  # MRPC reports F1 besides accuracy
    splits = load_task("mrpc", data_dir=str(data))
    assert splits.classes == ("not equivalent", "equivalent") and "text_pair" in splits.train.column_names
    enc = get_family(cfg).encode(splits.test.select(range(2)), splits)
    assert "token_type_ids" in enc and int(enc["token_type_ids"].max()) == 1  # BERT sees the pair's segments


def test_local_csv_of_image_paths_and_parquet_text(tmp_path):
    from atm_fl.tasks.local import load_local

    img_dir = tmp_path / "imgs"
    write_image_folder(img_dir / "files", ("a", "b"), per_class=(2, 1))
    for split in ("train", "test"):
        paths = sorted((img_dir / "files" / split).rglob("*.png"))
        rows = ",".join(["image", "label"]) + "\n" + "".join(
            f"{p.relative_to(img_dir)},{p.parent.name}\n" for p in paths)
        (img_dir / f"{split}.csv").write_text(rows)
    dd = load_local(str(img_dir), "image")
    assert dd["train"].features["label"].names == ["a", "b"] and isinstance(dd["train"][0]["image"], Image.Image)

    import pandas as pd

    txt = tmp_path / "txt"
    txt.mkdir()
    for split in ("train", "validation", "test"):
        pd.DataFrame({"text": ["x", "y", "z"], "label": [0, 1, 0]}).to_parquet(txt / f"{split}.parquet")
    dd = load_local(str(txt), "text")
    assert set(dd) == {"train", "validation", "test"} and dd["train"].features["label"].dtype == "int64"
    # Integer labels without names take the task's built-in names.
    assert load_task("rt-sentiment", data_dir=str(txt)).classes == ("negative", "positive")


@pytest.mark.parametrize("layout, task, words", [
    ("missing", "eurosat", ["does not exist", "data-dir"]),
    ("empty", "eurosat", ["no train/test data", "<dir>/train/<class>", "docs/data.md"]),
    ("train-only", "eurosat", ["no test split", "<dir>/test/<class>"]),
    ("three-classes", "eurosat", ["has 3 classes", "task has 10", "full class"]),
    ("csv-no-label", "rt-sentiment", ["missing column(s) label", "'text'"]),
    ("int-labels-hub", "eurosat", ["integer labels", "class names"]),
])
def test_local_data_errors_name_the_directory_and_the_fix(tmp_path, layout, task, words):
    root = tmp_path / "site"
    if layout == "empty":
        root.mkdir()
    elif layout == "train-only":
        write_image_folder(root, ("a", "b"), per_class=(1, 0))
    elif layout == "three-classes":
        write_image_folder(root, ("a", "b", "c"), per_class=(2, 1))
    elif layout == "csv-no-label":
        root.mkdir()
        for split in ("train", "test"):
            (root / f"{split}.csv").write_text("text,y\nhello,0\nbye,1\n")
    elif layout == "int-labels-hub":
        write_image_folder(root / "files", ("a",), per_class=(2, 2))
        for split in ("train", "test"):
            paths = sorted((root / "files" / split).rglob("*.png"))
            (root / f"{split}.csv").write_text("image,label\n" + "".join(f"{p},{i}\n" for i, p in enumerate(paths)))
    with pytest.raises(ValueError) as err:
        load_task(task, data_dir=str(root))
    assert str(root) in str(err.value)
    for w in words:
        assert w in str(err.value)


# ----------------------------------------------------------------------------- hub task specs (no download)
def test_hub_tasks_are_registered_offline_false_with_class_counts():
    expected = {"cifar100": 100, "dtd": 47, "eurosat": 10, "gtsrb": 43, "resisc45": 45, "svhn": 10, "sun397": 397,
                "cars": 196, "cola": 2, "sst2": 2, "mrpc": 2, "qqp": 2, "mnli": 3, "qnli": 2, "rte": 2}
    for name, n in expected.items():
        spec = get_task(name)
        assert spec.offline is False and spec.num_classes == n and spec.templates
        assert all("{}" in t for t in spec.templates)
    assert get_task("cola").metrics == ("accuracy", "mcc") and get_task("qqp").metrics == ("accuracy", "f1")
    assert get_task("mnist").offline  # the paper's MNIST is the offline task


def test_hub_class_names_follow_the_data_labels():
    from atm_fl.tasks.hub_vision import EUROSAT, GTSRB, SUN397, class_names

    # Numbered classes map to the task's words by number, whatever order the data lists them in.
    numbered = datasets.ClassLabel(names=[str(i) for i in [0, 1, 10, 11, 2] + list(range(3, 10)) + list(range(12, 43))])
    names = class_names(GTSRB, numbered)
    assert names[0] == "speed limit 20 km/h" and names[2] == GTSRB.numbered_names[10] == "no overtaking by trucks"
    assert class_names(EUROSAT, datasets.ClassLabel(names=list(EUROSAT_FOLDERS)))[9] == "sea or lake"
    sun = datasets.ClassLabel(names=["/a/abbey", "/a/apartment_building/outdoor"] + [f"c{i}" for i in range(395)])
    assert class_names(SUN397, sun)[:2] == ("abbey", "apartment building outdoor")
    with pytest.raises(ValueError, match="expected 10"):
        class_names(EUROSAT, datasets.ClassLabel(names=["a", "b"]))


# ----------------------------------------------------------------------------- valFT and precision
def test_valft_fine_tunes_on_the_validation_split(tmp_path, identity):
    from atm_fl.runtime import get_task_runtime

    rec, cfg, _ = run(tmp_path, **{"model-family": "tiny-mlp", "tasks": "optdigits", "train-split": "val",
                                   "max-train-examples": 0, "max-eval-examples": 0, "image-size": 32})
    splits = load_task("optdigits", seed=cfg.seed)
    assert rec.rounds[1].train["optdigits"]["num-examples"] == len(splits.val) == 382  # 10% of 3,823
    runtime = get_task_runtime(cfg, "optdigits")  # the client's cached working set
    assert torch.equal(runtime.train["labels"], runtime.val["labels"])  # both are the whole val split
    assert not torch.equal(runtime.train["labels"][:50], torch.as_tensor(splits.train["label"][:50]))


def test_precision_key_and_cpu_autocast_is_a_no_op():
    import contextlib

    from atm_fl.train import FinetuneSettings, autocast

    cfg = parse_run_config({"precision": "bf16"})
    assert FinetuneSettings.from_config(cfg).precision == "bf16"
    assert isinstance(autocast("cpu", "fp16"), contextlib.nullcontext)
    with pytest.raises(ConfigError, match="fp32, bf16, fp16"):
        parse_run_config({"precision": "fp8"})
