"""MKD and UniAD beyond the path every model shares (test_every_model.py): eval's localization modes,
unified training on two categories, the registry's errors. Tiny models from conftest.tiny_trained."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_ad.cli import main
from edge_ad.data.synthetic import Counts, make_category
from edge_ad.models import create_model, list_models

COUNTS = Counts(train=8, test_good=2, test_per_defect=1)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    return {name: make_category(root, name, counts=COUNTS, seed=2) for name in ("washer", "tiles")}


@pytest.fixture(scope="module", params=["mkd", "uniad"])
def trained(request, tiny_trained) -> dict:
    return tiny_trained(request.param)


def test_eval_reports_every_localization_mode(trained, capsys) -> None:
    assert main(["eval", str(trained["root"] / "run")]) == 0
    report = json.loads((trained["root"] / "run" / "eval.json").read_text())
    expected = ["discrepancy", "gradient"] if trained["name"] == "mkd" else ["exported"]
    assert list(report["modes"]) == expected
    for per in report["modes"].values():
        assert 0 <= per["washer"]["pixel_auroc"] <= 1
    exported = report["modes"][expected[0]]["washer"]
    assert exported["image_auroc"] == pytest.approx(trained["metrics"]["image_auroc"])


def test_unified_training_on_two_categories(data, tmp_path, capsys) -> None:
    args = ["train", "--model", "uniad", "--data", str(data["washer"]), str(data["tiles"]), "--out",
            str(tmp_path / "run"), "--epochs", "1", "--batch-size", "4", "--backbone", "tf_efficientnet_lite0",
            "--image-size", "96", "--no-pretrained"]
    assert main(args) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics["categories"]) == {"washer", "tiles"}
    per = [metrics["categories"][c]["image_auroc"] for c in ("washer", "tiles")]
    assert metrics["image_auroc"] == pytest.approx(np.mean(per))
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["train_images"] + info["val_images"] == 16


def test_registry_lists_models_and_rejects_unknown_names(capsys, tmp_path) -> None:
    assert {"simplenet", "mkd", "uniad"} <= set(list_models())
    with pytest.raises(ValueError, match="available: .*mkd.*simplenet.*uniad"):
        create_model("padim")
    assert main(["train", "--model", "padim", "--data", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "unknown model 'padim'" in capsys.readouterr().err
