"""edge_ad on the CPU against the tools a user would pick instead: one table, one run, one machine.

    python benchmarks/cpu_peers.py --json benchmarks/results/cpu-peers.json             # train, export, measure
    python benchmarks/cpu_peers.py --phase train                                         # the runs only
    python benchmarks/cpu_peers.py --models simplenet --phase measure --json ...         # re-measure one

For every model: one trained run per synthetic category (UniAD: one for all, its paper's unified
setting; SPR and DiffAD: the texture `weave`, as in benchmarks/accuracy.py), exported with its INT8
graph (`edge-ad export --int8`, calibrated on the run's good images). Then, on the first category's
bundle, every configuration below through `edge-ad bench` (edge_ad.runtime.bench: the same timing
code, model-only = a prepared batch -> image scores, e2e = 640 x 480 BGR frames -> Results), in
`--rounds` passes over all of them (the machine drifts: each row is the median of its rounds, each
round's FPS kept), and the image AUROC of each on every category's test split:

- torch-cpu: the checkpoint in PyTorch, eager FP32 (the training side's backend);
- onnxruntime-cpu: edge_ad's ONNX Runtime session on the FP32 graph; `:int8` on the Q/DQ graph;
- openvino-cpu: `:fp32` (f32 inference-precision hint), its default hint (bfloat16 on CPUs that have
  it: recorded in each row's "precision"), `:int8` on the Q/DQ graph (float parts f32), `:int8+bf16`
  (float parts at the bf16 hint);
- auto: what `edge_ad.load(bundle)` picks on this box (edge_ad's default CPU path: the fastest
  configuration that keeps the bundle's verdict set, edge_ad/runtime/auto_cpu.py), its pick in the label.

Training budgets are shortened to fit one session (`BUDGETS`, recorded per model): the table compares
configurations of the same trained model, and its AUROC column is the accuracy each configuration
keeps, not the best each model reaches (benchmarks/results/accuracy-synthetic.json has those).
SimpleNet runs at its paper's 288 px, the size the issue's goals name.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from common import environment, read_results, write_json

CATEGORIES = ("weave", "washer", "conveyor")
SPECS = ("torch-cpu", "onnxruntime-cpu", "onnxruntime-cpu:int8", "openvino-cpu:fp32", "openvino-cpu",
         "openvino-cpu:int8", "openvino-cpu:int8+bf16", "auto")
# (categories, TrainConfig fields): shortened CPU budgets, see the docstring.
BUDGETS: dict[str, tuple[tuple[str, ...], dict]] = {
    "simplenet": (CATEGORIES, {"epochs": 15, "model_kwargs": {"image_size": 288, "resize_size": 329}}),
    "mkd": (CATEGORIES, {}),
    "uniad": (CATEGORIES, {"epochs": 20}),
    "spr": (("weave",), {"epochs": 20}),
    "diffad": (("weave",), {"epochs": {"autoencoder": 10, "denoiser": 60, "segmentation": 20}}),
}
UNIFIED = {"uniad"}


def runs_of(name: str, folders: dict[str, Path], work: Path) -> dict[str, Path]:
    """category -> the run that scores it (UniAD: the same unified run for all)."""
    cats, _ = BUDGETS[name]
    if name in UNIFIED:
        return {c: work / name / "unified" for c in cats}
    return {c: work / name / c for c in cats}


def train_model(name: str, folders: dict[str, Path], work: Path) -> dict:
    """Train the model's runs that are not there yet; returns {run: seconds} of those trained now."""
    from edge_ad.training.run import TrainConfig, train

    cats, fields = BUDGETS[name]
    groups = [list(cats)] if name in UNIFIED else [[c] for c in cats]
    seconds = {}
    for group in groups:
        run = runs_of(name, folders, work)[group[0]]
        if (run / "run.json").is_file():
            continue
        start = time.perf_counter()
        train(TrainConfig(data=[str(folders[c]) for c in group], out=str(run), model=name, budget="cpu",
                          overwrite=True, **fields))
        seconds[run.name] = round(time.perf_counter() - start, 1)
        print(f"{name}: trained {run} in {seconds[run.name]:.0f} s", flush=True)
    return seconds


def export_bundles(name: str, folders: dict[str, Path], work: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """(category -> its bundle, with the INT8 graph where the export's check accepts one; category -> why
    the INT8 graph was refused). Each run is exported once."""
    from edge_ad_export.exporter import export_run
    from edge_ad_export.parity import ParityError

    bundles, refused = {}, {}
    for cat, run in runs_of(name, folders, work).items():
        out = run.parent / f"{run.name}.bundle"
        note = out.parent / f"{out.name}.int8-refused.txt"
        if not (out / "meta.json").is_file():
            try:
                export_run(run, out, overwrite=True, int8=True)
            except (ParityError, ValueError) as err:      # verdicts changed, or a diffusion pipeline
                note.write_text(str(err))
                export_run(run, out, overwrite=True)
        if note.is_file():
            refused[cat] = note.read_text()
        bundles[cat] = out
    return bundles, refused


def auroc_of(spec: str, bundle: Path, category: Path) -> tuple[float | None, str | None]:
    """(image AUROC of one configuration on one category's test split, what auto picked for that bundle);
    (None, None) where it cannot run here."""
    from edge_ad.bundle import read_bundle
    from edge_ad.runtime.bench import BenchConfig, accuracy, open_backend, read_test_split
    from edge_ad.runtime.preprocess import Geometry

    geometry = Geometry.from_dict(read_bundle(bundle).meta["geometry"])
    detector, _ = open_backend(spec, BenchConfig(bundle=bundle, batches=[8]))
    if detector is None:
        return None, None
    with detector:
        picked = getattr(detector.backend, "auto_probe", {}).get("picked")
        return accuracy(detector, *read_test_split(category, geometry), 8)["image_auroc"], picked


def _merged(rounds: list[dict]) -> list[dict]:
    """One row per (configuration, batch) from several bench runs: the median of the rounds' FPS and
    latencies, each round's FPS kept; rows keyed by the configuration asked for, so auto's rows stay one
    row when its pick differs between rounds (its label says each pick)."""
    by: dict[tuple[str, int], list[dict]] = {}
    for report in rounds:
        asked = {label: spec for spec, label in report["resolved"].items()}
        for row in report["rows"]:
            by.setdefault((asked.get(row["backend"], row["backend"]), row["batch"]), []).append(row)
    merged = []
    for (spec, _), rows in by.items():
        row = dict(rows[-1])
        labels = list(dict.fromkeys(r["backend"] for r in rows))
        row["spec"], row["backend"] = spec, " / ".join(labels) if spec == "auto" else rows[-1]["backend"]
        for mode in ("model", "e2e"):
            row[mode] = {**rows[-1][mode], **{k: statistics.median(r[mode][k] for r in rows)
                                              for k in ("fps", "p50_ms", "p99_ms", "mean_ms")},
                         "rounds_fps": [round(r[mode]["fps"], 1) for r in rows]}
        merged.append(row)
    return merged


def measure_model(name: str, folders: dict[str, Path], work: Path, iters: int, rounds: int,
                  batches: list[int], warmup: int = 5) -> dict:
    """Timing rows on the first category's bundle (`rounds` passes over every configuration, merged), and
    every configuration's AUROC on every category."""
    from edge_ad.runtime.bench import BenchConfig, run

    bundles, refused = export_bundles(name, folders, work)
    first = next(iter(bundles))
    reports = [run(BenchConfig(bundle=bundles[first], backends=list(SPECS), batches=batches, iters=iters, warmup=warmup),
                   echo=lambda line, k=k: print(f"  {name} round {k + 1}: {line}", flush=True)) for k in range(rounds)]
    rows = _merged(reports)
    for row in rows:
        row["is_auto"] = row["spec"] == "auto"
        scored = {c: auroc_of(row["spec"], bundles[c], folders[c]) for c in bundles}
        row["image_auroc"] = {c: v for c, (v, _) in scored.items()}
        if row["is_auto"]:
            row["auto_picked"] = {c: picked for c, (_, picked) in scored.items()}
        values = [v for v in row["image_auroc"].values() if v is not None]
        row["image_auroc_mean"] = sum(values) / len(values) if values else None
    cats, fields = BUDGETS[name]
    return {"rows": rows, "auto": [r["backend"] for r in rows if r["is_auto"]][:1], "int8_refused": refused,
            "skipped": reports[-1]["skipped"], "failed": {k: v for r in reports for k, v in r["failed"].items()},
            "rounds": rounds, "iters": iters, "warmup": warmup, "batches": batches, "int8": _int8_report(bundles),
            "budget": {"categories": list(cats), "unified": name in UNIFIED, "budget": "cpu", **fields},
            "bundle": str(bundles[first])}


def _int8_report(bundles: dict[str, Path]) -> dict:
    """Per category: the INT8 selection and check the export recorded (parity.json), where it wrote one."""
    out = {}
    for cat, bundle in bundles.items():
        parity = json.loads((bundle / "parity.json").read_text()) if (bundle / "parity.json").is_file() else {}
        report = parity.get("int8", {}).get("model.onnx")
        if report:
            search = report.get("search", {})
            out[cat] = {"int8_groups": search.get("int8_groups"), "int8_mac_share": search.get("int8_mac_share"),
                        "search_error": search.get("error"), "check": report.get("check")}
    return out


def markdown(results: dict) -> str:
    """The README's table: one line per model and configuration, batch 1 and 8."""
    lines = ["| model | configuration | precision | model-only FPS b1 / b8 | e2e FPS b1 / b8 | p50 / p99 ms b1 | "
             "image AUROC |", "|---|---|---|---|---|---|---|"]
    for name, entry in results.items():
        if name == "environment":
            continue
        by = {}
        for row in entry["rows"]:
            by.setdefault(row["backend"], {})[row["batch"]] = row
        for label, rows in by.items():
            one, eight = rows.get(1), rows.get(8)
            auto = ""
            fps = lambda mode: " / ".join(f"{r[mode]['fps']:.1f}" if r else "-" for r in (one, eight))  # noqa: E731
            auroc = one.get("image_auroc_mean") if one else None
            lines.append(f"| {name} | {label}{auto} | {one['precision'] if one else '-'} | {fps('model')} | "
                         f"{fps('e2e')} | {one['model']['p50_ms']:.2f} / {one['model']['p99_ms']:.2f} | "
                         f"{'-' if auroc is None else f'{auroc:.4f}'} |")
        for label, why in entry.get("skipped", {}).items():
            lines.append(f"| {name} | {label} | - | skipped: {why[:80]} | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(BUDGETS))
    parser.add_argument("--phase", choices=("train", "export", "measure", "all"), default="all")
    parser.add_argument("--work", default="runs/cpu-peers", help="data, runs and bundles go here (reused)")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3, help="passes over every configuration, merged by median")
    parser.add_argument("--warmup", type=int, default=5, help="calls before each timing")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--json", help="{model: {rows, budget, ...}}: the models measured replace their entries")
    parser.add_argument("--table", action="store_true", help="print the README table of --json and stop")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown(read_results(args.json)))
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from edge_ad.data.synthetic import Counts, make_category

    results = read_results(args.json) if args.json else {}
    work = Path(args.work)
    folders = {c: Path(make_category(work / "data", c, counts=Counts(train=40, test_good=15, test_per_defect=6),
                                     seed=0)) for c in CATEGORIES}
    for name in args.models.split(","):
        seconds = train_model(name, folders, work)
        if args.phase == "train":
            continue
        if args.phase == "export":
            print(f"{name}: INT8 refused for {export_bundles(name, folders, work)[1] or 'none'}", flush=True)
            continue
        batches = [int(b) for b in args.batches.split(",")]
        results[name] = {**measure_model(name, folders, work, args.iters, args.rounds, batches, args.warmup),
                         "train_seconds_now": seconds}
        results["environment"] = environment(("edge_ad", "torch", "onnxruntime", "openvino", "numpy"))
        if args.json:
            write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
