"""The run report: RUN/report/report.html, self-contained (its images inlined as data: URIs), plus the PNGs.

Written by `edge-ad eval RUN` and at the end of `edge-ad train`. Per category: the counts and the
operating point at the run's threshold (recall, false-positive rate, precision, F1, and F1-max with
its threshold), the ROC and precision-recall curves, the histogram of good and defective scores with
the threshold line, the image AUROC of each defect type, and the worst false positives (good parts
scored highest above the threshold) and false negatives (defective parts scored lowest at or below it)
with their heat maps. A run whose test images hold no defects (a good-only line) gets the histogram of
its good scores and the threshold, and says why the rest is absent.

The scores and maps are the exported model's, computed as evaluation computes them
(edge_ad.training.predict.predict on the test split through the run's geometry): the report agrees
with metrics.json and eval.json. A category with no test images at all is shown on the run's
validation split (normal images held out of training, the ones the threshold was calibrated on).

Every text the page shows (file and folder names included) goes through printable(): a file name
whose bytes are not valid UTF-8 shows each such byte as \\xNN, as results.csv of `edge-ad predict` does.
"""

from __future__ import annotations

import base64
import html
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge_ad import metrics
from edge_ad.metrics import image_auroc
from edge_ad.runtime.overlays import encode_png, render_panel, verdict_lines
from edge_ad.runtime.predict_files import printable
from edge_ad.runtime.preprocess import Geometry
from edge_ad.training.adapter import UInt8Input
from edge_ad.training.calibrate import Calibration
from edge_ad.training.data import Prepared, loader, train_val_parts
from edge_ad.training.predict import predict
from edge_ad.training.report_plots import histogram_chart, pr_chart, roc_chart
from edge_ad.training.run import COMPLETE, TrainConfig, categories_to_test, load_run, read_run_info

REPORT_DIR, REPORT_FILE = "report", "report.html"
WORST = 6                                  # false positives / negatives shown per category


@dataclass
class Scored:
    """One category's images as the exported model scores them (maps at the model's crop size)."""

    name: str
    source: str                            # "test", or "validation" when the category has no test images
    items: Prepared                        # the images (crops) and masks, by index
    scores: np.ndarray
    labels: np.ndarray
    defects: list[str]
    paths: list[str]
    maps: np.ndarray

    @property
    def has_both(self) -> bool:
        return bool((self.labels == 1).any() and (self.labels == 0).any())


# Scoring ------------------------------------------------------------------------------------------------

def _images_of(category, info: dict) -> tuple[str, object, list[int] | None]:
    """(source, dataset, indices): the test split, or the validation split of train/good without one."""
    test = getattr(category, "test", None)
    if test is not None and len(test) > 0:
        return "test", test, None
    fraction = float(info.get("val_fraction", TrainConfig.val_fraction))
    _, val = train_val_parts(category.train, getattr(category, "val", None), fraction, int(info.get("seed", 0)))
    return "validation", val.dataset, val.indices


def score_category(category, info: dict, wrapped: UInt8Input, spec, geometry, device: str,
                   batch_size: int) -> Scored:
    """Scores and maps of one category's test images (or validation images, see _images_of)."""
    source, dataset, indices = _images_of(category, info)
    items = Prepared(dataset, geometry, indices)
    pred = predict(wrapped, loader(items, batch_size, shuffle=False), spec, device)
    samples = [dataset.samples[i] for i in items.indices]
    return Scored(category.name, source, items, np.asarray(pred["scores"], np.float64),
                  np.asarray(pred["labels"]).astype(np.int64), [s.defect for s in samples],
                  [str(s.path) for s in samples], np.asarray(pred["maps"]))


# Numbers ------------------------------------------------------------------------------------------------

def roc_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rates, true-positive rates) at every distinct score taken as the threshold."""
    order = np.argsort(-scores, kind="mergesort")
    y, s = labels[order] == 1, scores[order]
    last = np.r_[s[1:] != s[:-1], True]
    tp, fp = np.cumsum(y)[last], np.cumsum(~y)[last]
    return np.r_[0.0, fp / max(fp[-1], 1)], np.r_[0.0, tp / max(tp[-1], 1)]


def pr_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(recalls, precisions) at every distinct score taken as the threshold, from recall 0."""
    order = np.argsort(-scores, kind="mergesort")
    y, s = labels[order] == 1, scores[order]
    last = np.r_[s[1:] != s[:-1], True]
    tp, flagged = np.cumsum(y)[last], np.arange(1, len(y) + 1)[last]
    precision = tp / flagged
    return np.r_[0.0, tp / max(int(y.sum()), 1)], np.r_[precision[0], precision]


def operating_point(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """edge_ad.metrics.operating_point (recall, false-positive rate, precision, F1, F1-max) plus the
    false-positive and false-negative counts the report lists."""
    point = metrics.operating_point(scores, labels, threshold)
    flagged, bad = scores > threshold, labels == 1
    return {**point, "false_positives": int((flagged & ~bad).sum()), "false_negatives": int((~flagged & bad).sum())}


def per_defect_rows(scored: Scored, threshold: float) -> list[tuple[str, int, float | None, float]]:
    """(defect, images, image AUROC against the good images or None without them, share flagged)."""
    good = scored.labels == 0
    rows = []
    for defect in sorted({d for d, label in zip(scored.defects, scored.labels) if label == 1}):
        this = np.array([d == defect for d in scored.defects]) & (scored.labels == 1)
        auroc = image_auroc(scored.labels[good | this], scored.scores[good | this]) if good.any() else None
        rows.append((defect, int(this.sum()), auroc, float((scored.scores[this] > threshold).mean())))
    return rows


def worst_cases(scored: Scored, threshold: float, limit: int = WORST) -> tuple[list[int], list[int]]:
    """Indices of the worst false positives (highest good scores above the threshold) and false
    negatives (lowest defective scores at or below it), at most `limit` each."""
    s, labels = scored.scores, scored.labels
    fp = [int(i) for i in np.argsort(-s, kind="mergesort") if labels[i] == 0 and s[i] > threshold]
    fn = [int(i) for i in np.argsort(s, kind="mergesort") if labels[i] == 1 and s[i] <= threshold]
    return fp[:limit], fn[:limit]


def case_panel(scored: Scored, index: int, cal: Calibration) -> np.ndarray:
    """One image's crop beside its heat map: the region over the pixel threshold outlined in white, the
    ground-truth region (when the data has masks) in green; verdict, scores and file in the caption."""
    item = scored.items[index]
    image = cv2.cvtColor(np.asarray(item["image"]), cv2.COLOR_RGB2BGR)
    raw = scored.maps[index].astype(np.float32)
    lo, hi = cal.pixel_norm
    truth = np.asarray(item["mask"]).astype(np.uint8) if "mask" in item else None
    score = float(scored.scores[index])
    normalized = float(np.clip((score - cal.image_norm[0]) / (cal.image_norm[1] - cal.image_norm[0]), 0, 1))
    name = printable(f"{scored.defects[index]}/{Path(scored.paths[index]).name}")
    return render_panel(image, np.clip((raw - lo) / (hi - lo), 0, 1), (raw >= cal.pixel_threshold).astype(np.uint8),
                        verdict_lines(score > cal.image_threshold, score, normalized, cal.image_threshold, name),
                        truth=truth)


# HTML ---------------------------------------------------------------------------------------------------

class _Page:
    """The report's HTML, built in order; each image is written as a PNG in `folder` and inlined."""

    def __init__(self, folder: Path, title: str) -> None:
        self.folder, self.parts = folder, [f"<h1>{_escape(title)}</h1>"]

    def add(self, markup: str) -> None:
        self.parts.append(printable(markup))

    def text(self, tag: str, text: str) -> None:
        self.parts.append(f"<{tag}>{_escape(text)}</{tag}>")

    def image(self, file_name: str, image: np.ndarray, caption: str) -> None:
        data = encode_png(image)
        (self.folder / file_name).write_bytes(data)
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        h, w = image.shape[:2]
        self.parts.append(f'<figure><img src="{uri}" width="{w}" height="{h}" alt="{_escape(caption)}">'
                          f"<figcaption>{_escape(caption)}</figcaption></figure>")

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        head = "".join(f"<th>{_escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{_escape(c)}</td>" for c in row) + "</tr>" for row in rows)
        self.parts.append(f"<table><tr>{head}</tr>{body}</table>")

    def html(self) -> str:
        style = ("body{font-family:sans-serif;margin:2em;max-width:1400px;color:#222}"
                 "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;"
                 "text-align:left}figure{display:inline-block;margin:0 1em 1em 0;vertical-align:top}"
                 "img{max-width:100%;height:auto}figcaption{font-size:90%;color:#555}.note{color:#a60}")
        return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>edge_ad report</title>"
                f"<style>{style}</style></head><body>\n" + "\n".join(self.parts) + "\n</body></html>\n")


def _escape(text: str) -> str:
    """Text as HTML: non-UTF-8 bytes of file names as \\xNN (printable), then <, >, & and quotes escaped."""
    return html.escape(printable(str(text)))


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "category"


def _section(page: _Page, scored: Scored, cal: Calibration, prefix: str) -> None:
    """One category: summary, charts, per-defect table and the worst cases."""
    thr = cal.image_threshold
    good, bad = scored.scores[scored.labels == 0], scored.scores[scored.labels == 1]
    page.text("h2", f"{scored.name}: {len(good)} good and {len(bad)} defective {scored.source} images")
    point = operating_point(scored.labels, scored.scores, thr)
    if not scored.has_both:
        why = ("no defective test images (a good-only run)" if not len(bad) else "no good test images")
        if scored.source == "validation":
            why = "no test images: the good parts shown are the validation split the threshold was calibrated on"
        page.add(f'<p class="note">{html.escape(why)}: the ROC and precision-recall curves, the AUROC and the '
                 "per-defect table need good and defective images; only the score histogram and the "
                 "threshold are shown.</p>")
    rows = [["threshold (image score)", f"{thr:.5g}"], ["good parts flagged (false-positive rate)", _fmt(point["false_positive_rate"])]]
    if scored.has_both:
        rows += [["image AUROC", _fmt(image_auroc(scored.labels, scored.scores))],
                 ["recall at the threshold", _fmt(point["recall"])], ["precision", _fmt(point["precision"])],
                 ["F1", _fmt(point["f1"])],
                 ["F1-max (at its threshold)",
                  f"{_fmt(point['f1_max'])} (flagged above {point['f1_max_threshold']:.5g})"],
                 ["false positives / false negatives", f"{point['false_positives']} / {point['false_negatives']}"]]
    page.table(["", "value"], rows)
    page.image(f"{prefix}histogram.png", histogram_chart(good, bad, thr, good_name=f"good {scored.source}"),
               "Scores of good and defective parts; the dashed line is the threshold (above it: flagged)")
    if not scored.has_both:
        return
    fpr, tpr = roc_points(scored.labels, scored.scores)
    page.image(f"{prefix}roc.png", roc_chart(fpr, tpr, image_auroc(scored.labels, scored.scores),
                                            (point["false_positive_rate"], point["recall"])), "ROC curve; the dot is the threshold")
    recall, precision = pr_points(scored.labels, scored.scores)
    page.image(f"{prefix}pr.png", pr_chart(recall, precision, float(len(bad) / len(scored.labels)),
                                          (point["recall"], point["precision"] or 0.0)),
               "Precision-recall curve; the dot is the threshold")
    page.text("h3", "Image AUROC per defect type")
    page.table(["defect", "images", "image AUROC", "flagged at the threshold"],
               [[d, str(n), _fmt(a), f"{share:.0%}"] for d, n, a, share in per_defect_rows(scored, thr)])
    _worst(page, scored, cal, prefix)


def _worst(page: _Page, scored: Scored, cal: Calibration, prefix: str) -> None:
    """The worst false positives and false negatives with their heat maps (or a line saying there are none)."""
    fps, fns = worst_cases(scored, cal.image_threshold)
    if fps or fns:
        page.text("p", "Each case: the model's input beside its heat map; white outline: pixels over the pixel "
                       "threshold; green outline: the ground-truth defect (when the data has masks).")
    for title, indices, none, tag in (
            ("Worst false positives (good parts flagged)", fps, "no good part scored above the threshold", "fp"),
            ("Worst false negatives (defective parts missed)", fns, "no defective part scored at or below the "
             "threshold", "fn")):
        page.text("h3", title)
        if not indices:
            page.text("p", f"None: {none}.")
        for rank, i in enumerate(indices, 1):
            page.image(f"{prefix}{tag}_{rank}.png", case_panel(scored, i, cal),
                       f"{scored.paths[i]}: score {scored.scores[i]:.5g}")


# Writing ------------------------------------------------------------------------------------------------

def write_report(run_dir: str | Path, *, data: list[str] | None = None, device: str = "cpu",
                 batch_size: int = 8) -> Path:
    """Score the run's test data (or `data`) and write RUN/report/ (replacing an earlier report whole);
    returns the path of report.html."""
    run_dir = Path(run_dir)
    info, model = load_run(run_dir)
    model = model.to(device)
    geometry = Geometry.from_dict(info["geometry"])
    cal = Calibration.from_dict(info["calibration"])
    wrapped = UInt8Input(model, model.mean, model.std).to(device).eval()
    categories = categories_to_test(info, data)
    scored = [score_category(c, info, wrapped, model.heatmap_spec(), geometry, device, batch_size) for c in categories]
    _remove_stale(run_dir)
    stage = Path(tempfile.mkdtemp(prefix=f".{REPORT_DIR}-{os.getpid()}-", dir=run_dir))
    try:
        page = _Page(stage, f"edge_ad report: {info['model']} ({run_dir.resolve().name})")
        page.text("p", f"Model {info['model']}; threshold {cal.image_threshold:.5g} (calibrated on "
                       f"{cal.normal_images} normal validation images); written {time.strftime('%Y-%m-%d %H:%M:%S')}.")
        for s in scored:
            _section(page, s, cal, f"{_slug(s.name)}_" if len(scored) > 1 else "")
        (stage / REPORT_FILE).write_text(page.html(), encoding="utf-8")
        _replace(stage, run_dir / REPORT_DIR)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return run_dir / REPORT_DIR / REPORT_FILE


def _remove_stale(run_dir: Path) -> None:
    """Remove the half-written report folders of writers that were killed (their process is gone)."""
    for path in run_dir.glob(f".{REPORT_DIR}-*"):
        pid = path.name.split("-")[-2] if "-old-" not in path.name else None
        if path.is_dir() and not path.is_symlink() and (pid is None or not _alive(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: str) -> bool:
    """Whether the process `pid` (text) runs now, other than this one."""
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _replace(stage: Path, target: Path) -> None:
    """Put the finished folder `stage` at `target`, an earlier report there removed (never half of one)."""
    old = None
    if target.exists() or target.is_symlink():
        if target.is_symlink() or not target.is_dir():
            raise FileExistsError(f"{target} exists and is not a report folder; move it away to write the report")
        old = target.with_name(f".{REPORT_DIR}-old-{os.getpid()}-{time.time_ns()}")
        os.rename(target, old)
    os.rename(stage, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def report_if_complete(run_dir: str | Path, *, data: list[str] | None = None, device: str = "cpu",
                       batch_size: int = 8) -> Path | None:
    """write_report for a run that finished (all stages trained, calibrated, evaluated); None otherwise
    (a staged model trained in parts: the report comes with its last stage)."""
    info = read_run_info(Path(run_dir))
    if not info or info.get("status") != COMPLETE:
        return None
    return write_report(run_dir, data=data, device=device, batch_size=batch_size)
