"""SVD-based merges (TSV-M, Iso-C, Iso-CTS, CART) pinned on hand-checkable cases.

Each method is checked on inputs whose answer follows from its definition by hand
(docs/merging.md, "SVD-based merges"), on the edge cases (T = 1, tiny layers, layers
whose rank is below T, non-matrix tensors), and against the direct formulations of
:mod:`atm_fl.merge.svd_reference` (full float64 SVDs) on small random layouts.
"""

from __future__ import annotations

import math

import pytest
import torch

from atm_fl.merge import merge_mean, ops, svd
from atm_fl.merge import svd_reference as ref

FAST = {"tsv": svd.merge_tsv, "iso_c": svd.merge_iso_c, "iso_cts": svd.merge_iso_cts, "cart": svd.merge_cart}
REF = {"tsv": ref.merge_tsv, "iso_c": ref.merge_iso_c, "iso_cts": ref.merge_iso_cts, "cart": ref.merge_cart}


def flat(*mats: torch.Tensor) -> torch.Tensor:
    return torch.cat([m.reshape(-1) for m in mats]).float()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def orthonormal(n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64)).Q


# --------------------------------------------------------------------------- which tensors are matrices

@pytest.mark.parametrize("name, shape, conv, expect", [
    ("attn.in_proj_weight", (2304, 768), "matrix", (2304, 768)),          # fused q/k/v: one matrix
    ("conv1.weight", (768, 3, 16, 16), "matrix", (768, 768)),              # patch embedding as [out, in*k*k]
    ("conv1.weight", (768, 3, 16, 16), "mean", None),
    ("blocks.0.conv_dw.weight", (32, 1, 3, 3), "matrix", (32, 9)),         # depthwise conv
    ("positional_embedding", (197, 768), "matrix", None),                 # a table, not a linear map
    ("embeddings.word_embeddings.weight", (30522, 384), "matrix", None),
    ("cls_token", (1, 1, 768), "matrix", None),                            # one row: rank 1 whatever the tasks
    ("head.weight", (1, 768), "matrix", None),
    ("ln_1.weight", (768,), "matrix", None),
    ("logit_scale", (), "matrix", None),
])
def test_which_tensors_are_matrices(name, shape, conv, expect):
    assert svd.matrix_shape(name, shape, conv) == expect


def test_rank_share_and_iso_cts_split():
    assert svd.tsv_rank(768, 8) == 96 and svd.tsv_rank(768, 7) == 109
    assert all(svd.tsv_rank(k, T) == max(1, int(k * (1 / T))) for k in range(1, 1025) for T in range(1, 21))
    assert svd.tsv_rank(5, 8) == 1                       # rank below T: still one component per task
    assert svd.tsv_rank(768, 8, share=0.5) == 384 and svd.tsv_rank(4, 2, share=1.0) == 4
    assert svd.iso_cts_split(768, 8, 0.8) == (616, 19)   # c + T * s = k
    assert svd.iso_cts_split(10, 3, 0.8) == (7, 1)
    assert svd.iso_cts_split(11, 2, 0.0) == (1, 5)       # round(5.5) = 6 is capped at k // T
    assert svd.iso_cts_split(2, 3, 0.8) == (2, 0)        # layer smaller than T: no task-specific part
    assert svd.iso_cts_split(768, 8, 1.0) == (768, 0)


# --------------------------------------------------------------------------- TSV-M

@pytest.mark.parametrize("impl", [FAST, REF], ids=["fast", "reference"])
def test_tsv_of_orthogonal_low_rank_tasks_is_their_sum(impl):
    # Three tasks in a 12 x 9 matrix (k = 9, r = 3 each) with mutually orthogonal column
    # and row spaces; one has rank 2 < r. The polar factors leave orthonormal blocks
    # alone, so TSV-M returns the plain sum.
    U, V = orthonormal(12, 8, 0), orthonormal(9, 8, 1)
    spans = [(0, 3, [5.0, 2.0, 0.5]), (3, 6, [4.0, 3.0, 1.0]), (6, 8, [7.0, 0.25])]
    tasks = [U[:, a:b] @ torch.diag(torch.tensor(s, dtype=torch.float64)) @ V[:, a:b].T for a, b, s in spans]
    layout = [("w", (12, 9))]
    got = impl["tsv"]([flat(t) for t in tasks], layout)
    assert rel(got, flat(sum(tasks))) < 1e-6


def test_tsv_is_not_the_sum_when_tasks_share_directions():
    # Identical tasks (rank 2 <= r): the concatenated blocks repeat, the canonical polar
    # factor averages them, and TSV-M returns the task itself, i.e. their mean.
    m = torch.tensor([[3.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    for impl in (FAST, REF):
        got = impl["tsv"]([flat(m)] * 3, [("w", (4, 3))], share=1.0)
        assert rel(got, flat(m)) < 1e-6


def test_tsv_by_hand_on_a_layer_smaller_than_t():
    # k = 2 < T = 3: each task keeps its top component (the authors' int(k / T) = 0 would
    # keep none). The three tasks share that component, so the result is that component.
    m = torch.diag(torch.tensor([2.0, 1.0]))
    for impl in (FAST, REF):
        assert rel(impl["tsv"]([flat(m)] * 3, [("w", (2, 2))]), flat(torch.diag(torch.tensor([2.0, 0.0])))) < 1e-6


def test_tsv_with_one_task_returns_it():
    g = torch.Generator().manual_seed(3)
    v = torch.randn(7 * 5, generator=g)
    assert rel(svd.merge_tsv([v], [("w", (7, 5))]), v) < 1e-6


def test_tsv_two_rank_one_tasks_at_an_angle_by_hand():
    # u1 = e1, u2 = (e1 + e2) / sqrt 2, same for the row side, sigma 1 each. The Gram of
    # [u1 u2] is [[1, c], [c, 1]] with c = 1/sqrt 2, and the merged matrix is
    # [u1 u2] G^{-1/2} G^{-1/2} [u1 u2]^T = [u1 u2] G^{-1} [u1 u2]^T, the projector onto
    # span(e1, e2): the identity on the first two coordinates (the sum would be
    # [[1.5, 0.5], [0.5, 0.5]]).
    e1, e2 = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    u2 = (e1 + e2) / math.sqrt(2)
    tasks = [torch.outer(e1, e1), torch.outer(u2, u2)]
    expect = torch.diag(torch.tensor([1.0, 1.0, 0.0]))
    for impl in (FAST, REF):
        assert rel(impl["tsv"]([flat(t) for t in tasks], [("w", (3, 3))]), flat(expect)) < 1e-6


# --------------------------------------------------------------------------- Iso-C

def test_iso_c_by_hand():
    a = torch.tensor([[3.0, 0.0], [0.0, 0.0]])
    b = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    for impl in (FAST, REF):
        # sum = diag(3, 1): singular values replaced by their mean, 2
        assert torch.allclose(impl["iso_c"]([flat(a), flat(b)], [("w", (2, 2))]), flat(2 * torch.eye(2)))
        # a rank-deficient sum, diag(4, 0): the zero direction is not invented
        assert torch.allclose(impl["iso_c"]([flat(a), flat(a / 3)], [("w", (2, 2))]),
                              flat(torch.diag(torch.tensor([4.0, 0.0]))))


@pytest.mark.parametrize("shape", [(9, 6), (6, 9), (5, 5)])
def test_iso_c_spectrum_is_flat_in_the_sums_singular_vectors(shape):
    g = torch.Generator().manual_seed(sum(shape))
    vs = [torch.randn(math.prod(shape), generator=g) for _ in range(4)]
    got = svd.merge_iso_c(vs, [("w", shape)]).view(shape).double()
    u, s, vh = torch.linalg.svd(sum(vs).view(shape).double(), full_matrices=False)
    inner = u.T @ got @ vh.T
    assert torch.allclose(inner, s.mean() * torch.eye(min(shape), dtype=torch.float64), atol=1e-5)
    # the nuclear norm of the sum is kept
    assert math.isclose(float(torch.linalg.matrix_norm(got, "nuc")), float(s.sum()), rel_tol=1e-5)


# --------------------------------------------------------------------------- Iso-CTS

def test_iso_cts_by_hand():
    # k = 4, T = 2, common = 0.5: c = 2 common components and s = 1 per task.
    # sum = diag(6, 0, 1, 0.5): common = e1 (6), e3 (1). Task a lies inside the common
    # subspace (its residual is zero: no component); task b's residual is 0.5 e4 e4^T.
    # Concatenated e1, e3, e4 are orthonormal; their mean singular value is 7.5 / 3.
    a = torch.diag(torch.tensor([4.0, 0.0, 1.0, 0.0]))
    b = torch.diag(torch.tensor([2.0, 0.0, 0.0, 0.5]))
    expect = 2.5 * torch.diag(torch.tensor([1.0, 0.0, 1.0, 1.0]))
    for impl in (FAST, REF):
        assert rel(impl["iso_cts"]([flat(a), flat(b)], [("w", (4, 4))], common=0.5), flat(expect)) < 1e-6


@pytest.mark.parametrize("shape", [(10, 7), (7, 10)])
def test_iso_cts_reduces_to_iso_c(shape):
    g = torch.Generator().manual_seed(11)
    vs = [torch.randn(math.prod(shape), generator=g) for _ in range(3)]
    layout = [("w", shape)]
    iso_c = svd.merge_iso_c(vs, layout)
    assert rel(svd.merge_iso_cts(vs, layout, common=1.0), iso_c) < 1e-6      # no task-specific part
    assert rel(svd.merge_iso_cts(vs[:1], layout), svd.merge_iso_c(vs[:1], layout)) < 1e-6   # T = 1
    # and it is something else otherwise (the check can fail)
    assert rel(svd.merge_iso_cts(vs, layout, common=0.5), iso_c) > 1e-2


def test_iso_cts_on_a_layer_smaller_than_t_is_iso_c():
    g = torch.Generator().manual_seed(5)
    vs = [torch.randn(6, generator=g) for _ in range(4)]                      # 2 x 3, k = 2 < T = 4
    assert rel(svd.merge_iso_cts(vs, [("w", (2, 3))]), svd.merge_iso_c(vs, [("w", (2, 3))])) < 1e-6


# --------------------------------------------------------------------------- CART

def test_cart_by_hand():
    # mean = diag(2, 2, 3); centred tasks diag(4, -2, -3), diag(-2, 4, -3), diag(-2, -2, 6);
    # rank 0.12 of k = 3 keeps one component each: diag(4,0,0), diag(0,4,0), diag(0,0,6).
    tasks = [torch.diag(torch.tensor(d)) for d in ([6.0, 0, 0], [0, 6.0, 0], [0, 0, 9.0])]
    for impl in (FAST, REF):
        got = impl["cart"]([flat(t) for t in tasks], [("w", (3, 3))])          # lam = 2
        assert rel(got, flat(torch.diag(torch.tensor([10.0, 10.0, 15.0])))) < 1e-6


def test_cart_with_two_tasks_or_one_is_the_mean():
    # With T = 2 the centred tasks are negatives of each other, so their low-rank parts
    # cancel whatever the rank; with T = 1 the centred task is zero.
    g = torch.Generator().manual_seed(2)
    vs = [torch.randn(8 * 6, generator=g) for _ in range(2)]
    assert rel(svd.merge_cart(vs, [("w", (8, 6))], rank=0.3), merge_mean(vs)) < 1e-6
    assert rel(svd.merge_cart(vs[:1], [("w", (8, 6))]), vs[0]) < 1e-6


# --------------------------------------------------------------------------- all methods

LAYOUT = [("conv1.weight", (6, 2, 2, 2)), ("class_embedding", (6,)), ("positional_embedding", (5, 6)),
          ("attn.in_proj_weight", (18, 6)), ("attn.in_proj_bias", (18,)), ("mlp.c_proj.weight", (6, 24)),
          ("ln.weight", (6,)), ("tiny", (2, 2)), ("row", (1, 7)), ("scale", ()), ("proj", (6, 4))]
D = sum(math.prod(s) for _, s in LAYOUT)


def decaying(T: int, seed: int) -> list[torch.Tensor]:
    """Task vectors whose matrices have well-separated, decaying singular values (like fine-tuning)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(T):
        v = torch.randn(D, generator=g)
        for _, off, n, shape in svd.matrix_entries(LAYOUT):
            if shape is not None:
                k = min(shape)
                u = torch.linalg.qr(torch.randn(shape[0], k, generator=g, dtype=torch.float64)).Q
                w = torch.linalg.qr(torch.randn(shape[1], k, generator=g, dtype=torch.float64)).Q
                v[off:off + n] = ((u * 2.0 ** -torch.arange(k)) @ w.T).reshape(-1).float()
        out.append(v)
    return out


@pytest.mark.parametrize("method", list(FAST))
@pytest.mark.parametrize("T", [1, 2, 3, 8])
def test_fast_equals_the_direct_formulation(method, T):
    for seed, vs in ((0, decaying(T, T)), (1, [torch.randn(D, generator=torch.Generator().manual_seed(T))
                                               for _ in range(T)])):
        got, want = FAST[method](vs, LAYOUT), REF[method](vs, LAYOUT)
        # float32 inputs and outputs; decompositions differ only in float64 rounding
        assert rel(got, want) < (1e-5 if seed == 0 else 1e-3), (method, T, seed)


@pytest.mark.parametrize("method", list(FAST))
def test_non_matrix_tensors_get_the_mean_and_inputs_are_untouched(method):
    vs = decaying(3, 7)
    before = [v.clone() for v in vs]
    got, mean = FAST[method](vs, LAYOUT), merge_mean(vs)
    for _, off, n, shape in svd.matrix_entries(LAYOUT):
        if shape is None:      # embeddings, biases, LayerNorm, a 1 x 7 row, a scalar
            assert torch.equal(got[off:off + n], mean[off:off + n])
    assert all(torch.equal(a, b) for a, b in zip(vs, before))


@pytest.mark.parametrize("method", list(FAST))
def test_conv_kernels_are_matrices_unless_told_otherwise(method):
    vs = decaying(3, 9)
    conv = slice(0, 48)
    as_matrix = FAST[method](vs, LAYOUT)[conv]
    as_2d = FAST[method]([v[conv] for v in vs], [("w", (6, 8))])
    assert torch.allclose(as_matrix, as_2d, atol=1e-6)
    assert torch.equal(FAST[method](vs, LAYOUT, conv="mean")[conv], merge_mean(vs)[conv])


@pytest.mark.parametrize("method", list(FAST))
def test_zero_tasks_give_zero_and_threads_do_not_change_the_result(method, monkeypatch):
    assert torch.equal(FAST[method]([torch.zeros(D)] * 3, LAYOUT), torch.zeros(D))
    vs = decaying(4, 3)
    monkeypatch.setattr(ops, "THREADS", 1)
    one = FAST[method](vs, LAYOUT)
    monkeypatch.setattr(ops, "THREADS", 3)
    assert torch.equal(FAST[method](vs, LAYOUT), one)


def at_offset(v: torch.Tensor, byte_offset: int) -> torch.Tensor:
    """A copy of v whose data starts ``byte_offset`` bytes past a 64-byte boundary.

    Task vectors decoded from a reply lie wherever the message's bytes were: not on the
    64-byte boundaries torch allocates on.
    """
    buf = torch.empty(v.numel() + 16, dtype=torch.float32)
    out = buf[byte_offset // 4:byte_offset // 4 + v.numel()]
    out.copy_(v)
    assert out.data_ptr() % 64 == byte_offset % 64
    return out


@pytest.mark.parametrize("method", list(FAST))
def test_where_the_vectors_lie_in_memory_does_not_change_the_result(method):
    # Matrices large enough for the BLAS kernels' vector paths; a repeated call comes after
    # other allocations, as a run's later rounds do.
    layout = [("a.weight", (96, 64)), ("b.weight", (64, 160)), ("b.bias", (64,))]
    d = sum(math.prod(s) for _, s in layout)
    g = torch.Generator().manual_seed(5)
    vs = [torch.randn(d, generator=g) for _ in range(4)]
    want = FAST[method](vs, layout)
    for off in (4, 16, 36):
        assert torch.equal(FAST[method]([at_offset(v, off) for v in vs], layout), want), off
    assert torch.equal(FAST[method](vs, layout), want)


@pytest.mark.parametrize("call, word", [
    (lambda vs: svd.merge_tsv(vs, LAYOUT, share=1.5), "share"),
    (lambda vs: svd.merge_iso_cts(vs, LAYOUT, common=-0.1), "common"),
    (lambda vs: svd.merge_cart(vs, LAYOUT, rank=0.0), "rank"),
    (lambda vs: svd.merge_cart(vs, LAYOUT, lam=float("nan")), "lam"),
    (lambda vs: svd.merge_iso_c(vs, LAYOUT, conv="flatten"), "conv"),
    (lambda vs: svd.merge_iso_c(vs, LAYOUT[:-1]), "layout"),
])
def test_bad_arguments_name_the_key(call, word):
    with pytest.raises(ValueError, match=word):
        call([torch.zeros(D)] * 2)
