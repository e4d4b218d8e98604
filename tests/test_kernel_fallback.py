"""The NumPy/OpenCV fallback of the kernels (edge_ad.postprocess_numpy) against the compiled module.

Parity on a grid of heatmap parameters and DDIM steps, the same errors for the same bad arguments, and,
in subprocesses: the runtime with edge_ad._kernels blocked (one warning, a real bundle's predictions
equal to the compiled kernels'), EDGE_AD_KERNELS=numpy, and `edge-ad info` naming the implementation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import edge_ad
from edge_ad import postprocess, postprocess_numpy

_kernels = pytest.importorskip("edge_ad._kernels", reason="the compiled kernels are the reference here")

# Fallback vs compiled: |difference| <= RTOL x the largest |value| of the compiled map (float32 rounding:
# the compiled kernel folds up-sampling and smoothing into one float32 matrix per axis; measured 2e-6).
RTOL = 1e-5

# (n, h, w, H, W): up- and down-sampling, non-square, batch > 1, a single pixel, filters wider than the map.
SHAPES = [
    (8, 36, 36, 288, 288),
    (3, 13, 17, 101, 77),
    (2, 5, 9, 64, 31),
    (2, 40, 40, 40, 40),
    (1, 7, 7, 9, 9),
    (2, 50, 40, 20, 17),
    (4, 1, 1, 5, 7),
    (2, 64, 48, 31, 97),
]
# (smooth, sigma, window): odd and even windows, a window of 1, sigmas from narrow to wide.
FILTERS = [
    ("gaussian", 4.0, 0), ("gaussian", 0.5, 0), ("gaussian", 2.3, 0), ("gaussian", 9.0, 0),
    ("box", 0.0, 16), ("box", 0.0, 5), ("box", 0.0, 1), ("box", 0.0, 31), ("none", 0.0, 0),
]

BLOCK_KERNELS = """
import sys
class _BlockKernels:
    def find_spec(self, name, path=None, target=None):
        if name == "edge_ad._kernels":
            raise ImportError("edge_ad._kernels is blocked in this test")
sys.meta_path.insert(0, _BlockKernels())
"""
WARNING = "compiled kernels are not installed"


@pytest.fixture(scope="module", autouse=True)
def compiled_in_this_process() -> None:
    if postprocess.kernel_impl() != "compiled":
        pytest.skip("these tests compare against the compiled kernels; unset EDGE_AD_KERNELS")


def run_python(code: str, *, block: bool = False, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run code in a fresh interpreter (edge_ad._kernels unimportable when block)."""
    script = (BLOCK_KERNELS if block else "") + textwrap.dedent(code)
    full_env = {k: v for k, v in os.environ.items() if k != "EDGE_AD_KERNELS"} | (env or {})
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=full_env)
    assert out.returncode == 0, out.stderr
    return out


def assert_close(got: np.ndarray, ref: np.ndarray, what: str) -> None:
    scale = max(float(np.abs(ref).max()), 1e-6)
    err = float(np.abs(got - ref).max()) / scale
    assert err <= RTOL, f"{what}: max |fallback - compiled| = {err:.2e} x max|map| > {RTOL}"


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_heatmap_matches_compiled(shape) -> None:
    n, h, w, out_h, out_w = shape
    rng = np.random.default_rng(h * w + out_h)
    outputs = [(False, None), (True, None), (False, (-0.5, 1.5)), (True, (-0.5, 1.5))]   # score_from_raw, normalize
    for i, (smooth, sigma, window) in enumerate(FILTERS):
        for align_corners in (False, True):
            for score_from_raw, norm in (outputs[(2 * i + align_corners) % 4], outputs[(2 * i + align_corners + 1) % 4]):
                raw = rng.standard_normal((n, h, w)).astype(np.float32)
                kw = dict(smooth=smooth, sigma=sigma, window=window, align_corners=align_corners,
                          score_from_raw=score_from_raw, threshold=0.3,
                          norm_min=None if norm is None else norm[0], norm_max=None if norm is None else norm[1])
                try:
                    ref_maps, ref_scores, ref_masks = _kernels.heatmap_cpu(raw, out_h, out_w, **kw)
                except ValueError:      # the compiled kernel's band limit (strong down-sampling, wide filter)
                    with pytest.raises(ValueError, match="spans"):
                        postprocess_numpy.heatmap_cpu(raw, out_h, out_w, **kw)
                    continue
                maps, scores, masks = postprocess_numpy.heatmap_cpu(raw, out_h, out_w, **kw)
                what = f"{shape} {kw}"
                assert maps.dtype == np.float32 and scores.dtype == np.float32 and masks.dtype == np.uint8
                assert maps.shape == ref_maps.shape and scores.shape == (n,) and masks.shape == ref_masks.shape
                assert_close(maps, ref_maps, what)
                assert_close(scores, ref_scores, what + " scores")
                near = np.abs(ref_maps - 0.3) <= RTOL * max(float(np.abs(ref_maps).max()), 1e-6)
                assert np.array_equal(masks[~near], ref_masks[~near]), what + " masks"


@pytest.mark.parametrize("method", ["matrix", "separable"])
def test_both_fallback_paths_match_compiled(method) -> None:
    """The fallback picks a path by size; each must hold on every shape and filter."""
    rng = np.random.default_rng(7)
    for n, h, w, out_h, out_w in SHAPES:
        raw = rng.standard_normal((n, h, w)).astype(np.float32)
        for smooth, sigma, window in FILTERS:
            for align_corners in (False, True):
                kw = dict(smooth=smooth, sigma=sigma, window=window, align_corners=align_corners)
                try:
                    ref = _kernels.heatmap_cpu(raw, out_h, out_w, **kw)[0]
                except ValueError:
                    continue
                got = postprocess_numpy.full_size_maps(raw, out_h, out_w, method=method, **kw)
                assert_close(got, ref, f"{method} {(n, h, w, out_h, out_w)} {kw}")


def test_float16_input_matches() -> None:
    raw = np.random.default_rng(3).standard_normal((2, 28, 28)).astype(np.float16)
    ref = _kernels.heatmap_cpu(raw, 224, 224)
    got = postprocess_numpy.heatmap_cpu(raw, 224, 224)
    assert_close(got[0], ref[0], "fp16 maps")
    assert_close(got[1], ref[1], "fp16 scores")


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("clamp", [None, 1.0])
def test_ddim_step_matches_compiled(dtype, clamp) -> None:
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((4, 4, 16, 16)) * 2).astype(dtype)
    eps = rng.standard_normal(x.shape).astype(dtype)
    ref = _kernels.ddim_step_cpu(x, eps, 0.3, 0.8, clamp=clamp)
    got = postprocess_numpy.ddim_step_cpu(x, eps, 0.3, 0.8, clamp=clamp)
    assert got.dtype == dtype and got.shape == x.shape
    if dtype == np.float16:   # one rounding to fp16 of float32 values that agree to float32 rounding
        assert np.abs(got.view(np.int16).astype(int) - ref.view(np.int16).astype(int)).max() <= 1
    else:
        assert_close(got, ref, f"ddim clamp={clamp}")
    in_place = x.copy()
    assert postprocess_numpy.ddim_step_cpu(in_place, eps, 0.3, 0.8, clamp=clamp, out=in_place) is in_place
    assert np.array_equal(in_place, got)


BAD_HEATMAP = [
    (np.zeros((1, 4, 4)), {}),                                    # float64
    (np.zeros((4, 4), np.float32), {}),                           # 2-D
    (np.zeros((1, 4, 8), np.float32)[:, :, ::2], {}),             # not contiguous
    (np.zeros((1, 4, 4), np.float32), {"sigma": 0.0}),
    (np.zeros((1, 4, 4), np.float32), {"sigma": 300.0}),          # more than 1025 taps
    (np.zeros((1, 4, 4), np.float32), {"smooth": "box", "window": 0}),
    (np.zeros((1, 4, 4), np.float32), {"smooth": "median"}),
    (np.zeros((1, 4, 4), np.float32), {"norm_min": 1.0, "norm_max": 1.0}),
    (np.zeros((1, 4, 4), np.float32), {"norm_min": 1.0}),
    (np.zeros((1, 4, 4), np.float32), {"threads": -1}),
    (np.zeros((0, 4, 4), np.float32), {}),
    (np.zeros((1, 4, 4), np.float32), {"out_h": 0}),
    (np.zeros((1, 300, 300), np.float32), {"out_h": 300, "out_w": 300, "sigma": 20.0}),   # band > 128
    (np.zeros((1, 1024, 4), np.float32), {"smooth": "box", "window": 5}),                # down-sampling 128x
]


@pytest.mark.parametrize("raw,kw", BAD_HEATMAP, ids=range(len(BAD_HEATMAP)))
def test_heatmap_refuses_what_compiled_refuses(raw, kw) -> None:
    kw = {"out_h": 8, "out_w": 8} | kw
    with pytest.raises((TypeError, ValueError)) as compiled:
        _kernels.heatmap_cpu(raw, **kw)
    with pytest.raises(compiled.type):
        postprocess_numpy.heatmap_cpu(raw, **kw)


def test_ddim_refuses_what_compiled_refuses() -> None:
    x = np.zeros((2, 3), np.float32)
    read_only = np.zeros((2, 3), np.float32)
    read_only.flags.writeable = False
    cases = [
        (x, x, 0.0, 0.5, {}), (x, x, 0.5, 1.5, {}), (x, x, float("nan"), 0.5, {}), (x, x, 0.5, 0.5, {"clamp": 0.0}),
        (x, np.zeros((3, 2), np.float32), 0.5, 0.5, {}), (x, x.astype(np.float16), 0.5, 0.5, {}),
        (x, x, 0.5, 0.5, {"out": np.zeros(5, np.float32)}), (x, x, 0.5, 0.5, {"out": read_only}),
        (x.astype(np.float64), x.astype(np.float64), 0.5, 0.5, {}), (x[:0], x[:0], 0.5, 0.5, {}),
    ]
    for x_t, eps, a_t, a_prev, kw in cases:
        with pytest.raises((TypeError, ValueError)) as compiled:
            _kernels.ddim_step_cpu(x_t, eps, a_t, a_prev, **kw)
        with pytest.raises(compiled.type):
            postprocess_numpy.ddim_step_cpu(x_t, eps, a_t, a_prev, **kw)


def test_runtime_without_compiled_module(tiny_bundle, tmp_path) -> None:
    """_kernels unimportable: the runtime and stream import, one warning, and a real bundle predicts
    what it predicts with the compiled kernels; CUDA arrays are refused with what to do."""
    rng = np.random.default_rng(11)
    images = [rng.integers(0, 256, (80, 96, 3), dtype=np.uint8) for _ in range(3)]
    np.save(tmp_path / "images.npy", np.stack(images))
    raw = rng.standard_normal((2, 1, 9, 9)).astype(np.float32)
    np.save(tmp_path / "raw.npy", raw)
    out = run_python(f"""
        import json
        import numpy as np
        import edge_ad, edge_ad.runtime, edge_ad.stream
        from edge_ad import postprocess
        raw = np.load({str(tmp_path / "raw.npy")!r})
        maps, scores = postprocess.heatmap(raw, 64)
        postprocess.heatmap(raw, (40, 30), smooth="box", window=4)
        x = np.ones((2, 4), np.float32)
        postprocess.ddim_step(x, x, 0.5, 0.9, clamp=1.0, out=x)
        det = edge_ad.load({str(tiny_bundle)!r}, backend="onnxruntime-cpu")
        results = det.predict(list(np.load({str(tmp_path / "images.npy")!r})))
        np.savez({str(tmp_path / "fallback.npz")!r}, maps=maps, scores=scores,
                 crop_maps=np.stack([r.crop_map for r in results]), det_scores=[r.score for r in results])
        class CudaLike:
            __cuda_array_interface__ = {{"shape": (1, 4, 4), "typestr": "<f4", "data": (1, False), "version": 3}}
        try:
            postprocess.heatmap(CudaLike(), 16)
            cuda_error = None
        except RuntimeError as err:
            cuda_error = str(err)
        print(json.dumps({{"impl": postprocess.kernel_impl(), "cuda": postprocess.cuda_available(),
                          "cuda_error": cuda_error, "kernels_loaded": "edge_ad._kernels" in sys.modules}}))
    """, block=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["impl"] == "numpy" and report["cuda"] is False and report["kernels_loaded"] is False
    assert "compiled kernels" in report["cuda_error"] and "reinstall" in report["cuda_error"]
    assert out.stderr.count(WARNING) == 1, out.stderr
    assert "pip install" in out.stderr

    fallback = np.load(tmp_path / "fallback.npz")
    ref_maps, ref_scores = postprocess.heatmap(raw, 64)
    assert_close(fallback["maps"], ref_maps, "heatmap through postprocess")
    assert_close(fallback["scores"], ref_scores, "scores through postprocess")
    results = edge_ad.load(tiny_bundle, backend="onnxruntime-cpu").predict(images)
    assert_close(fallback["crop_maps"], np.stack([r.crop_map for r in results]), "Detector crop maps")
    assert_close(fallback["det_scores"], np.array([r.score for r in results]), "Detector scores")


def test_forced_fallback_env_var() -> None:
    """EDGE_AD_KERNELS=numpy runs the fallback even with the compiled module present, without a warning."""
    out = run_python("""
        import json, sys
        import numpy as np
        from edge_ad import postprocess, _kernels
        raw = np.random.default_rng(0).standard_normal((3, 20, 24)).astype(np.float32)
        maps, scores = postprocess.heatmap(raw, (160, 192), sigma=3.0)
        ref_maps, ref_scores, _ = _kernels.heatmap_cpu(raw, 160, 192, sigma=3.0)
        err = float(np.abs(maps - ref_maps).max() / np.abs(ref_maps).max())
        print(json.dumps({"impl": postprocess.kernel_impl(), "err": err,
                          "fallback_loaded": "edge_ad.postprocess_numpy" in sys.modules}))
    """, env={"EDGE_AD_KERNELS": "numpy"})
    report = json.loads(out.stdout)
    assert report == {"impl": "numpy", "err": pytest.approx(0, abs=RTOL), "fallback_loaded": True}
    assert WARNING not in out.stderr


def test_compiled_is_the_default_and_can_be_required() -> None:
    postprocess.heatmap(np.zeros((1, 4, 4), np.float32), 8)
    default = run_python("""
        import sys
        import numpy as np
        from edge_ad import postprocess
        postprocess.heatmap(np.zeros((1, 4, 4), np.float32), 8)
        print(postprocess.kernel_impl(), "edge_ad.postprocess_numpy" in sys.modules)
    """)
    assert default.stdout.split() == ["compiled", "False"]
    script = BLOCK_KERNELS + "import edge_ad.postprocess\n"
    env = {k: v for k, v in os.environ.items() if k != "EDGE_AD_KERNELS"} | {"EDGE_AD_KERNELS": "compiled"}
    required = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert required.returncode != 0 and "EDGE_AD_KERNELS=compiled" in required.stderr


@pytest.mark.parametrize("env,block,expected", [({}, False, "compiled"), ({"EDGE_AD_KERNELS": "numpy"}, False, "numpy"),
                                                ({}, True, "numpy")], ids=["default", "forced", "missing"])
def test_info_names_the_implementation(env, block, expected) -> None:
    out = run_python("""
        import sys
        from edge_ad.cli import main
        sys.exit(main(["info"]))
    """, block=block, env=env)
    info = json.loads(out.stdout)
    assert info["kernels"] == expected
    if block:
        assert info["kernels_have_cuda"] is False and "not installed" in info["cuda_error"]


@pytest.mark.parametrize("score_from", ["raw", "smoothed"])
def test_nan_maps_score_as_the_compiled_kernel(score_from) -> None:
    """All-NaN images score -inf in both (NaN never wins the running max); a finite pixel still counts."""
    raw = np.full((2, 8, 8), np.nan, np.float32)
    raw[1, 2, 2] = 3.0
    kw = dict(smooth="gaussian", sigma=2.0, score_from_raw=score_from == "raw")
    want = _kernels.heatmap_cpu(raw, 16, 16, **kw)[1]
    got = postprocess_numpy.heatmap_cpu(raw, 16, 16, **kw)[1]
    np.testing.assert_array_equal(got, want)
    assert want[0] == -np.inf


def _outcome(fn, raw, **kw):
    """('ok', maps, scores, masks) or ('refused', error type)."""
    try:
        return ("ok", *fn(raw, **kw))
    except (TypeError, ValueError) as err:
        return ("refused", type(err))


@pytest.mark.parametrize("n_in, n_out", [(512, 4), (256, 8), (33, 33), (4, 300), (1, 1), (5, 2), (2, 1)])
@pytest.mark.parametrize("align_corners", [False, True])
def test_both_accept_and_refuse_the_same_filters_at_the_limits(n_in, n_out, align_corners) -> None:
    """Around the compiled kernel's limits (1025 taps, 128 low-res pixels per output pixel) and at the
    smallest sizes, the fallback accepts exactly what it accepts, and then computes the same maps, and a
    mask that includes a pixel equal to the threshold."""
    raw = np.random.default_rng(n_in + n_out).standard_normal((1, n_in, max(n_in // 2, 1))).astype(np.float32)
    filters = [("gaussian", s, 0) for s in (0.3, 1.0, 4.0, 15.5, 16.0, 32.0, 127.9, 128.0)] + \
              [("box", 1.0, w) for w in (1, 2, 3, 16, 257, 1024, 1025, 1026)] + [("none", 1.0, 0)]
    for smooth, sigma, window in filters:
        kw = dict(out_h=n_out, out_w=max(n_out // 2, 1), smooth=smooth, sigma=sigma, window=window,
                  align_corners=align_corners)
        want = _outcome(_kernels.heatmap_cpu, raw, **kw)
        got = _outcome(postprocess_numpy.heatmap_cpu, raw, **kw)
        assert got[0] == want[0], (smooth, sigma, window, want, got)
        if want[0] == "refused":
            assert got[1] is want[1]
            continue
        scale = max(float(np.abs(want[1]).max()), 1e-30)
        assert np.abs(got[1] - want[1]).max() <= RTOL * scale, (smooth, sigma, window)
        own = float(got[1].reshape(-1)[0])                       # the fallback's own pixel, as the threshold
        mask = postprocess_numpy.heatmap_cpu(raw, **kw, threshold=own)[2]
        assert mask.reshape(-1)[0] == 1 and np.array_equal(mask.astype(bool), got[1] >= np.float32(own))
