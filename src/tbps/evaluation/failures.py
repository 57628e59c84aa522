"""Failure analysis: queries whose top-1 image is wrong, their top-K and first true image."""

from __future__ import annotations

import base64
import html
import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

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


def _thumbnail(path: str, height: int) -> str:
    """A small JPEG of the image as a data URI (the page stays self-contained)."""
    try:
        img = load_image(path)
    except DataError as e:
        log.warning("failure report: %s", e)
        return ""
    width = max(1, round(img.width * height / img.height))
    buf = io.BytesIO()
    img.resize((width, height)).save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


_STYLE = """body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}
td{padding:4px;vertical-align:top;text-align:center;font-size:12px}
tr{border-bottom:1px solid #ccc}.q{text-align:left;max-width:28em;font-size:14px}
.ok img{outline:3px solid #2a2}.bad img{outline:3px solid #c22}.true img{outline:3px solid #22c}"""


def write_failure_report(
    cases: Sequence[FailureCase],
    captions: Sequence[str],
    gallery_paths: Sequence[str],
    out_path: str | os.PathLike,
    title: str = "tbps failure report",
    thumb_height: int = 96,
) -> Path:
    """An HTML page: per failing query, its text, the top-K images (pid, score) and the first
    true image with its rank. Images are embedded as thumbnails."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in cases:
        cells = []
        for rank, (g, pid, score) in enumerate(
            zip(case.top_indices, case.top_pids, case.top_scores), start=1
        ):
            kind = "ok" if pid == case.query_pid else "bad"
            cells.append(
                f'<td class="{kind}"><img src="{_thumbnail(gallery_paths[g], thumb_height)}" '
                f'title="{html.escape(gallery_paths[g])}"><br>#{rank} pid {pid}<br>{score:.3f}</td>'
            )
        cells.append(
            f'<td class="true"><img src="{_thumbnail(gallery_paths[case.first_true_index], thumb_height)}"'
            f' title="{html.escape(gallery_paths[case.first_true_index])}"><br>true: rank '
            f"{case.first_true_rank}</td>"
        )
        query = html.escape(captions[case.query_index])
        rows.append(
            f'<tr><td class="q">query {case.query_index} (pid {case.query_pid})<br><b>{query}</b></td>'
            + "".join(cells)
            + "</tr>"
        )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<p>{len(cases)} text queries whose top-1 image is of another person, hardest first "
        "(green: right person, red: wrong person, blue: best-ranked true image).</p>"
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
