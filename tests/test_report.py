"""The run report (RUN/report/report.html) of `edge-ad eval` and `edge-ad train`.

No headless browser runs here (no Chromium; Playwright would download one), so the HTML is checked the
way a browser would need it: parsed with html.parser, every <img> has an inlined data: URI that
decodes (cv2.imdecode) to a non-empty image of its declared width and height, equal to the PNG written
beside the report, and nothing refers outside the file (no http(s), no file paths, no url()).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_ad.cli import main
from edge_ad.data.synthetic import Counts, make_category
from edge_ad.training.report import (Scored, operating_point, pr_points, roc_points, score_category, worst_cases,
                                     write_report)
from edge_ad.training.report_plots import nice_ticks

TINY = ["--image-size", "64", "--resize-size", "72", "--no-pretrained", "--epochs", "1", "--batch-size", "4"]


class _Page(HTMLParser):
    """Every tag's attributes, the text, and the tags' names in order."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def check_report(path: Path) -> tuple[_Page, list[np.ndarray]]:
    """Parse report.html; assert every image is inlined, decodes at its declared size and equals a PNG
    beside it, and that nothing is referenced outside the file. Returns the page and its images."""
    source = path.read_text(encoding="utf-8")
    page = _Page()
    page.feed(source)
    beside = {p.read_bytes() for p in path.parent.glob("*.png")}
    images = []
    for tag, attrs in page.tags:
        for key in ("src", "href", "srcset", "poster", "data", "action"):   # nothing loaded from elsewhere
            assert key not in attrs or attrs[key].startswith(("data:", "#")), (tag, key, attrs[key][:60])
        if tag == "img":
            assert attrs["src"].startswith("data:image/png;base64,"), attrs["src"][:40]
            data = base64.b64decode(attrs["src"].split(",", 1)[1], validate=True)
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            assert image is not None and image.size > 0 and image.std() > 0          # decodes, not blank
            assert image.shape[:2] == (int(attrs["height"]), int(attrs["width"]))
            assert data in beside                                                   # the same PNG on disk
            images.append(image)
    assert not re.search(r"https?:|url\(|file:|<script|<link", source, re.IGNORECASE)
    assert len(beside) == len(images)
    return page, images


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_category(tmp_path_factory.mktemp("data"), "washer",
                         counts=Counts(train=10, test_good=3, test_per_defect=2), seed=4)


@pytest.fixture(scope="module")
def run(tmp_path_factory, data) -> Path:
    """A tiny SimpleNet run trained through the CLI: its end writes the report."""
    out = tmp_path_factory.mktemp("run") / "run"
    assert main(["train", "--data", str(data), "--out", str(out), *TINY]) == 0
    return out


def test_train_writes_a_self_contained_report(run, data) -> None:
    page, images = check_report(run / "report" / "report.html")
    names = sorted(p.name for p in (run / "report").glob("*.png"))
    assert {"histogram.png", "roc.png", "pr.png"} <= set(names)
    text = " ".join(page.text)
    defects = sorted(d.name for d in (data / "test").iterdir() if d.name != "good")
    for defect in defects:                                   # the per-defect table names each defect
        assert defect in text
    metrics = json.loads((run / "metrics.json").read_text())
    assert f"{metrics['image_auroc']:.3f}" in text            # the same scores as the run's evaluation
    for defect, auroc in metrics["per_defect_image_auroc"].items():
        assert re.search(rf"{defect}\s*2\s*{auroc:.3f}", text)
    assert sum(image.shape[:2] == (480, 640) for image in images) == 3     # histogram, ROC, PR


def test_eval_rewrites_the_report_with_the_worst_cases(run) -> None:
    (run / "report" / "stale.png").write_bytes(b"old")
    assert main(["eval", str(run)]) == 0
    page, images = check_report(run / "report" / "report.html")
    assert not (run / "report" / "stale.png").exists()                 # replaced whole
    fps = sorted((run / "report").glob("fp_*.png"))
    fns = sorted((run / "report").glob("fn_*.png"))
    text = " ".join(page.text)
    info = json.loads((run / "run.json").read_text())
    threshold = info["calibration"]["image_threshold"]
    assert f"{threshold:.5g}" in text
    assert sum(1 for t, _ in page.tags if t == "figcaption") == len(images)     # a caption per figure
    fp, fn = map(int, re.search(r"false positives / false negatives\s*(\d+) / (\d+)", text).groups())
    assert (len(fps), len(fns)) == (min(fp, 6), min(fn, 6)) and fp + fn > 0     # this tiny model errs
    if not fps:
        assert "no good part scored above the threshold" in text
    if not fns:
        assert "no defective part scored at or below the threshold" in text
    for panel in [cv2.imread(str(p)) for p in fps + fns]:
        assert panel.shape[0] > 192 and panel.shape[1] > 2 * 192      # small crops are enlarged to be seen


def test_a_good_only_test_set_gets_the_histogram_and_says_why(run, data, tmp_path) -> None:
    good_only = tmp_path / "line"
    shutil.copytree(data / "train", good_only / "train")
    shutil.copytree(data / "test" / "good", good_only / "test" / "good")
    path = write_report(run, data=[str(good_only)])
    page, images = check_report(path)
    text = " ".join(page.text)
    assert "no defective test images" in text and "threshold" in text
    assert len(images) == 1 and sorted(p.name for p in path.parent.glob("*.png")) == ["histogram.png"]


def test_without_test_images_the_validation_split_is_shown(run, data) -> None:
    from edge_ad.training.adapter import UInt8Input
    from edge_ad.training.run import Category, load_categories, load_run
    from edge_ad.runtime.preprocess import Geometry

    info, model = load_run(run)
    category = Category("line", load_categories(str(data))[0].train, None)
    scored = score_category(category, info, UInt8Input(model, model.mean, model.std).eval(), model.heatmap_spec(),
                            Geometry.from_dict(info["geometry"]), "cpu", 4)
    assert scored.source == "validation" and len(scored.scores) == info["val_images"]
    assert (scored.labels == 0).all() and not scored.has_both


def test_curves_and_operating_point_by_hand() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.4, 0.8, 0.35, 0.9, 0.7])
    fpr, tpr = roc_points(labels, scores)
    # descending: 0.9 bad, 0.8 good, 0.7 bad, 0.4 good, 0.35 bad, 0.1 good
    assert fpr.tolist() == pytest.approx([0, 0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 1])
    assert tpr.tolist() == pytest.approx([0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 1, 1])
    recall, precision = pr_points(labels, scores)
    assert recall[-1] == 1 and precision[-1] == pytest.approx(0.5) and precision[1] == 1
    point = operating_point(labels, scores, 0.5)                       # flags 0.8 (good), 0.9, 0.7
    assert point == {"recall": pytest.approx(2 / 3), "false_positive_rate": pytest.approx(1 / 3),
                     "precision": pytest.approx(2 / 3), "f1": pytest.approx(2 / 3), "false_positives": 1,
                     "false_negatives": 1, "f1_max": pytest.approx(0.75),           # flagging 0.35 and up: 6 / 8
                     "f1_max_threshold": pytest.approx(0.225)}
    scored = Scored("c", "test", None, scores, labels, ["good"] * 3 + ["dent"] * 3, [""] * 6, np.zeros((6, 2, 2)))
    assert worst_cases(scored, 0.5) == ([2], [3])
    assert worst_cases(scored, 0.05) == ([2, 1, 0], [])


def test_ticks_are_round_and_cover_the_range() -> None:
    assert nice_ticks(0.0, 1.0) == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ticks = nice_ticks(0.37, 8.9)
    assert ticks[0] >= 0.37 and ticks[-1] <= 8.9 and len(ticks) >= 4
    assert all(float(t / (ticks[1] - ticks[0])).is_integer() for t in ticks)


def test_f1_max_is_the_deployable_threshold_of_metrics_json(run) -> None:
    """The report's F1-max threshold is metrics.json's (the runtime's `score > threshold` rule)."""
    page, _ = check_report(write_report(run))                 # the run's own test data, as metrics.json
    text = " ".join(page.text)
    point = json.loads((run / "metrics.json").read_text())["operating_point"]
    shown = re.search(r"F1-max \(at its threshold\)\s*(\S+) \(flagged above (\S+)\)", text)
    assert shown is not None, text
    assert shown.groups() == (f"{point['f1_max']:.3f}", f"{point['f1_max_threshold']:.5g}")


def test_names_that_are_not_utf8_are_shown_escaped(run, data, tmp_path) -> None:
    """A defect folder whose name is not valid UTF-8 (the per-defect table shows every defect)."""
    copy = tmp_path / "washer"
    shutil.copytree(data, copy)
    defect = sorted(d.name for d in (copy / "test").iterdir() if d.name != "good")[0]
    odd = os.fsdecode(defect.encode() + b"\xff")
    for split in ("test", "ground_truth"):
        if (copy / split / defect).is_dir():
            os.rename(copy / split / defect, copy / split / odd)
    report = write_report(run, data=[str(copy)])
    page, _ = check_report(report)
    assert f"{defect}\\xff" in " ".join(page.text)
