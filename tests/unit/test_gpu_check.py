"""bench/gpu_check.py end to end at tiny sizes on CPU: every section reports (no GPU needed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_check.py"


@pytest.mark.slow
def test_gpu_check_tiny_cpu_reports_every_section(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--device", "cpu", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = proc.stdout
    assert "| section | metric | value | anchor |" in table
    for row in (
        "| a: IRRA train step | framework s/it |",
        "| a: IRRA train step | bare s/it (faster of 2 runs; both) |",
        "| a: IRRA train step | ratio framework/bare |",
        "| b: tbps eval ICFG-size | encode (images + captions) s |",
        "| b: tbps eval ICFG-size | metrics (t2i + i2t) s |",
        "| c: 2-GPU DDP | 2-GPU DDP | skipped",
    ):
        assert row in table, row

    result = json.loads(out.read_text())
    sections = result["sections"]
    assert set(sections) == {"a", "b", "c"}
    assert sections["a"]["status"] == "ok" and sections["b"]["status"] == "ok"
    assert sections["c"]["status"] == "skipped"
    train = sections["a"]["metrics"]
    assert train["framework"]["s_per_it"] > 0 and train["bare_1"]["s_per_it"] > 0
    assert train["ratio_framework_over_bare"] > 0
    # same initial weights and first batch: both paths compute the same first loss
    assert train["framework"]["first_loss"] == pytest.approx(
        train["bare_1"]["first_loss"], rel=1e-4
    )
    data = sections["b"]["metrics"]["data"]
    assert data["test_images"] == data["test_captions"] == 50 and data["test_ids"] == 20
    assert sections["b"]["metrics"]["encode_s"] > 0
    assert {r[0] for r in result["rows"]} == {
        "a: IRRA train step",
        "b: tbps eval ICFG-size",
        "c: 2-GPU DDP",
    }
    assert result["environment"]["torch"]
