"""The soak run (slow: about 13 minutes): four sources for ten minutes through benchmarks/soak.py, an RTSP
H.264 camera taken down and brought back twice, an HTTP camera likewise, and the MQTT broker stopped for
a minute. Needs GStreamer's RTSP server and mosquitto (.ci/run installs them)."""

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
                    "--work", str(tmp_path / "work"), "--json", str(out)], check=True, timeout=2400)
    result = json.loads(out.read_text())
    assert len(result["sources"]) == 4 and result["duration_s"] >= 590
    assert result["rss_growth_pct"] < 5.0
    assert result["duplicate_frames"] == 0
    assert set(result["file_frames_lost"].values()) == {0}                 # files lose nothing
    assert result["missed_anomalous_frames"] == 0 and result["anomalous_frames_labelled"] > 0
    assert all(p["frames"] > 1000 for p in result["per_source"].values())
    assert result["rtsp_camera"]["reconnects"] == 2 and result["rtsp_camera"]["gap_seconds"] >= 10.0
    assert result["mjpeg_camera"]["reconnects"] == 2 and result["mjpeg_camera"]["gap_seconds"] >= 6.0
    mqtt = result["mqtt"]
    assert mqtt["accepted"] == mqtt["anomalous_frames"] == result["anomalous"] > 0
    assert mqtt["delivered"] + mqtt["dropped_queue_full"] + mqtt["refused"] + mqtt["failed"] + mqtt["unsent_at_end"] \
        + mqtt["queued_at_end"] == mqtt["accepted"]
    assert mqtt["received_by_subscriber"] == mqtt["delivered"] and mqtt["received_for_frames_after_broker_back"] > 0
