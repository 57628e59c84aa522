"""The gallery index: what it stores equals the model's embeddings, incremental updates, unreadable
images, kill -9 at any commit point, damaged folders named and repaired, the model it records,
and exact / faiss search against brute force."""

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gallery import tiny_model, write_gallery
from tbps.errors import ConfigError, DataError
from tbps.inference import GalleryIndex, IndexFormatError, Retriever, build_index
from tbps.inference import backends as backends_module
from tbps.inference.backends import ExactSearch, FaissSearch, faiss_plan, recall_at_k
from tbps.inference.index import MANIFEST, SHARDS, model_fingerprint
from tbps.inference.scan import scan_folder


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def _build(model, images, out, **kw):
    kw = {"progress": False, "num_workers": 0, "device": "cpu", **kw}
    return build_index(model, images, out, **kw)


def _embed(model, root: Path, paths) -> torch.Tensor:
    with torch.no_grad():
        return model.encode_images(model.preprocess([Image.open(root / p) for p in paths]))


def test_scan_walks_subfolders_and_stays_inside_the_folder(tmp_path):
    root = tmp_path / "g"
    write_gallery(root, 3)
    write_gallery(root / "deep" / "er", 1, suffix=".PNG")
    (root / "notes.txt").write_text("not an image")
    (root / ".thumbs").mkdir()
    write_gallery(root / ".thumbs", 1)
    outside = tmp_path / "secret.jpg"
    Image.new("RGB", (8, 8)).save(outside)
    (root / "link.jpg").symlink_to(outside)
    (root / "loop").symlink_to(root)  # a folder link back inside: walked once
    scan = scan_folder(root)
    assert [f.path for f in scan.images] == [
        "deep/er/p000/0000.PNG",
        "p000/0000.jpg",
        "p000/0001.jpg",
        "p000/0002.jpg",
    ]
    assert scan.left_out == [("link.jpg", f"links outside the folder ({outside})")]
    with pytest.raises(DataError, match="not a folder"):
        scan_folder(tmp_path / "missing")


@pytest.mark.parametrize("dtype,tol", [("fp32", 1e-6), ("fp16", 2e-3)])
def test_index_stores_the_models_embeddings_and_updates_incrementally(model, tmp_path, dtype, tol):
    root, out = tmp_path / "imgs", tmp_path / "index"
    paths = write_gallery(root, 10)
    report = _build(model, root, out, dtype=dtype, batch_size=4, shard_rows=4)
    assert report.summary() == {"images": 10, "added": 10, "changed": 0, "removed": 0, "skipped": 0}
    index = GalleryIndex.load(out)
    assert (
        index.paths == sorted(paths)
        and index.search_backend.vectors.dtype
        == {
            "fp16": torch.float16,
            "fp32": torch.float32,
        }[dtype]
    )
    expected = _embed(model, root, index.paths)
    assert torch.allclose(index.search_backend.vectors.float(), expected, atol=tol)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["complete"] and len(manifest["shards"]) == 3  # 4 + 4 + 2 rows

    # unchanged: nothing encoded
    assert _build(model, root, out, dtype=dtype).summary()["added"] == 0
    # one new, one deleted, one changed (other content, newer mtime)
    write_gallery(root, 1, start=10)
    (root / paths[0]).unlink()
    Image.new("RGB", (32, 96), (250, 0, 0)).save(root / paths[1])
    stat = (root / paths[1]).stat()
    os.utime(root / paths[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    report = _build(model, root, out, dtype=dtype, shard_rows=4)
    assert report.summary() == {"images": 10, "added": 1, "changed": 1, "removed": 1, "skipped": 0}
    index = GalleryIndex.load(out)
    assert paths[0] not in index.paths and len(set(index.paths)) == 10
    assert torch.allclose(
        index.search_backend.vectors.float(), _embed(model, root, index.paths), atol=tol
    )


def test_unreadable_images_are_skipped_counted_and_named(model, tmp_path, caplog):
    root, out = tmp_path / "imgs", tmp_path / "index"
    write_gallery(root, 4)
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "empty.png").write_bytes(b"")
    report = _build(model, root, out)
    assert report.summary()["images"] == 4 and report.summary()["skipped"] == 2
    assert sorted(p for p, _ in report.skipped) == ["broken.jpg", "empty.png"]
    assert "skipped broken.jpg" in caplog.text
    skipped = json.loads((out / MANIFEST).read_text())["skipped"]
    assert {s["path"] for s in skipped} == {"broken.jpg", "empty.png"}
    # not retried while unchanged (nothing to encode); retried once fixed
    caplog.clear()
    caplog.set_level(logging.INFO, logger="tbps.inference")
    assert _build(model, root, out).summary() == {
        "images": 4,
        "added": 0,
        "changed": 0,
        "removed": 0,
        "skipped": 2,
    }
    assert "indexing" not in caplog.text and "skipped broken.jpg" in caplog.text
    Image.new("RGB", (32, 96), (0, 0, 250)).save(root / "broken.jpg", format="JPEG")
    assert _build(model, root, out).summary()["added"] == 1
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "x.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="no readable image .* skipped 1, first: x.jpg"):
        _build(model, tmp_path / "none", tmp_path / "i2")


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    sys.path.insert(0, {tests!r})
    torch.set_num_threads(1)
    from gallery import tiny_model
    import tbps.inference.builder as builder
    commits = []
    point = {point!r}
    real_shard, real_manifest = builder.write_shard, builder.write_manifest
    def write_shard(*a, **k):
        real_shard(*a, **k)
        if point == "shard" and len(commits) == 2:
            os.kill(os.getpid(), signal.SIGKILL)  # a shard on disk the manifest does not list
    def write_manifest(*a, **k):
        real_manifest(*a, **k)
        commits.append(1)
        if point == "manifest" and len(commits) == 3:
            os.kill(os.getpid(), signal.SIGKILL)  # right after a commit
    builder.write_shard, builder.write_manifest = write_shard, write_manifest
    builder.build_index(tiny_model(), {root!r}, {out!r}, num_workers=0, device="cpu",
                        progress=False, shard_rows=3, batch_size=3)
    """
)


@pytest.mark.parametrize("point", ["shard", "manifest"])
def test_killed_run_is_completed_by_the_next_with_no_image_lost_or_twice(model, tmp_path, point):
    root, out = tmp_path / "imgs", tmp_path / "index"
    write_gallery(root, 14)
    script = KILLER.format(
        tests=str(Path(__file__).parents[1]), point=point, root=str(root), out=str(out)
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == -9, done.stderr
    with pytest.raises(
        IndexFormatError, match="incomplete .* run the same tbps index command again"
    ):
        GalleryIndex.load(out)
    committed = json.loads((out / MANIFEST).read_text())
    assert 0 < len(committed["images"]) < 14
    report = _build(model, root, out, shard_rows=3)
    assert report.summary()["images"] == 14
    assert report.summary()["added"] == 14 - len(committed["images"])
    index = GalleryIndex.load(out)
    assert index.paths == sorted(set(index.paths)) and len(index.paths) == 14
    assert torch.allclose(
        index.search_backend.vectors.float(), _embed(model, root, index.paths), atol=2e-3
    )
    listed = set(json.loads((out / MANIFEST).read_text())["shards"])
    assert {p.name for p in (out / SHARDS).iterdir()} == listed  # the orphan shard is gone


def test_damaged_index_is_named_at_load_and_repaired_by_the_next_run(model, tmp_path):
    root, out = tmp_path / "imgs", tmp_path / "index"
    write_gallery(root, 9)
    _build(model, root, out, shard_rows=3)
    manifest = json.loads((out / MANIFEST).read_text())
    first = sorted(manifest["shards"])[0]
    shard = out / SHARDS / first
    shard.write_bytes(shard.read_bytes()[:-20])  # truncated
    with pytest.raises(IndexFormatError, match=f"{first}: unreadable or truncated shard"):
        GalleryIndex.load(out)
    report = _build(model, root, out, shard_rows=3)
    assert report.summary() == {"images": 9, "added": 0, "changed": 3, "removed": 0, "skipped": 0}
    GalleryIndex.load(out)

    # the manifest says a shard holds more rows than it does
    manifest = json.loads((out / MANIFEST).read_text())
    name = sorted(manifest["shards"])[0]
    manifest["shards"][name] = 5
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(
        IndexFormatError,
        match=f"{name}: holds \\(3, 24\\) embeddings, manifest.json says \\(5, 24\\)",
    ):
        GalleryIndex.load(out)
    assert _build(model, root, out).summary()["changed"] == 3

    # a truncated manifest
    text = (out / MANIFEST).read_text()
    (out / MANIFEST).write_text(text[: len(text) // 2])
    with pytest.raises(IndexFormatError, match="manifest.json: unreadable or truncated"):
        GalleryIndex.load(out)
    assert _build(model, root, out).summary()["added"] == 9
    with pytest.raises(IndexFormatError, match="no manifest.json"):
        GalleryIndex.load(root)


def test_index_records_its_model_and_refuses_another(model, tmp_path):
    root, out = tmp_path / "imgs", tmp_path / "index"
    write_gallery(root, 4)
    model.save_pretrained(tmp_path / "model")
    _build(model, root, out, model_source={"model": str(tmp_path / "model")})
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["model"]["fingerprint"] == model_fingerprint(model)
    assert manifest["model"]["model"] == str(tmp_path / "model")
    retriever = Retriever.from_index(out, device="cpu")  # the recorded model, loaded
    assert len(retriever.search("a person in a red shirt", k=2)) == 2

    other = tiny_model(seed=1)
    with pytest.raises(ConfigError, match="built by another model"):
        Retriever(other, GalleryIndex.load(out), device="cpu")
    with pytest.raises(ConfigError, match="built by another model .* overwrite=true"):
        _build(other, root, out)
    other.save_pretrained(tmp_path / "model")  # the recorded folder now holds another model
    with pytest.raises(ConfigError, match="built by another model"):
        Retriever.from_index(out, device="cpu")
    assert _build(other, root, out, overwrite=True).summary()["added"] == 4
    with pytest.raises(ConfigError, match="indexes images="):
        write_gallery(tmp_path / "elsewhere", 1)
        _build(other, tmp_path / "elsewhere", out)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.tex").write_text("x")
    with pytest.raises(ConfigError, match="not empty and is not a tbps index"):
        _build(other, root, tmp_path / "busy")


def test_text_and_image_search_rank_like_brute_force(model, tmp_path):
    root, out = tmp_path / "imgs", tmp_path / "index"
    write_gallery(root, 12)
    _build(model, root, out, dtype="fp32")
    retriever = Retriever(model, GalleryIndex.load(out), device="cpu")
    gallery = _embed(model, root, retriever.index.paths)
    query = "a person in a green shirt and red pants"
    with torch.no_grad():
        text = model.encode_texts(**model.tokenize([query]))[0]
    order = sorted(range(12), key=lambda i: (-float(gallery[i] @ text), i))
    hits = retriever.search(query, k=5)
    assert [h.id for h in hits] == order[:5] and [h.rank for h in hits] == [1, 2, 3, 4, 5]
    assert all(abs(h.score - float(gallery[h.id] @ text)) < 1e-5 for h in hits)
    assert [h.id for h in retriever.search(query, k=50)] == order  # k > N: all, ranked
    path = retriever.index.paths[7]
    assert retriever.search_image(root / path, k=1)[0].path == path
    assert retriever.search_similar(7, k=1)[0].id == 7
    with pytest.raises(ValueError, match="k must be a positive integer"):
        retriever.search(query, k=0)
    with pytest.raises(ValueError, match="non-empty string"):
        retriever.search("  ", k=3)


def test_exact_search_merges_chunks_and_orders_ties_by_id(monkeypatch):
    monkeypatch.setattr(backends_module, "CHUNK_ROWS", 7)
    g = torch.nn.functional.normalize(
        torch.randn(40, 8, generator=torch.Generator().manual_seed(0)), dim=1
    )
    g[30] = g[3]  # a tie across chunks
    q = torch.stack([g[3], torch.randn(8)])
    for search in (ExactSearch(g), ExactSearch(g.half())):
        scores, ids = search.search(q, 6)
        brute = q @ g.T
        for row in range(2):
            expected = sorted(range(40), key=lambda i: (-float(brute[row, i]), i))[:6]
            if search.vectors.dtype == torch.float32:
                assert ids[row].tolist() == expected
            else:
                assert len(set(ids[row].tolist()) & set(expected)) >= 5
        assert ids[0, :2].tolist() == [3, 30]
        one = search.search(q[:1], 6)  # one query takes the matrix-vector path
        assert one[1].tolist() == ids[:1].tolist()


def _clustered(n, d, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n // 4, d)).astype(np.float32)
    points = centres[rng.integers(0, len(centres), n)] + 0.3 * rng.standard_normal((n, d)).astype(
        np.float32
    )
    return torch.nn.functional.normalize(torch.from_numpy(points), dim=1)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_faiss_reaches_its_recall_target_against_exact(monkeypatch, kind, tmp_path):
    pytest.importorskip("faiss")
    vectors = _clustered(4000, 32)
    if kind == "ivf":
        monkeypatch.setattr(backends_module, "HNSW_MAX", 1000)  # IVF from 1,000 vectors on
    search = FaissSearch.build(vectors)
    assert search.plan["type"] == kind == faiss_plan(len(vectors))["type"]
    assert search.plan["recall_at_10"] >= 0.95
    queries = _clustered(200, 32, seed=1)
    truth = ExactSearch(vectors).search(queries, 10)[1].numpy()
    assert recall_at_k(search.search(queries, 10)[1].numpy(), truth) >= 0.9
    assert search.search(queries[:1], 10_000)[1].shape == (1, 4000)  # k >= N: all, exactly
    search.save(tmp_path / "f.index")
    loaded = FaissSearch.load(tmp_path / "f.index", search.plan)
    assert torch.equal(loaded.search(queries, 5)[1], search.search(queries, 5)[1])
    assert torch.allclose(search.vector(11), vectors[11], atol=1e-6)


def test_faiss_backend_index_round_trip(model, tmp_path):
    pytest.importorskip("faiss")
    root, out = tmp_path / "imgs", tmp_path / "index"
    write_gallery(root, 9)
    report = _build(model, root, out, backend="faiss", dtype="fp32")
    assert report.backend["name"] == "faiss" and report.backend["type"] == "hnsw"
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["backend"]["recall_at_10"] == report.backend["recall_at_10"]
    faiss_retriever = Retriever(model, GalleryIndex.load(out), device="cpu")
    (faiss_file,) = out.glob("faiss-*.index")
    faiss_file.unlink()
    with pytest.raises(
        IndexFormatError, match=f"{faiss_file.name}: faiss index listed in manifest.json is missing"
    ):
        GalleryIndex.load(out)
    again = _build(model, root, out, backend="faiss", dtype="fp32")  # nothing to encode: rebuilt
    assert again.summary()["added"] == 0 and (out / again.backend["file"]).is_file()
    assert len(GalleryIndex.load(out)) == 9
    _build(model, root, out, backend="exact", dtype="fp32")
    assert not list(out.glob("faiss-*"))  # the exact index drops the faiss file
    exact_retriever = Retriever(model, GalleryIndex.load(out), device="cpu")
    query = "a person in a blue shirt"
    assert [h.id for h in faiss_retriever.search(query, 9)] == [
        h.id for h in exact_retriever.search(query, 9)
    ]
