"""Client-side upload compression: encodings, checked decoding, and merges through the real strategy."""

import json
import math

import pytest
import torch

from atm_fl.compression import decode_sparse, encode_upload, sparsify
from atm_fl.config import parse_run_config
from atm_fl.merge import merge_ties, ties_trim
from strategies.server_app import run_atm
from atm_fl.task_vector import Layout, flatten
from clients.task_client import app as client_app
from tests.conftest import small_config
from tests.inprocess import InProcessGrid

LAYOUT = Layout((("a", (3, 4)), ("b", (5,))))


def random_tv(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) for k, s in LAYOUT.entries}


def test_topk_keeps_the_largest_magnitudes_with_sorted_int32_indices():
    tv = random_tv()
    arrays, enc = encode_upload(tv, LAYOUT, "topk", density=0.25)
    flat = flatten(tv, LAYOUT)
    k = math.ceil(0.25 * 17)
    assert enc == "sparse" and arrays["indices"].dtype == torch.int32 and arrays["indices"].numel() == k
    assert set(arrays["indices"].tolist()) == set(flat.abs().argsort(descending=True)[:k].tolist())
    dense, why = decode_sparse(arrays, LAYOUT)
    assert why is None
    assert torch.equal(dense[arrays["indices"].long()], flat[arrays["indices"].long()])
    assert int((dense != 0).sum()) == k


def test_ties_trim_upload_then_ties_merge_equals_ties_on_dense_vectors():
    tvs = [random_tv(s) for s in range(3)]
    dense = [flatten(t, LAYOUT) for t in tvs]
    decoded = [decode_sparse(encode_upload(t, LAYOUT, "ties-trim", density=0.3)[0], LAYOUT)[0] for t in tvs]
    for d, x in zip(decoded, dense):
        assert torch.equal(d, ties_trim(x, 0.3))
    assert torch.equal(merge_ties(decoded, density=0.3), merge_ties(dense, density=0.3))


def test_dare_upload_is_seeded_and_rescaled():
    flat = flatten(random_tv(), LAYOUT)
    idx1, v1 = sparsify(flat, "dare", 0.5, seed=7)
    idx2, v2 = sparsify(flat, "dare", 0.5, seed=7)
    idx3, _ = sparsify(flat, "dare", 0.5, seed=8)
    assert torch.equal(idx1, idx2) and torch.equal(v1, v2) and not torch.equal(idx1, idx3)
    torch.testing.assert_close(v1, flat[idx1] * 2.0)


def test_fp16_is_dense_half():
    arrays, enc = encode_upload(random_tv(), LAYOUT, "fp16")
    assert enc == "dense" and all(v.dtype == torch.float16 for v in arrays.values())


@pytest.mark.parametrize("arrays, fragment", [
    ({"indices": torch.tensor([0, 20], dtype=torch.int32), "values": torch.ones(2)}, "lie in [0, 17)"),
    ({"indices": torch.tensor([3, 3], dtype=torch.int32), "values": torch.ones(2)}, "strictly increasing"),
    ({"indices": torch.tensor([1, 2], dtype=torch.int32), "values": torch.ones(3)}, "one per index"),
    ({"indices": torch.tensor([1.0, 2.0]), "values": torch.ones(2)}, "int32/int64"),
    ({"indices": torch.tensor([1, 2], dtype=torch.int32), "values": torch.tensor([1.0, float("nan")])}, "NaN"),
    ({"indices": torch.tensor([1], dtype=torch.int32)}, "exactly 'indices' and 'values'"),
])
def test_malformed_sparse_uploads_are_refused_with_the_reason(arrays, fragment):
    dense, why = decode_sparse(arrays, LAYOUT)
    assert dense is None and fragment in why


def test_sparse_uploads_through_the_strategy_shrink_bytes(tmp_path, identity):
    """The same run with dense and with top-k 10% uploads: bytes fall ~5x (int32 index + float16 value)."""
    received = {}
    for enc in ("none", "topk"):
        raw = small_config(tmp_path, **{"num-server-rounds": 1, "upload-compression": enc, "upload-density": 0.1,
                                        "upload-values": "fp16", "run-name": enc})
        rec = run_atm(InProcessGrid(client_app, raw, num_nodes=3), parse_run_config(raw))
        assert rec.status == "finished"
        res = json.loads((tmp_path / enc / "results.json").read_text())
        received[enc] = res["rounds"][1]["bytes_received"]
        assert res["rounds"][1]["refused"] == []
    assert received["none"] / received["topk"] > 5.0
