"""The failure report of a real `tbps train` run: failures.html and the W&B (offline) table
and media hold the test queries whose top-1 image is wrong, as the saved best model ranks
them, hardest (largest true rank) first, ``report.failures`` of them at most."""

import hashlib
import html
import json
import re
import struct
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tbps.cli import compose_config, main
from tbps.data.images import load_image
from tbps.data.sources import load_dataset_section
from tbps.data.tokenization import tokenize
from tbps.model.checkpoint import model_from_checkpoint

TINY = ["debug=tiny", "trainer.enable_progress_bar=false", "seed=2"]


def _sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@torch.no_grad()
def _expected_failures(ckpt: Path, gallery: list[tuple[int, str]], queries: list[tuple[int, str]]):
    """Every failing query (top-1 of another person) as ``{query: (true rank, ranking)}``,
    ranked here from the checkpoint's own embeddings: ``ranking`` is the gallery indices by
    decreasing similarity (ties: lower index first), the true rank the 1-based position of
    the first image of the query's person in it."""
    model = model_from_checkpoint(ckpt)
    images = torch.stack([model.image_transform(load_image(path)) for _, path in gallery])
    tokens = tokenize(model.tokenizer, [c for _, c in queries], model.text_length)
    sim = model.encode_texts(tokens["input_ids"], tokens["attention_mask"]) @ (
        model.encode_images(images).t()
    )
    failures = {}
    for q, (pid, _) in enumerate(queries):
        ranking = sorted(range(len(gallery)), key=lambda g: (-float(sim[q, g]), g))
        pids = [gallery[g][0] for g in ranking]
        if pids[0] != pid:
            failures[q] = (pids.index(pid) + 1, ranking)
    return failures


_ROW = re.compile(r'<tr><td class="q">query (\d+) \(pid (\d+)\)<br><b>(.*?)</b></td>(.*?)</tr>')
_CELL = re.compile(r'<td class="(ok|bad|true)">.*? title="([^"]*)".*?</a>(.*?)<div class="name">')


def _report_rows(page: str) -> list[dict]:
    """failures.html's rows: query index, pid, caption, top-K (path, pid) and true rank."""
    rows = []
    for query, pid, caption, cells in _ROW.findall(page):
        parsed = _CELL.findall(cells)
        assert parsed and parsed[-1][0] == "true", cells
        top = []
        for kind, path, text in parsed[:-1]:
            match = re.fullmatch(r"#(\d+) pid (\d+)<br>-?[\d.]+", text)
            assert match and int(match[1]) == len(top) + 1, text
            top.append((html.unescape(path), int(match[2])))
            assert kind == ("ok" if int(match[2]) == int(pid) else "bad")
        true = re.fullmatch(r"true: rank (\d+)", parsed[-1][2])
        assert true, parsed[-1]
        rows.append(
            {
                "query": int(query),
                "pid": int(pid),
                "caption": html.unescape(caption),
                "top": top,
                "true_path": html.unescape(parsed[-1][1]),
                "true_rank": int(true[1]),
            }
        )
    return rows


def _check_page(page: str, expected: dict, gallery, queries, cap: int, metrics: dict) -> None:
    rows = _report_rows(page)
    assert len(rows) == min(cap, len(expected))
    assert f"<p>{len(rows)} text queries whose top-1 image is of another person" in page
    # documented order: hardest first (non-increasing true rank); a cap keeps the hardest
    ranks = [r["true_rank"] for r in rows]
    assert ranks == sorted(ranks, reverse=True)
    left_out = set(expected) - {r["query"] for r in rows}
    assert all(expected[q][0] <= ranks[-1] for q in left_out)
    for row in rows:
        q = row["query"]
        assert q in expected, f"query {q} is listed but its top-1 image is right"
        true_rank, ranking = expected[q]
        assert (row["pid"], row["caption"]) == queries[q]
        assert row["true_rank"] == true_rank
        assert row["top"] == [gallery[g][::-1] for g in ranking[:10]]
        assert row["true_path"] == gallery[ranking[true_rank - 1]][1]
    # the metrics on top are the tested (best) model's
    for task in ("t2i", "i2t"):
        assert f"<th>{task}</th><td>{metrics[task]['R1']:.2f}</td>" in page


def _wandb_records(path: Path) -> list:
    """The protobuf records of a W&B run's transaction log (``run-<id>.wandb``): LevelDB's log
    format (32 KiB blocks, 7-byte chunk headers: crc32, length, type full/first/middle/last)
    after a 7-byte file header."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # the block's tail is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 2):  # full, first
            pending = chunk
        elif kind in (3, 4):  # middle, last
            pending += chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def _check_wandb(run_dir: Path, expected: dict, gallery, queries, rows: list[dict]) -> None:
    """The offline run's failure table (an artifact: its manifest in the run's log, its files
    staged in $WANDB_DATA_DIR) and its top-1 media (in the run folder)."""
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    records = _wandb_records(next(offline.glob("run-*.wandb")))
    artifacts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    (artifact,) = [a for a in artifacts if a.type == "failures"]
    files = {e.path: Path(e.local_path) for e in artifact.manifest.contents}
    table = json.loads(files["failures.table.json"].read_text())
    k = min(10, len(gallery))
    assert table["columns"] == ["query", "pid", "first_true_rank", "first_true_image"] + [
        f"top{i}" for i in range(1, k + 1)
    ]
    assert len(table["data"]) == len(rows)

    def image_of(cell: dict, g: int) -> None:
        path = gallery[g][1]
        assert cell["_type"] == "image-file" and cell["caption"] == f"pid {gallery[g][0]}"
        assert cell["sha256"] == _sha256(path)  # the gallery image itself ...
        assert _sha256(files[cell["path"]]) == cell["sha256"]  # ... carried by the artifact

    for row, data in zip(rows, table["data"]):
        q = row["query"]
        true_rank, ranking = expected[q]
        caption, pid, rank, true_image, *top = data
        assert (pid, caption, rank) == (*queries[q], true_rank)
        image_of(true_image, ranking[true_rank - 1])
        for cell, g in zip(top, ranking[:k]):
            image_of(cell, g)

    # each listed query's wrong top-1 image as run media: files in the run folder
    history = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            history.update({i.key or "/".join(i.nested_key): i.value_json for i in r.history.item})
    captions = json.loads(history["test/failures_top1/captions"])
    filenames = json.loads(history["test/failures_top1/filenames"])
    assert len(captions) == len(filenames) == len(rows)
    for row, caption, name in zip(rows, captions, filenames):
        q, (true_rank, ranking) = row["query"], expected[row["query"]]
        pid, text = queries[q]
        top1 = ranking[0]
        assert caption == (
            f"query {q} (pid {pid}): {text[:120]} -> top-1 pid {gallery[top1][0]}, true image "
            f"at rank {true_rank}"
        )
        assert _sha256(offline / "files" / name) == _sha256(gallery[top1][1])


def test_failure_report_of_a_real_run_lists_the_failing_test_queries(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    wandb.finish()  # the logger would log into a run that another test left open
    monkeypatch.setenv("WANDB_MODE", "offline")  # the logger sets it: restored after the test
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))  # artifact staging
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("TBPS_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    # the test split as the report indexes it: each gallery image once, every caption a query
    data = OmegaConf.to_container(compose_config("train", TINY).data, resolve=True)
    test = load_dataset_section(data, tmp_path / "cache", progress=False).split("test")
    gallery = [(image.pid, image.image_path) for image in test]
    queries = [(image.pid, caption) for image in test for caption in image.captions]
    assert {pid for pid, _ in queries} <= {pid for pid, _ in gallery}  # every query can match

    run = tmp_path / "run"
    logger = ["logger=wandb", "logger.wandb.mode=offline"]
    cap = len(queries)  # no cap: every failing query
    try:
        assert main(["train", *TINY, *logger, f"run_dir={run}", f"report.failures={cap}"]) == 0
    finally:
        wandb.finish()  # as at the end of a `tbps train` process: the run's log is complete
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["failure_report"] == str(run / "failures.html")
    best = metrics["test"]["best"]  # the report is of the last test: the best checkpoint
    expected = _expected_failures(Path(metrics["best_val"]["checkpoint"]), gallery, queries)
    # the failures found here are the run's: its R1 counts the other queries
    assert best["t2i"]["num_queries"] == len(queries)
    assert len(expected) == pytest.approx(len(queries) * (1 - best["t2i"]["R1"] / 100), abs=1e-6)
    assert len(expected) >= 2, "too easy a test split: no failures to report"

    page = (run / "failures.html").read_text()
    _check_page(page, expected, gallery, queries, cap, best)
    _check_wandb(run, expected, gallery, queries, _report_rows(page))

    # re-tested with a cap below the number of failures: the hardest ones
    cap = len(expected) // 2
    args = ["train", f"resume={run}", "resume_finished=true", f"report.failures={cap}"]
    assert main([*args, "logger.types=[csv]"]) == 0
    _check_page((run / "failures.html").read_text(), expected, gallery, queries, cap, best)
