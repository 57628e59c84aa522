"""retrieval_metrics against a brute-force per-query reference."""

import math

import numpy as np
import pytest
import torch

from tbps.evaluation import metrics as metrics_module
from tbps.evaluation.metrics import retrieval_metrics, retrieval_metrics_from_embeddings


def reference_metrics(sim: np.ndarray, qp: np.ndarray, gp: np.ndarray, ks=(1, 5, 10)) -> dict:
    """Straight transcription of the definitions: one query at a time, stable sort."""
    hits = {k: [] for k in ks}
    aps, inps, excluded = [], [], 0
    for q in range(sim.shape[0]):
        order = sorted(range(sim.shape[1]), key=lambda j: (-float(sim[q, j]), j))
        rel = [1 if gp[j] == qp[q] else 0 for j in order]
        n = sum(rel)
        if n == 0:
            excluded += 1
            continue
        for k in ks:
            hits[k].append(1.0 if any(rel[:k]) else 0.0)
        found, ap = 0, 0.0
        for rank, r in enumerate(rel, start=1):
            if r:
                found += 1
                ap += found / rank
                last = rank
        aps.append(ap / n)
        inps.append(n / last)
    out = {f"R{k}": 100 * float(np.mean(hits[k])) for k in ks}
    out.update(mAP=100 * float(np.mean(aps)), mINP=100 * float(np.mean(inps)))
    out.update(num_queries=len(aps), num_excluded=excluded)
    return out


def assert_close(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key


@pytest.mark.parametrize("seed", range(6))
def test_matches_reference_with_ties_and_unmatched_queries(seed):
    rng = np.random.default_rng(seed)
    q, g = rng.integers(1, 40), rng.integers(1, 60)
    gp = rng.integers(0, 8, size=g)
    qp = rng.integers(0, 10, size=q)  # pids 8, 9 never appear in the gallery
    # Coarse values -> many exact ties, including ties between positives and negatives.
    sim = rng.integers(-3, 4, size=(q, g)).astype(np.float32) / 3
    got = retrieval_metrics(torch.from_numpy(sim), qp, gp)
    assert_close(got, reference_metrics(sim, qp, gp))


def random_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Small random problems that hit every path: ties, +-0, few or many positives, no match."""
    q, g = int(rng.integers(1, 30)), int(rng.integers(1, 70))
    num_ids = int(rng.choice([1, 2, 3, 8, 40]))  # 1-3 ids: many positives per query
    gp = rng.integers(0, num_ids, size=g)
    qp = rng.integers(0, num_ids + 2, size=q)  # the two extra pids never appear in the gallery
    kind = rng.integers(0, 4)
    if kind == 0:  # coarse values: ties everywhere, also between positives and negatives
        sim = rng.integers(-3, 4, size=(q, g)) / 3.0
    elif kind == 1:  # continuous, with a few duplicated columns
        sim = rng.normal(size=(q, g))
        sim[:, :: int(rng.integers(2, 9))] = rng.normal()
    elif kind == 2:  # zeros of both signs, and extreme magnitudes
        choices = np.array([0.0, -0.0, 1e-45, -1e-45, 1e30, -1e30, 3e38, -3e38, 0.5, -0.5])
        sim = rng.choice(choices, size=(q, g))
    else:  # distinct in float64, equal once rounded to float32
        sim = 1.0 + rng.integers(0, 3, size=(q, g)) * 1e-9 + rng.integers(0, 3, size=(q, g))
    return sim.astype(np.float32), qp, gp


#: Plans forced on every chunk, as (lowest positives of a row ranked directly, whether the
#: contenders of the rest are gathered): every item mapped onto cells, or only the contenders
#: (the items scoring at least the row's lowest positive left); each alone or after the lowest
#: positives ranked directly (a row with no more than those is ranked directly alone); or every
#: positive ranked directly.
PATHS = {
    "all items": (0, False),
    "contenders": (0, True),
    "contenders, 1 direct": (1, True),
    "all items, 3 direct": (3, False),
    "contenders, 3 direct": (3, True),
    "all direct": (10**6, False),
}


def force_path(monkeypatch, path: str) -> None:
    direct, gather = PATHS[path]

    def plan(sim, pos_val, n, scratch):  # as many direct as the rows' order allows
        most = int(n.max()) if metrics_module._by_count(n) else int(n.min()) - 1
        return min(direct, most), gather

    monkeypatch.setattr(metrics_module, "_plan", plan)
    monkeypatch.setattr(metrics_module, "_CONTENDER_FRACTION", 2.0)  # no safety net


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("seed", range(40))
def test_random_cases_match_brute_force_reference(seed, path, monkeypatch):
    rng = np.random.default_rng(100 + seed)
    sim, qp, gp = random_case(rng)
    want = reference_metrics(sim, qp, gp, ks=(1, 3, 100))  # 100 > num_gallery
    if want["num_queries"] == 0:
        return
    force_path(monkeypatch, path)
    assert_close(retrieval_metrics(torch.from_numpy(sim), qp, gp, ks=(1, 3, 100)), want)
    # Direct ranks in blocks of 2 rows.
    monkeypatch.setattr(metrics_module, "_DIRECT_BLOCK_BYTES", 2 * 4 * gp.size)
    assert_close(retrieval_metrics(torch.from_numpy(sim), qp, gp, ks=(1, 3, 100)), want)
    # One query per chunk and as few cells as possible: everything shares a cell.
    monkeypatch.setattr(metrics_module, "_CHUNK_BYTES", 1)
    monkeypatch.setattr(metrics_module, "_GALLERY_PER_CELL", 10**6)
    monkeypatch.setattr(metrics_module, "_MIN_CELLS", 3)
    assert_close(retrieval_metrics(torch.from_numpy(sim), qp, gp, ks=(1, 3, 100)), want)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("seed", range(3))
def test_larger_continuous_cases_and_chunking(seed, path, monkeypatch):
    force_path(monkeypatch, path)
    rng = np.random.default_rng(seed)
    gp = rng.permutation(np.repeat(np.arange(12), rng.integers(1, 30, size=12)))
    qp = rng.integers(0, 13, size=60)
    sim = rng.normal(size=(60, gp.size)).astype(np.float32)
    sim += (1.5 + 3.0 * seed) * (qp[:, None] == gp[None, :])  # up to a near-perfect model
    sim[:, :10] = np.round(sim[:, :10], 1)  # some ties
    want = reference_metrics(sim, qp, gp)
    assert_close(retrieval_metrics(sim, qp, gp), want)
    monkeypatch.setattr(metrics_module, "_CHUNK_BYTES", 7 * gp.size * 16)  # 7 queries a chunk
    monkeypatch.setattr(metrics_module, "_GALLERY_PER_CELL", 2)
    assert_close(retrieval_metrics(sim, qp, gp), want)
    monkeypatch.setattr(metrics_module, "_DIRECT_BLOCK_BYTES", 3 * gp.size * 4)  # blocks 3, 3, 1
    assert_close(retrieval_metrics(sim, qp, gp), want)


@pytest.mark.parametrize("path", PATHS)
def test_from_embeddings_matches_the_similarity_matrix(path, monkeypatch):
    force_path(monkeypatch, path)
    rng = np.random.default_rng(3)
    queries = torch.from_numpy(rng.normal(size=(50, 8)).astype(np.float32))
    gallery = torch.from_numpy(rng.normal(size=(70, 8)).astype(np.float32))
    gallery[10:20] = gallery[0]  # tied gallery items
    qp, gp = rng.integers(0, 6, size=50), rng.integers(0, 5, size=70)
    sim = (queries @ gallery.t()).numpy()
    want = reference_metrics(sim, qp, gp)
    assert_close(retrieval_metrics_from_embeddings(queries, gallery, qp, gp), want)
    monkeypatch.setattr(metrics_module, "_CHUNK_BYTES", 1)
    assert_close(retrieval_metrics_from_embeddings(queries, gallery, qp, gp), want)


@pytest.mark.parametrize("path", ["all direct", "contenders, 1 direct", "all items"])
def test_other_dtypes_and_strided_matrices_give_the_float32_numbers(path, monkeypatch):
    """Queries go by their number of positives, so a chunk's rows are gathered from anywhere in
    the matrix: from float64 and float16 matrices, and from a transposed (strided) one."""
    force_path(monkeypatch, path)
    monkeypatch.setattr(metrics_module, "_CHUNK_BYTES", 5 * 90 * 16)  # 5 queries a chunk
    rng = np.random.default_rng(5)
    gp = rng.permutation(np.repeat(np.arange(9), np.arange(1, 19, 2)))  # 1..17 per id, 81 items
    qp = rng.integers(0, 11, size=40)  # pids 9 and 10 are not in the gallery
    sim = rng.normal(size=(40, gp.size)) + 2.0 * (qp[:, None] == gp[None, :])
    sim[:, ::5] = np.round(sim[:, ::5], 1)
    want = reference_metrics(sim.astype(np.float32), qp, gp)
    assert want["num_excluded"] > 0
    for matrix in (
        torch.from_numpy(sim),
        torch.from_numpy(sim).half(),
        torch.from_numpy(np.ascontiguousarray(sim.T.astype(np.float32))).t(),
    ):
        expected = want
        if matrix.dtype == torch.float16:  # its own roundings, ranked as float32
            expected = reference_metrics(matrix.float().numpy(), qp, gp)
        assert_close(retrieval_metrics(matrix, qp, gp), expected)


@pytest.mark.parametrize("path", ["default", *PATHS])
def test_queries_go_by_their_positives_only_when_some_may_be_ranked_directly(path, monkeypatch):
    """Queries with few positives are taken most first (a chunk's rows then need gathering);
    queries that all have many keep their order, so chunks are views of the matrix, and no
    plan may then finish a row before the cells."""
    if path != "default":
        force_path(monkeypatch, path)
    seen: list[list[int]] = []
    original = metrics_module._positive_ranks

    def spy(sim, pos_idx, n, scratch):
        seen.append(n.tolist())
        return original(sim, pos_idx, n, scratch)

    monkeypatch.setattr(metrics_module, "_positive_ranks", spy)
    rng = np.random.default_rng(8)
    for sizes, sorted_by_count in (([14, 30, 18, 22, 15, 27], False), ([1, 5, 2, 4, 3, 2], True)):
        gp = rng.permutation(np.repeat(np.arange(6), sizes))
        qp = rng.integers(0, 7, size=40)  # pid 6 is not in the gallery
        sim = rng.normal(size=(40, gp.size)).astype(np.float32)
        sim += 2.0 * (qp[:, None] == gp[None, :])
        sim[:, ::4] = np.round(sim[:, ::4], 1)  # ties
        monkeypatch.setattr(metrics_module, "_CHUNK_BYTES", 7 * gp.size * 16)  # 7 queries a chunk
        seen.clear()
        assert_close(retrieval_metrics(sim, qp, gp), reference_metrics(sim, qp, gp))
        counts = [sizes[q] for q in qp if q < 6]
        flat = [count for chunk in seen for count in chunk]
        assert flat == (sorted(counts, reverse=True) if sorted_by_count else counts)
        assert len(seen) == -(-len(counts) // 7)


def test_rows_out_of_order_keep_a_positive_for_the_cells(monkeypatch):
    """Should chunks come with their rows not by count, no plan may rank all of a row's
    positives directly (the rows needing the j-th would not be a prefix)."""
    monkeypatch.setattr(metrics_module, "_may_finish_early", lambda n: False)
    taken = spy_plans(monkeypatch)
    rng = np.random.default_rng(9)
    gp = rng.permutation(np.repeat(np.arange(8), [1, 2, 3, 4, 5, 6, 7, 8]))
    qp = rng.integers(0, 8, size=30)
    sim = rng.normal(size=(30, gp.size)).astype(np.float32) + 3.0 * (qp[:, None] == gp[None, :])
    assert_close(retrieval_metrics(sim, qp, gp), reference_metrics(sim, qp, gp))
    assert plans(taken) and all(mapped != "none" for mapped, _ in plans(taken))


def test_float64_input_is_compared_in_float32():
    sim = np.array([[1.0, 1.0 + 1e-12]])  # equal in float32: the tie goes to index 0
    assert retrieval_metrics(sim, [1], [2, 1])["R1"] == 0.0
    assert retrieval_metrics(sim, [2], [2, 1])["R1"] == 100.0


def test_ties_are_broken_by_gallery_index():
    sim = np.zeros((2, 4), dtype=np.float32)  # everything tied
    gp = np.array([5, 7, 7, 5])
    got = retrieval_metrics(sim, np.array([7, 5]), gp, ks=(1, 2))
    # query pid 7: ranks 2, 3 -> AP = (1/2 + 2/3)/2 ; pid 5: ranks 1, 4 -> AP = (1 + 2/4)/2
    assert got["R1"] == pytest.approx(50.0)
    assert got["R2"] == pytest.approx(100.0)
    assert got["mAP"] == pytest.approx(100 * ((1 / 2 + 2 / 3) / 2 + (1 + 2 / 4) / 2) / 2)
    assert got["mINP"] == pytest.approx(100 * (2 / 3 + 2 / 4) / 2)


def test_negative_zero_ties_with_positive_zero():
    sim = torch.tensor([[0.0, -0.0]])
    assert retrieval_metrics(sim, [1], [2, 1])["R1"] == 0.0
    assert retrieval_metrics(sim, [1], [1, 2])["R1"] == 100.0


def test_perfect_and_worst_ranking():
    sim = torch.eye(5)
    pids = torch.arange(5)
    got = retrieval_metrics(sim, pids, pids)
    assert got["R1"] == got["mAP"] == got["mINP"] == 100.0
    got = retrieval_metrics(-torch.eye(5), pids, pids, ks=(1, 5))
    assert got["R1"] == 0.0 and got["R5"] == 100.0 and got["mAP"] == pytest.approx(20.0)


def test_all_queries_unmatched_gives_nan_not_crash():
    got = retrieval_metrics(torch.rand(3, 4), [9, 9, 9], [1, 2, 3, 4])
    assert got["num_queries"] == 0 and got["num_excluded"] == 3
    assert math.isnan(got["R1"])


def test_bad_shapes_and_values_are_rejected():
    with pytest.raises(ValueError, match="does not match"):
        retrieval_metrics(torch.rand(3, 4), [1, 2], [1, 2, 3, 4])
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(torch.tensor([[float("nan")]]), [1], [1])
    with pytest.raises(ValueError, match="2-D"):
        retrieval_metrics(torch.rand(3), [1, 2, 3], [1, 2, 3])


def spy_plans(monkeypatch) -> list[tuple[str, int]]:
    """Record, per chunk, how many positives of a row were ranked directly, and whether the
    cells then mapped every item, only the contenders, or were not needed ("none")."""
    taken: list[list] = []
    original_plan, original_init = metrics_module._plan, metrics_module._Contenders.__init__

    def plan(*args, **kwargs):
        direct, gather = original_plan(*args, **kwargs)
        taken.append(["none", direct])
        return direct, gather

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        taken[-1][0] = "all items" if self.row is None else "contenders"

    monkeypatch.setattr(metrics_module, "_plan", plan)
    monkeypatch.setattr(metrics_module._Contenders, "__init__", init)
    return taken


def plans(taken: list[list]) -> set[tuple[str, int]]:
    return {tuple(record) for record in taken}


@pytest.mark.parametrize("path", PATHS)
def test_each_forced_plan_is_the_one_taken(path, monkeypatch):
    force_path(monkeypatch, path)
    taken = spy_plans(monkeypatch)
    rng = np.random.default_rng(11)
    gp = rng.permutation(np.repeat(np.arange(10), 6))  # 6 positives a query: room for 3 direct
    qp = rng.integers(0, 10, size=30)
    sim = rng.normal(size=(30, gp.size)).astype(np.float32)
    sim[:, ::7] = 0.25  # ties, also with positives ranked directly
    assert_close(retrieval_metrics(sim, qp, gp), reference_metrics(sim, qp, gp))
    direct, gather = PATHS[path]
    mapped = "none" if direct >= 6 else "contenders" if gather else "all items"
    assert plans(taken) == {(mapped, min(direct, 6))}


def test_a_misleading_sample_falls_back_to_mapping_every_item(monkeypatch):
    """The plan chose contenders, but more words hold one than the safety net allows: the
    chunk maps every item instead, with the reference's numbers."""
    force_path(monkeypatch, "contenders, 3 direct")
    monkeypatch.setattr(metrics_module, "_CONTENDER_FRACTION", 0.0)
    taken = spy_plans(monkeypatch)
    rng = np.random.default_rng(12)
    gp = rng.permutation(np.repeat(np.arange(10), 6))
    qp = rng.integers(0, 10, size=30)
    sim = np.round(rng.normal(size=(30, gp.size)), 1).astype(np.float32)  # ties everywhere
    assert_close(retrieval_metrics(sim, qp, gp), reference_metrics(sim, qp, gp))
    assert plans(taken) == {("all items", 3)}


def test_the_default_plan_suits_the_model(monkeypatch):
    """With few positives a query, every one is ranked directly; with many, a decent model's
    similarities gather the contenders, a poor one's map every item, and a middling one's rank
    the lowest positives directly first. All give the reference's numbers."""
    taken = spy_plans(monkeypatch)
    rng = np.random.default_rng(7)

    def plans_of(ids: int, per_id: int, margin: float, hopeless: bool = False) -> set:
        gp = rng.permutation(np.repeat(np.arange(ids), per_id))
        qp = rng.integers(0, ids, size=80)
        sim = rng.normal(size=(80, gp.size)).astype(np.float32)
        sim += margin * (qp[:, None] == gp[None, :])
        if hopeless:  # one positive of each id far below everything
            sim[:, [np.flatnonzero(gp == pid)[0] for pid in range(ids)]] -= 10.0
        taken.clear()
        assert_close(retrieval_metrics(sim, qp, gp), reference_metrics(sim, qp, gp))
        return plans(taken)

    assert plans_of(40, 4, 6.0) == plans_of(40, 4, 0.0) == {("none", 4)}
    assert plans_of(20, 20, 6.0) == {("contenders", 0)}
    assert plans_of(20, 20, 0.0) == {("all items", 0)}
    middling = plans_of(20, 20, 4.0, hopeless=True)
    assert middling and all(mapped == "contenders" and direct >= 1 for mapped, direct in middling)
