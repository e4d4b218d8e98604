"""16-bit images are scaled by their real depth: a 12-bit camera's 0..4095 becomes 0..255, not 0..15.

The depth is the one declared (bit_depth, --bit-depth), else the one a file declares (a TIFF's
MaxSampleValue, a PNG's sBIT when its values are stored unscaled), else 16; never guessed from the
values, but undeclared data that fits far fewer bits gets a hint in the log.
"""

from __future__ import annotations

import logging
import struct
import zlib

import cv2
import numpy as np
import pytest

import edge_ad
from edge_ad.cli import main
from edge_ad.imaging import (check_bit_depth, declared_bit_depth, read_image, read_image_depth, scale_words,
                             to_rgb_uint8)
from edge_ad.stream import FolderSource, IterableSource


def png_with_sbit(image: np.ndarray, bits: int) -> bytes:
    """A 16-bit PNG of `image` with an sBIT chunk declaring `bits` significant bits per channel."""
    data = cv2.imencode(".png", image)[1].tobytes()
    channels = 1 if image.ndim == 2 else 3
    body = b"sBIT" + bytes([bits] * channels)
    chunk = struct.pack(">I", channels) + body + struct.pack(">I", zlib.crc32(body))
    return data[:33] + chunk + data[33:]          # right after IHDR (8 + 25 bytes)


def tiff16(image: np.ndarray, max_value: int | None = None) -> bytes:
    """A baseline uncompressed 16-bit grayscale TIFF, with MaxSampleValue (tag 281) when given."""
    h, w = image.shape
    pixels = image.astype("<u2").tobytes()
    tags = [(256, 3, w), (257, 3, h), (258, 3, 16), (259, 3, 1), (262, 3, 1), (273, 4, 0), (277, 3, 1),
            (278, 3, h), (279, 4, len(pixels))] + ([(281, 3, max_value)] if max_value is not None else [])
    data_at = 8 + 2 + 12 * len(tags) + 4
    def entry(tag: int, kind: int, value: int) -> bytes:
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", data_at if tag == 273 else value)
        return struct.pack("<HHI", tag, kind, 1) + packed

    entries = b"".join(entry(*tag) for tag in sorted(tags))
    return b"II*\0" + struct.pack("<IH", 8, len(tags)) + entries + b"\0\0\0\0" + pixels


@pytest.fixture(scope="module")
def detector(tiny_bundle):
    return edge_ad.load(tiny_bundle, backend="onnxruntime-cpu")


def gradient12(h: int = 48, w: int = 64) -> np.ndarray:
    """12-bit values 0..4095 over the image, in 16-bit words."""
    return (np.linspace(0, 4095, h * w).reshape(h, w)).astype(np.uint16)


def test_12_bit_values_fill_the_8_bit_range() -> None:
    image = np.array([[0, 15, 16, 2048, 4095]], np.uint16)
    assert scale_words(image, 12).tolist() == [[0, 0, 1, 128, 255]]
    assert scale_words(image, 16).tolist() == [[0, 0, 0, 8, 15]]          # the old >> 8: near black
    assert to_rgb_uint8(image, bit_depth=12)[0, -1].tolist() == [255, 255, 255]


def test_16_bit_words_scale_as_before_and_overflow_clips() -> None:
    every = np.arange(65536, dtype=np.uint16)
    assert np.array_equal(scale_words(every, 16), (every >> 8).astype(np.uint8))
    old = (every >> 8).astype(np.uint8).reshape(256, 256)
    assert np.array_equal(to_rgb_uint8(every.reshape(256, 256))[..., 0], old)
    assert scale_words(np.array([4096, 65535], np.uint16), 12).tolist() == [255, 255]   # above 4095: white
    assert scale_words(np.array([1023], np.uint16), 10).tolist() == [255]
    assert scale_words(np.array([255], np.uint16), 8).tolist() == [255]


@pytest.mark.parametrize("bad", [7, 17, 12.0, True, "12"])
def test_a_bit_depth_outside_8_to_16_is_refused(bad) -> None:
    with pytest.raises(ValueError, match="from 8 to 16"):
        check_bit_depth(bad)
    with pytest.raises(ValueError, match="from 8 to 16"):
        to_rgb_uint8(np.zeros((2, 2), np.uint16), bit_depth=bad)


def test_a_png_whose_sbit_declares_12_bits_is_read_as_12_bit(tmp_path) -> None:
    path = tmp_path / "unscaled.png"
    path.write_bytes(png_with_sbit(gradient12(), 12))
    image, used = read_image_depth(path)
    assert (used.depth, used.how, used.max_value) == (12, "file", 4095)
    assert image.max() == 255 and image.dtype == np.uint8


def test_a_png_scaled_to_16_bits_as_the_standard_says_stays_16_bit(tmp_path) -> None:
    """sBIT with values that use the top bits: the writer scaled them (libpng does); >> 8 is right."""
    path = tmp_path / "scaled.png"
    path.write_bytes(png_with_sbit(gradient12() << 4, 12))
    image, used = read_image_depth(path)
    assert (used.depth, used.how) == (16, "word") and image.max() == 255


def test_a_png_that_declares_nothing_is_16_bit_unless_told(tmp_path) -> None:
    path = tmp_path / "plain.png"
    cv2.imwrite(str(path), gradient12())
    assert declared_bit_depth(path.read_bytes()) is None
    assert read_image(path).max() == 15                                    # as scaled before: the bug, kept
    assert read_image(path, bit_depth=12).max() == 255                     # declared: the real picture


def test_a_tiff_with_max_sample_value_is_read_at_that_depth(tmp_path) -> None:
    declared, plain = tmp_path / "declared.tif", tmp_path / "plain.tif"
    declared.write_bytes(tiff16(gradient12(), max_value=4095))
    plain.write_bytes(tiff16(gradient12()))
    assert declared_bit_depth(declared.read_bytes()) == 12
    assert read_image_depth(declared)[1].depth == 12 and read_image(declared).max() == 255
    assert read_image_depth(plain)[1].depth == 16 and read_image(plain).max() == 15


def test_a_declared_12_bit_camera_scores_like_its_8_bit_picture(detector) -> None:
    rng = np.random.default_rng(4)
    frame = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    words = frame.astype(np.uint16) << 4 | 0xF                            # the same picture, 12-bit
    plain = list(detector.stream(IterableSource([frame])))[0].result.score
    declared = list(detector.stream(IterableSource([words], bit_depth=12)))
    undeclared = list(detector.stream(IterableSource([words])))[0].result.score
    assert declared[0].result.score == pytest.approx(plain, rel=1e-5)
    assert undeclared != pytest.approx(plain, rel=1e-3)                   # near black: another picture


def test_undeclared_shallow_frames_get_a_hint_and_overflow_a_warning(detector, caplog) -> None:
    caplog.set_level(logging.INFO)
    frames = [gradient12() for _ in range(30)]
    list(detector.stream(IterableSource(frames, name="mono")))
    hints = [r.getMessage() for r in caplog.records if "never exceed 4095" in r.getMessage()]
    assert len(hints) == 1 and "12-bit" in hints[0] and "--bit-depth 12" in hints[0]
    caplog.clear()
    hot = gradient12()
    hot[0, 0] = 60000                                                       # a wrong depth, or a hot pixel
    stream = detector.stream(IterableSource([hot, hot], name="mono", bit_depth=12))
    items = list(stream)
    assert len(items) == 2 and stream.summary()["sources"]["mono"]["corrupt"] == 0
    warnings = [r.getMessage() for r in caplog.records if "above the 12-bit maximum" in r.getMessage()]
    assert len(warnings) == 1 and "60000" in warnings[0]


def test_a_folder_of_12_bit_pngs_is_scaled_by_the_declared_depth(detector, tmp_path, caplog) -> None:
    folder = tmp_path / "mono"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), gradient12())
    caplog.set_level(logging.WARNING)
    dark = list(detector.stream(FolderSource(folder, "mono")))[0]
    assert any("fit in 12 bits" in r.getMessage() for r in caplog.records)
    bright = list(detector.stream(FolderSource(folder, "mono", bit_depth=12)))[0]
    assert dark.frame.image.max() == 15 and bright.frame.image.max() == 255


def test_the_stream_command_takes_bit_depth(tiny_bundle, tmp_path, capsys) -> None:
    folder = tmp_path / "mono"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), gradient12())
    events = tmp_path / "events.jsonl"
    assert main(["stream", str(tiny_bundle), "--source", str(folder), "--bit-depth", "12", "--events", str(events),
                 "--events-frames", "all", "--backend", "onnxruntime-cpu"]) == 0
    assert main(["stream", str(tiny_bundle), "--source", str(folder), "--bit-depth", "17"]) == 2
    assert "from 8 to 16" in capsys.readouterr().err
