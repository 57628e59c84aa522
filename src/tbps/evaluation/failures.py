"""Failure analysis: queries whose top-1 image is wrong, their top-K and first true image."""

from __future__ import annotations

import html
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from tbps.data.images import load_image
from tbps.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FailureCase:
    """One text query whose best-ranked gallery image has another person id."""

    query_index: int
    query_pid: int
    top_indices: tuple[int, ...]  # gallery indices of the top-K, best first
    top_pids: tuple[int, ...]
    top_scores: tuple[float, ...]
    first_true_index: int  # best-ranked gallery image of the right person
    first_true_rank: int  # its 1-based rank


def find_failures(
    similarity: torch.Tensor,
    query_pids: torch.Tensor | Sequence[int],
    gallery_pids: torch.Tensor | Sequence[int],
    k: int = 10,
    limit: int | None = 100,
) -> list[FailureCase]:
    """Queries (rows) whose rank-1 gallery item is wrong, worst first-true rank first.

    Queries without any correct gallery item are not failures of the model and are left out.
    Ties are broken by gallery index, as in the metrics.
    """
    sim = similarity.detach().float().cpu()
    qp = torch.as_tensor(query_pids).reshape(-1).long()
    gp = torch.as_tensor(gallery_pids).reshape(-1).long()
    positive = qp[:, None] == gp[None, :]
    has_match = positive.any(1)
    best = sim.argmax(1)  # first maximal index: ties go to the lower gallery index
    failing = torch.nonzero(has_match & (gp[best] != qp)).flatten()
    if failing.numel() == 0:
        return []
    rows, pos = sim[failing], positive[failing]
    true_scores = rows.masked_fill(~pos, float("-inf"))
    true_idx = true_scores.argmax(1)
    true_val = true_scores.gather(1, true_idx[:, None])
    index = torch.arange(gp.numel())[None, :]
    ahead = (rows > true_val) | ((rows == true_val) & (index < true_idx[:, None]))
    true_rank = ahead.sum(1) + 1
    order = torch.argsort(true_rank, descending=True, stable=True)
    if limit is not None:
        order = order[:limit]
    k = min(k, gp.numel())
    cases = []
    for i in order.tolist():
        # stable top-k: sort by (-score, index)
        ranked = torch.sort(rows[i], descending=True, stable=True).indices[:k]
        cases.append(
            FailureCase(
                query_index=int(failing[i]),
                query_pid=int(qp[failing[i]]),
                top_indices=tuple(ranked.tolist()),
                top_pids=tuple(gp[ranked].tolist()),
                top_scores=tuple(float(rows[i, j]) for j in ranked),
                first_true_index=int(true_idx[i]),
                first_true_rank=int(true_rank[i]),
            )
        )
    return cases


THUMB_HEIGHT = 192


def _thumbnail(path: str, out: Path, height: int) -> bool:
    """Write a JPEG thumbnail of ``path`` (``height`` px high) to ``out``; False if unreadable."""
    if out.is_file():
        return True
    try:
        img = load_image(path)
    except DataError as e:
        log.warning("failure report: %s", e)
        return False
    width = max(1, round(img.width * height / img.height))
    img.resize((width, height), Image.Resampling.BICUBIC).save(out, format="JPEG", quality=85)
    return True


_STYLE = """body{font-family:sans-serif;margin:1em;color:#222}table{border-collapse:collapse}
td{padding:6px;vertical-align:top;text-align:center;font-size:12px}
tr{border-bottom:1px solid #ccc}.q{text-align:left;max-width:26em;font-size:14px}
.name{max-width:9em;overflow-wrap:anywhere;color:#555}img{display:block;margin:0 auto 7px}
.ok img{outline:4px solid #2a2}.bad img{outline:4px solid #c22}.true img{outline:4px solid #22c}
.summary td,.summary th{padding:2px 10px;text-align:right}.summary{margin-bottom:1em}"""


def _summary_table(metrics: dict[str, dict[str, float | int]]) -> str:
    cols = ("R1", "R5", "R10", "mAP", "mINP", "num_queries")
    head = "".join(f"<th>{c}</th>" for c in cols)
    rows = "".join(
        f"<tr><th>{html.escape(task)}</th>"
        + "".join(
            f"<td>{m[c]:.2f}</td>" if c != "num_queries" else f"<td>{int(m[c])}</td>" for c in cols
        )
        + "</tr>"
        for task, m in metrics.items()
    )
    return f'<table class="summary"><tr><th></th>{head}</tr>{rows}</table>'


def write_failure_report(
    cases: Sequence[FailureCase],
    captions: Sequence[str],
    gallery_paths: Sequence[str],
    out_path: str | os.PathLike,
    title: str = "tbps failure report",
    thumb_height: int = THUMB_HEIGHT,
    metrics: dict[str, dict[str, float | int]] | None = None,
) -> Path:
    """An HTML page: per failing query, its text, the top-K images (pid, score, file name) and
    the first true image with its rank; ``metrics`` (``{"t2i": ..., "i2t": ...}``) on top.

    Thumbnails are JPEG files in ``<page name>_files/`` next to the page (the page stays
    small); each links to its full-size original.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    files = out_path.with_name(f"{out_path.stem}_files")
    files.mkdir(exist_ok=True)

    def cell(g: int, kind: str, text: str) -> str:
        source = gallery_paths[g]
        thumb = files / f"g{g:06d}.jpg"
        name = html.escape(Path(source).name)
        link = html.escape(Path(source).absolute().as_uri())
        image = (
            f'<a href="{link}"><img src="{html.escape(files.name)}/{thumb.name}" '
            f'height="{thumb_height}" title="{html.escape(source)}" alt="{name}"></a>'
            if _thumbnail(source, thumb, thumb_height)
            else "(unreadable)"
        )
        return f'<td class="{kind}">{image}{text}<div class="name">{name}</div></td>'

    rows = []
    for case in cases:
        cells = [
            cell(g, "ok" if pid == case.query_pid else "bad", f"#{rank} pid {pid}<br>{score:.3f}")
            for rank, (g, pid, score) in enumerate(
                zip(case.top_indices, case.top_pids, case.top_scores), start=1
            )
        ]
        cells.append(cell(case.first_true_index, "true", f"true: rank {case.first_true_rank}"))
        query = html.escape(captions[case.query_index])
        rows.append(
            f'<tr><td class="q">query {case.query_index} (pid {case.query_pid})<br><b>{query}</b></td>'
            + "".join(cells)
            + "</tr>"
        )
    summary = _summary_table(metrics) if metrics else ""
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{summary}"
        f"<p>{len(cases)} text queries whose top-1 image is of another person, hardest first "
        "(green: right person, red: wrong person, blue: best-ranked true image; click an image "
        "for the original).</p>"
        f"<table>{''.join(rows)}</table></body></html>"
    )
    out_path.write_text(page, encoding="utf-8")
    return out_path


def wandb_failure_table(
    cases: Sequence[FailureCase], captions: Sequence[str], gallery_paths: Sequence[str]
):
    """The failure cases as a ``wandb.Table``: query, pid, first true image and its rank,
    then the top-10 images captioned with their pids."""
    import wandb

    k = max((len(c.top_indices) for c in cases), default=10)
    columns = ["query", "pid", "first_true_rank", "first_true_image"] + [
        f"top{i}" for i in range(1, k + 1)
    ]
    table = wandb.Table(columns=columns)
    for case in cases:
        top = [
            wandb.Image(gallery_paths[g], caption=f"pid {pid}")
            for g, pid in zip(case.top_indices, case.top_pids)
        ]
        top += [None] * (k - len(top))
        table.add_data(
            captions[case.query_index],
            case.query_pid,
            case.first_true_rank,
            wandb.Image(gallery_paths[case.first_true_index], caption=f"pid {case.query_pid}"),
            *top,
        )
    return table


def log_wandb_failures(
    experiment,
    cases: Sequence[FailureCase],
    captions: Sequence[str],
    gallery_paths: Sequence[str],
    key: str = "test/failures",
) -> None:
    """Log the failure cases to a W&B run: the table (:func:`wandb_failure_table`) as an
    artifact, and each failing query's wrong top-1 image as run media (``<key>_top1``).

    wandb (0.31) writes a table logged with ``run.log`` as JSON whose image cells are the
    string "Image" (the files are dropped); inside an artifact the images are kept. The run
    media puts the image files in the run folder itself, offline too.
    """
    import wandb

    artifact = wandb.Artifact(f"{experiment.id}-{key.replace('/', '-')}", type="failures")
    artifact.add(wandb_failure_table(cases, captions, gallery_paths), "failures")
    experiment.log_artifact(artifact)
    images = [
        wandb.Image(
            gallery_paths[case.top_indices[0]],
            caption=f"query {case.query_index} (pid {case.query_pid}): {captions[case.query_index][:120]}"
            f" -> top-1 pid {case.top_pids[0]}, true image at rank {case.first_true_rank}",
        )
        for case in cases
    ]
    if images:
        experiment.log({f"{key}_top1": images})
