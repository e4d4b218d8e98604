"""Many sources, one detector: batched inference, results routed back to their source, per-source figures."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

import edge_ad
from edge_ad.cli import main
from edge_ad.data.synthetic import write_conveyor_video
from edge_ad.stream.pipeline import _batch_size


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    paths = []
    for seed, frames in ((0, 24), (1, 16)):
        path = root / f"line{seed}.mp4"
        write_conveyor_video(path, frames=frames, seed=seed)
        paths.append(path)
    return paths


def _read_all(path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while (got := cap.read())[0]:
        frames.append(got[1])
    return frames


def test_frames_of_several_sources_share_batches_and_come_back_to_their_source(tiny_bundle, videos, tmp_path) -> None:
    detector = edge_ad.load(tiny_bundle, backend="onnxruntime-cpu")
    folder = tmp_path / "stills"
    folder.mkdir()
    stills = _read_all(videos[1])[:5]
    for k, image in enumerate(stills):
        cv2.imwrite(str(folder / f"{k}.png"), cv2.flip(image, 1))
    sizes: list[int] = []
    infer = detector.backend.infer

    def counting(batch):                       # the real backend, with its batch sizes noted
        sizes.append(len(batch))
        return infer(batch)

    detector.backend.infer = counting
    stream = detector.stream([str(videos[0]), str(videos[1]), str(folder)])
    items = list(stream)
    assert stream.batch == 3 and max(sizes) == 3 and sum(sizes) == len(items) == 24 + 16 + 5
    summary = stream.summary()
    assert {k: v["frames"] for k, v in summary["sources"].items()} == {"line0.mp4": 24, "line1.mp4": 16, "stills": 5}
    assert all(v["fps"] > 0 and v["latency_ms_p99"] >= v["latency_ms_p50"] > 0 for v in summary["sources"].values())
    detector.backend.infer = infer
    for name, frames, color in (("line0.mp4", _read_all(videos[0]), "BGR"), ("line1.mp4", _read_all(videos[1]), "BGR"),
                                ("stills", [cv2.cvtColor(cv2.flip(f, 1), cv2.COLOR_BGR2RGB) for f in stills], "RGB")):
        mine = [i for i in items if i.frame.source == name]
        assert [i.frame.index for i in mine] == list(range(len(frames)))
        alone = detector.predict(frames, color=color)
        np.testing.assert_allclose([i.result.score for i in mine], [r.score for r in alone], rtol=1e-4, atol=1e-5)


def test_engine_batch_limit(tiny_bundle) -> None:
    """A batch above an engine's profile is refused up front; predict splits larger lists into chunks."""
    assert _batch_size(None, 12, None) == 8 and _batch_size(None, 3, 2) == 2 and _batch_size(None, 1, None) == 1
    with pytest.raises(ValueError, match="batch 16 is above what the engine takes \\(8\\)"):
        _batch_size(16, 2, 8)
    detector = edge_ad.load(tiny_bundle, backend="onnxruntime-cpu")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (80, 100, 3), dtype=np.uint8) for _ in range(5)]
    whole = [r.score for r in detector.predict(images)]
    detector.backend.max_batch = 2             # as a TensorRT engine built for batches 1..2 reports
    assert detector.max_batch == 2
    np.testing.assert_allclose([r.score for r in detector.predict(images)], whole, rtol=1e-5)


def test_same_name_sources_are_told_apart(tiny_bundle, videos, tmp_path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(videos[1], other / videos[1].name)
    stream = edge_ad.load(tiny_bundle).stream([str(videos[1]), str(other / videos[1].name)])
    list(stream)
    assert set(stream.summary()["sources"]) == {"line1.mp4", "line1.mp4#2"}


def test_cli_streams_several_sources(tiny_bundle, videos, tmp_path, capsys) -> None:
    events = tmp_path / "events.jsonl"
    code = main(["stream", str(tiny_bundle), "--source", str(videos[0]), "--source", str(videos[1]),
                 "--events", str(events), "--batch", "2", "--video", str(tmp_path / "out.mp4")])
    assert code == 0
    out = capsys.readouterr().out
    assert "line0.mp4: ended, 24 frames" in out and "line1.mp4: ended, 16 frames" in out
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert lines[0]["sources"] == ["line0.mp4", "line1.mp4"] and lines[0]["batch"] == 2
    assert lines[-1]["frames"] == 40
    for name, n in (("line0", 24), ("line1", 16)):
        cap = cv2.VideoCapture(str(tmp_path / f"out.{name}.mp4"))      # one annotated video per source
        assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == n
