"""The README's promise: the backbone actually used is recorded in the run and in the bundle, also when
the requested one (MKD's VGG-16) cannot be had and the offline EfficientNet-Lite0 stands in."""

from __future__ import annotations

import json
import logging

from edge_ad.bundle import read_bundle
from edge_ad.data.synthetic import Counts, make_category
from edge_ad.models.backbones import OFFLINE_BACKBONE
from edge_ad.training.run import TrainConfig, train
from edge_ad_export.exporter import export_run


def test_requested_and_used_backbones_are_recorded(tmp_path, caplog) -> None:
    data = make_category(tmp_path / "data", "washer", counts=Counts(train=6, test_good=2, test_per_defect=1), seed=4)
    with caplog.at_level(logging.WARNING):
        train(TrainConfig(data=str(data), out=str(tmp_path / "run"), model="mkd", epochs=1, batch_size=4,
                          model_kwargs={"source": "vgg16", "image_size": 64}))
    run = json.loads((tmp_path / "run" / "run.json").read_text())["config"]
    bundle = read_bundle(export_run(tmp_path / "run", tmp_path / "bundle").path).meta["config"]
    assert run["requested_source"] == bundle["requested_source"] == "vgg16"
    assert run["source"] == bundle["source"]
    if run["source"] != "vgg16":          # no VGG-16 weights here (no hub, no cache): the stand-in is named
        assert run["source"] == OFFLINE_BACKBONE
        assert any("falling back to" in r.getMessage() for r in caplog.records)
