"""Failure analysis: which queries fail, their top-K and first true image, the HTML page."""

import torch

from fixtures import person_image
from tbps.evaluation.failures import find_failures, write_failure_report


def brute_force_rank(row, pid, gallery_pids):
    order = sorted(range(len(row)), key=lambda j: (-float(row[j]), j))
    ranked_pids = [gallery_pids[j] for j in order]
    return order, ranked_pids.index(pid) + 1


def test_failures_match_a_brute_force_ranking():
    g = torch.Generator().manual_seed(0)
    gallery_pids = [0, 0, 1, 1, 2, 3, 3, 4]
    query_pids = [0, 1, 2, 3, 4, 9, 0, 2]  # pid 9 has no gallery image: never a failure
    sim = (torch.randint(0, 4, (8, 8), generator=g).float()) / 4  # many ties
    cases = find_failures(sim, query_pids, gallery_pids, k=3, limit=None)
    failing = set()
    for q, pid in enumerate(query_pids):
        if pid not in gallery_pids:
            continue
        order, true_rank = brute_force_rank(sim[q], pid, gallery_pids)
        if true_rank > 1:
            failing.add(q)
            case = next(c for c in cases if c.query_index == q)
            assert list(case.top_indices) == order[:3]
            assert case.first_true_rank == true_rank
            assert gallery_pids[case.first_true_index] == pid
            assert order.index(case.first_true_index) + 1 == true_rank
    assert {c.query_index for c in cases} == failing
    ranks = [c.first_true_rank for c in cases]
    assert ranks == sorted(ranks, reverse=True)
    assert len(find_failures(sim, query_pids, gallery_pids, limit=2)) == min(2, len(failing))


def test_no_failures_on_a_perfect_ranking():
    assert find_failures(torch.eye(4), [0, 1, 2, 3], [0, 1, 2, 3]) == []


def test_html_report_links_readable_thumbnails_and_escapes_text(tmp_path):
    paths = []
    for i in range(3):
        path = tmp_path / f"{i}.jpg"
        person_image("red", "blue", seed=i).save(path)
        paths.append(str(path))
    sim = torch.tensor([[0.1, 0.9, 0.5]])
    cases = find_failures(sim, [7], [7, 8, 9])
    metrics = {"t2i": {"R1": 12.5, "R5": 50, "R10": 75, "mAP": 20, "mINP": 10, "num_queries": 8}}
    out = write_failure_report(
        cases, ["a <red> shirt"], paths, tmp_path / "report" / "failures.html", metrics=metrics
    )
    page = out.read_text()
    assert "base64" not in page and len(page) < 5000  # images are files next to the page
    thumbs = sorted((tmp_path / "report" / "failures_files").iterdir())
    assert len(thumbs) == 3  # the true image is also in the top-3: one file each
    from PIL import Image

    assert Image.open(thumbs[0]).height == 192
    assert page.count('<img src="failures_files/g') == 4  # top-3 + the true image
    assert page.count(f'href="{(tmp_path / "0.jpg").as_uri()}"') == 2  # linked to the original
    assert ">0.jpg</div>" in page and "12.50" in page  # file names, metrics summary
    assert "a &lt;red&gt; shirt" in page and "true: rank 3" in page
