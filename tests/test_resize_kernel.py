"""The compiled INTER_AREA shrink (edge_ad._kernels.resize_area_cpu) against OpenCV, pixel for pixel.

prepare() feeds training and the runtime the same pixels, so the kernel behind its resize must give
exactly what cv2.resize(..., INTER_AREA) gives: camera and letterbox sizes, odd and random sizes, the
integer ratios (OpenCV's separate block path), 1, 3 and 4 channels, random, flat, binary (rounding
ties), gradient and rendered-scene content, row-strided views; both the AVX2 and the baseline build.
Then the binding's refusals, and prepare() with and without the kernel (OpenCV, or no compiled module
at all in a subprocess).
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest

from edge_ad.runtime import preprocess
from edge_ad.runtime.preprocess import FITS, Geometry, prepare

_kernels = pytest.importorskip("edge_ad._kernels", reason="the compiled kernels are what is tested here")
resize_area = _kernels.resize_area_cpu

BUILDS = [True, False]          # avx2: the AVX2 build where the CPU has it; False: the baseline build
# (src H, W) -> (dst H, W): camera frames to the letterbox sizes of 224 and 288 inputs, integer ratios
# (2x, 3x, 4x, 2x by 3x), one axis kept, one axis integer and the other not, odd and tiny sizes.
SIZES = [
    ((480, 640), (216, 288)), ((480, 640), (168, 224)), ((720, 1280), (162, 288)), ((720, 1280), (126, 224)),
    ((1080, 1920), (162, 288)), ((1080, 1920), (126, 224)), ((1024, 1024), (288, 288)),
    ((480, 640), (240, 320)), ((600, 600), (200, 200)), ((300, 300), (100, 100)), ((256, 256), (64, 64)),
    ((120, 180), (60, 60)), ((480, 640), (480, 320)), ((480, 640), (200, 640)), ((480, 640), (240, 300)),
    ((37, 53), (11, 17)), ((100, 100), (99, 99)), ((50, 70), (49, 69)), ((9, 9), (1, 1)), ((7, 13), (7, 5)),
    ((1, 100), (1, 7)), ((100, 1), (7, 1)), ((333, 517), (101, 257)), ((41, 41), (40, 3)),
]


def content(kind: str, h: int, w: int, cn: int, rng: np.random.Generator) -> np.ndarray:
    """A uint8 H x W x cn test image: random, flat, binary, gradient or checker content."""
    if kind == "random":
        return rng.integers(0, 256, (h, w, cn), dtype=np.uint8)
    if kind == "flat":
        return np.full((h, w, cn), rng.integers(0, 256), np.uint8)
    if kind == "binary":                  # 0/255: exact halves in many averages (rounding ties)
        return (rng.integers(0, 2, (h, w, cn)) * 255).astype(np.uint8)
    y, x = np.mgrid[0:h, 0:w]
    if kind == "gradient":
        return np.stack([(x * (c + 1) + y * 3) % 256 for c in range(cn)], -1).astype(np.uint8)
    return np.stack([((x // 2 + y // 2) % 2) * (c + 1) for c in range(cn)], -1).astype(np.uint8)   # checker


def as_channels(image: np.ndarray, cn: int) -> np.ndarray:
    """H x W for one channel (the common gray layout), else as is."""
    return np.ascontiguousarray(image[:, :, 0]) if cn == 1 else image


def cv2_area(image: np.ndarray, h: int, w: int) -> np.ndarray:
    out = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    return out.reshape(h, w, 1) if image.ndim == 3 and out.ndim == 2 else out


def assert_same(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.shape == want.shape and got.dtype == np.uint8, f"{what}: {got.shape} {got.dtype} vs {want.shape}"
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert diff.max() == 0, f"{what}: {np.count_nonzero(diff)} of {diff.size} values differ, max {diff.max()}"


@pytest.mark.parametrize("avx2", BUILDS, ids=["avx2", "baseline"])
@pytest.mark.parametrize("cn", [1, 3, 4])
def test_equals_opencv_on_listed_sizes(cn: int, avx2: bool) -> None:
    rng = np.random.default_rng(cn)
    for (sh, sw), (dh, dw) in SIZES:
        for kind in ("random", "binary", "gradient", "checker", "flat"):
            image = as_channels(content(kind, sh, sw, cn, rng), cn)
            assert_same(resize_area(image, dh, dw, avx2=avx2), cv2_area(image, dh, dw),
                        f"{sh}x{sw} -> {dh}x{dw}, {cn} channels, {kind}")


@pytest.mark.parametrize("avx2", BUILDS, ids=["avx2", "baseline"])
def test_equals_opencv_on_random_sizes(avx2: bool) -> None:
    rng = np.random.default_rng(7)
    for _ in range(150):
        sh, sw = (int(v) for v in rng.integers(1, 400, 2))
        dh, dw = int(rng.integers(1, sh + 1)), int(rng.integers(1, sw + 1))
        cn = int(rng.choice([1, 3, 4]))
        image = as_channels(content(str(rng.choice(["random", "binary", "gradient"])), sh, sw, cn, rng), cn)
        assert_same(resize_area(image, dh, dw, avx2=avx2), cv2_area(image, dh, dw), f"{sh}x{sw} -> {dh}x{dw}, {cn} ch")


def test_equals_opencv_on_rendered_scenes() -> None:
    """Real-looking frames (the synthetic factory scenes at camera sizes), smooth and textured."""
    from edge_ad.data.synthetic.scenes import CATEGORIES, render

    for name, (w, h) in zip(CATEGORIES, [(640, 480), (800, 600), (1280, 720), (640, 480), (1024, 768), (720, 540)]):
        frame, _ = render(dataclasses.replace(CATEGORIES[name], size=(w, h)), 3, None)
        for size in (224, 288, 256):
            _, _, dh, dw = Geometry.for_model(size, size, "letterbox").letterbox(h, w)
            for avx2 in BUILDS:
                assert_same(resize_area(frame, dh, dw, avx2=avx2), cv2_area(frame, dh, dw), f"{name} {w}x{h} -> {size}")


def test_views_with_row_strides() -> None:
    """Crops, tiles and flipped rows (any row stride, negative too), an H x W x 1 image, an out= view."""
    rng = np.random.default_rng(3)
    big = rng.integers(0, 256, (700, 900, 3), dtype=np.uint8)
    views = {"crop": big[13:493, 31:671], "flipped rows": big[::-1, 100:740], "every other row": big[::2, :640],
             "H x W x 1 crop": np.ascontiguousarray(big[..., :1])[5:485, 7:647],
             "gray crop": np.ascontiguousarray(big[..., 0])[5:485, 7:647]}
    for what, view in views.items():
        assert not view.flags.c_contiguous
        for avx2 in BUILDS:
            assert_same(resize_area(view, 216, 288, avx2=avx2), cv2_area(np.ascontiguousarray(view), 216, 288), what)
    canvas = np.zeros((288, 288, 3), np.uint8)
    region = canvas[36:252]                                 # a letterbox's content rows: out= writes in place
    assert resize_area(big[:480, :640], 216, 288, out=region) is region
    assert_same(region, cv2_area(big[:480, :640], 216, 288), "out= view")
    assert not canvas[:36].any() and not canvas[252:].any()


def test_refuses_what_it_does_not_take() -> None:
    image = np.zeros((48, 64, 3), np.uint8)
    cases = [
        (lambda: resize_area(image.astype(np.float32), 10, 10), TypeError, "must be uint8"),
        (lambda: resize_area(image.astype(np.uint16), 10, 10), TypeError, "must be uint8"),
        (lambda: resize_area(image[None], 10, 10), ValueError, "H x W or H x W x C"),
        (lambda: resize_area(np.zeros((48, 64, 2), np.uint8), 10, 10), ValueError, "1, 3 or 4 channels"),
        (lambda: resize_area(image, 96, 32), ValueError, "enlarge with cv2.resize"),
        (lambda: resize_area(image, 0, 32), ValueError, "between 1 and the input size"),
        (lambda: resize_area(image, 10, -3), ValueError, "between 1 and the input size"),
        (lambda: resize_area(np.zeros((0, 64, 3), np.uint8), 1, 1), ValueError, "image is empty"),
        (lambda: resize_area(image[..., ::-1], 10, 10), ValueError, "np.ascontiguousarray(image)"),
        (lambda: resize_area(image[:, ::2], 10, 10), ValueError, "np.ascontiguousarray(image)"),
        (lambda: resize_area(np.zeros((48, 64, 4), np.uint8)[..., :3], 10, 10), ValueError, "contiguous"),
        (lambda: resize_area(image, 10, 10, out=np.zeros((10, 11, 3), np.uint8)), ValueError, "out must have shape"),
        (lambda: resize_area(image, 10, 10, out=np.zeros((10, 10, 3), np.int8)), TypeError, "out must be uint8"),
        (lambda: resize_area(image, 10, 10, out=np.zeros((10, 10), np.uint8)), ValueError, "out must have shape"),
        (lambda: resize_area(image, 10, 10, out=image[:10, :10]), ValueError, "must not overlap"),
    ]
    frozen = np.zeros((10, 10, 3), np.uint8)
    frozen.flags.writeable = False
    cases.append((lambda: resize_area(image, 10, 10, out=frozen), ValueError, "writeable"))
    for call, error, words in cases:
        with pytest.raises(error, match=re.escape(words)):
            call()


def test_prepare_uses_the_kernel_for_camera_frames() -> None:
    """The fast path is the one taken for a frame; halvings, other dtypes and skipping views go to cv2."""
    if os.environ.get("EDGE_AD_KERNELS", "").strip().lower() == "numpy":
        pytest.skip("EDGE_AD_KERNELS=numpy asks for OpenCV throughout")
    frame = np.zeros((480, 640, 3), np.uint8)
    assert preprocess._AREA_KERNEL is resize_area
    assert preprocess._area_kernel_takes(frame, 216, 288)
    assert preprocess._area_kernel_takes(frame[10:400, 20:600], 216, 288)
    assert preprocess._area_kernel_takes(np.zeros((480, 640), np.uint8), 216, 288)
    assert not preprocess._area_kernel_takes(frame[..., 0], 216, 288)           # pixels 3 bytes apart
    assert not preprocess._area_kernel_takes(frame, 240, 320)                    # cv2's 2 x 2 path is faster
    assert not preprocess._area_kernel_takes(frame.astype(np.float32), 216, 288)
    assert not preprocess._area_kernel_takes(frame[..., ::-1], 216, 288)
    assert not preprocess._area_kernel_takes(np.zeros((480, 640, 2), np.uint8), 216, 288)
    rng = np.random.default_rng(2)
    for image in (rng.integers(0, 256, (480, 640), dtype=np.uint8), rng.integers(0, 256, (480, 640, 1), dtype=np.uint8)):
        assert preprocess._area_kernel_takes(image, 216, 288)
        want = cv2.resize(image, (288, 216), interpolation=cv2.INTER_AREA)       # H x W for both
        assert_same(preprocess._resize(image, 216, 288), want, f"_resize {image.shape}")


@pytest.mark.parametrize("fit", FITS)
def test_prepare_same_with_and_without_the_kernel(fit: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(11)
    frames = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(480, 640), (720, 1280), (333, 517)]]
    frames.append(rng.integers(0, 256, (400, 500, 3), dtype=np.uint8)[::-1])     # flipped rows
    geometry = Geometry.for_model(224, 256, fit)
    with_kernel = [prepare(frame, geometry) for frame in frames]
    monkeypatch.setattr(preprocess, "_AREA_KERNEL", None)
    for frame, got in zip(frames, with_kernel):
        want = prepare(np.ascontiguousarray(frame), geometry)
        assert got.shape == want.shape and got.flags.c_contiguous
        assert_same(got, want, f"prepare {frame.shape} {fit}")


def test_opencv_path_when_asked_or_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """EDGE_AD_KERNELS=numpy selects cv2; without the compiled module (a source install without a
    compiler, emulated in a fresh interpreter) prepare() still runs, with the same pixels."""
    monkeypatch.setenv("EDGE_AD_KERNELS", "numpy")
    assert preprocess._load_area_kernel() is None
    monkeypatch.delenv("EDGE_AD_KERNELS")
    assert preprocess._load_area_kernel() is resize_area
    frame = np.random.default_rng(5).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    want = prepare(frame, Geometry.for_model(288, 320))
    code = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "edge_ad._kernels":
                    raise ImportError("blocked in this test")
        sys.meta_path.insert(0, Block())
        import numpy as np
        from edge_ad.runtime import preprocess
        assert preprocess._AREA_KERNEL is None
        frame = np.random.default_rng(5).integers(0, 256, (480, 640, 3), dtype=np.uint8)
        sys.stdout.buffer.write(preprocess.prepare(frame, preprocess.Geometry.for_model(288, 320)).tobytes())
    """)
    env = {k: v for k, v in os.environ.items() if k != "EDGE_AD_KERNELS"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120, env=env)
    assert run.returncode == 0, run.stderr.decode()
    assert run.stdout == want.tobytes()


@pytest.mark.parametrize("fit", ["squash", "letterbox", "crop"])
@pytest.mark.parametrize("size", [(480, 640), (288, 288), (1080, 1920), (97, 131)])
def test_a_bgr_frame_swapped_after_the_resize_gives_the_pixels_of_swapping_first(fit, size) -> None:
    """Detector hands camera frames to prepare() in BGR and the swap happens on the model-sized output."""
    import cv2

    from edge_ad.runtime.preprocess import Geometry, prepare

    frame = np.random.default_rng(size[0]).integers(0, 256, (*size, 3), dtype=np.uint8)
    geometry = Geometry((329, 329), (288, 288), fit)
    want = prepare(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), geometry)
    got = prepare(frame, geometry, bgr=True)
    assert got.flags.c_contiguous and got.shape == (288, 288, 3) and np.array_equal(got, want)
