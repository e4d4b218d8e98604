"""The soak run (slow: about 12 minutes): four sources for ten minutes, through benchmarks/soak.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_four_sources_for_ten_minutes(tmp_path) -> None:
    out = tmp_path / "soak.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "soak.py"), "--duration", "600", "--epochs", "10",
                    "--work", str(tmp_path / "work"), "--json", str(out)], check=True, timeout=1800)
    result = json.loads(out.read_text())
    assert len(result["sources"]) == 4 and result["duration_s"] >= 590
    assert result["rss_growth_pct"] < 5.0
    assert result["duplicate_frames"] == 0
    assert result["missed_anomalous_frames"] == 0 and result["labelled_frames_lost"] == 0
    assert result["anomalous_frames_labelled"] > 0
    per = result["per_source"]
    assert all(p["frames"] > 1000 for p in per.values())
    camera = next(p for name, p in per.items() if name.startswith("http"))
    assert camera["reconnects"] == 2 and camera["gap_seconds"] >= 6.0
