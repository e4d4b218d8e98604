"""The GPU check's CPU smoke mode: the same script a GPU run executes (benchmarks/gpu_check.py), on
tiny sizes, so it cannot rot between the rare runs on a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_mode_runs_every_cpu_stage_and_reports_parity(tmp_path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--out", str(tmp_path),
                           "--models", "simplenet,diffad"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu-check-smoke.json").read_text())
    stages = report["stages"]
    assert {k: v["status"] for k, v in stages.items()} == {
        "environment": "ok", "pytest": "skipped", "bandwidth": "skipped", "heatmap": "ok", "ddim": "ok",
        "models": "ok", "tensorrt": "skipped"}
    env = stages["environment"]["result"]
    assert env["versions"]["torch"] and ("cuda_error" in env)      # why there is no GPU, in words
    for row in stages["heatmap"]["result"]:                         # the kernel and torch ops agree
        assert row["max_abs_diff_interior"] < 1e-5 and row["edge_ad"]["median_ms"] > 0
    assert all(r["max_abs_diff"] < 1e-5 for r in stages["ddim"]["result"]["update"])
    models = stages["models"]["result"]
    assert {(r["model"], r["variant"]) for r in models["rows"]} == {
        (m, v) for m in ("simplenet", "diffad") for v in ("eager-fp32", "torch-cpu")}
    for row in models["rows"]:          # FP32 both: the folded graph computes what the model does
        assert row["fps"] > 0 and row["parity_vs_eager"]["max_diff_over_range"] < 1e-3
    for name, parity in models["ort_parity"].items():
        assert parity["finite"] and parity["max_diff_over_range"] < 1e-2, name
    assert "diffad" in models["papers"] and not models["errors"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the full check would run (make gpu-check)")
def test_without_a_gpu_the_full_check_says_so(tmp_path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path),
                           "--skip", "models"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "no CUDA device" in done.stderr
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    assert "run this on an NVIDIA GPU" in report["error"]
