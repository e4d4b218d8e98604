"""The heatmap kernel against an independent reference: torch bilinear + scipy.ndimage filters."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
import torch.nn.functional as F

from edge_ad.postprocess import heatmap

# (n, h, w, H, W, smooth, sigma, window, align_corners)
CASES = [
    (1, 28, 28, 224, 224, "gaussian", 4.0, None, False),    # SimpleNet-like, 8x
    (8, 36, 36, 288, 288, "gaussian", 4.0, None, False),    # SimpleNet at 288, batch 8
    (3, 13, 17, 101, 77, "gaussian", 2.5, None, True),      # odd sizes, non-integer factors
    (2, 5, 9, 64, 31, "gaussian", 1.0, None, False),        # down-sampling along x
    (2, 40, 40, 40, 40, "gaussian", 4.0, None, False),      # no up-sampling
    (1, 7, 7, 9, 9, "gaussian", 6.0, None, False),          # filter wider than the image
    (2, 14, 14, 224, 224, "box", 0.0, 16, True),            # UniAD: 16x16 box, align_corners
    (2, 48, 48, 64, 64, "box", 0.0, 31, False),             # SPR-like 31x31 box
    (2, 20, 20, 20, 20, "box", 0.0, 21, False),             # DiffAD-like 21x21 box
    (1, 11, 6, 33, 18, "box", 0.0, 4, False),               # even window
    (1, 36, 36, 288, 288, "none", 0.0, None, False),
    (4, 1, 1, 5, 7, "none", 0.0, None, True),               # single pixel
]


def reference(raw: np.ndarray, size: tuple[int, int], smooth: str, sigma: float,
              window: int | None, align_corners: bool) -> np.ndarray:
    up = F.interpolate(torch.from_numpy(raw.astype(np.float64))[:, None], size=size,
                       mode="bilinear", align_corners=align_corners)[:, 0].numpy()
    if smooth == "gaussian":
        return ndi.gaussian_filter(up, sigma=(0, sigma, sigma), mode="reflect", truncate=4.0)
    if smooth == "box":
        return ndi.uniform_filter(up, size=(1, window, window), mode="reflect")
    return up


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:5])) + f"-{c[5]}")
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_matches_reference(case, dtype) -> None:
    n, h, w, out_h, out_w, smooth, sigma, window, align_corners = case
    rng = np.random.default_rng(n * 1000 + h * w)
    raw = rng.standard_normal((n, h, w)).astype(dtype)
    maps, scores = heatmap(raw, (out_h, out_w), smooth=smooth, sigma=sigma, window=window,
                           align_corners=align_corners)
    ref = reference(raw.astype(np.float64), (out_h, out_w), smooth, sigma, window, align_corners)
    assert maps.shape == (n, out_h, out_w) and maps.dtype == np.float32
    assert scores.shape == (n,) and scores.dtype == np.float32
    np.testing.assert_allclose(maps, ref, rtol=0, atol=2e-6)
    np.testing.assert_allclose(scores, ref.reshape(n, -1).max(axis=1), rtol=0, atol=2e-6)


def test_score_from_raw_is_max_of_raw_map() -> None:
    raw = np.random.default_rng(1).standard_normal((5, 28, 28)).astype(np.float32)
    _, scores = heatmap(raw, 224, score_from="raw")
    np.testing.assert_array_equal(scores, raw.reshape(5, -1).max(axis=1))


def test_normalization_and_threshold_mask() -> None:
    raw = np.random.default_rng(2).standard_normal((3, 14, 14)).astype(np.float32)
    lo, hi, thr = -0.5, 1.5, 0.6
    maps, scores, masks = heatmap(raw, 112, sigma=2.0, normalize=(lo, hi), threshold=thr)
    ref = np.clip((reference(raw, (112, 112), "gaussian", 2.0, None, False) - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(maps, ref, atol=2e-6)
    np.testing.assert_allclose(scores, ref.reshape(3, -1).max(axis=1), atol=2e-6)
    assert masks.dtype == np.uint8
    np.testing.assert_array_equal(masks, (maps >= thr).astype(np.uint8))
    assert 0 < masks.mean() < 1  # the case exercises both sides of the threshold


def test_accepts_model_output_layout() -> None:
    raw = np.random.default_rng(3).standard_normal((2, 1, 10, 10)).astype(np.float32)
    maps4, scores4 = heatmap(raw, 40, sigma=1.5)
    maps3, scores3 = heatmap(raw[:, 0].copy(), 40, sigma=1.5)
    np.testing.assert_array_equal(maps4, maps3)
    np.testing.assert_array_equal(scores4, scores3)


def test_repeated_calls_reuse_tables_correctly() -> None:
    """The per-axis table cache must not mix up calls with different parameters."""
    rng = np.random.default_rng(4)
    for sigma in (1.0, 2.0, 1.0, 3.0):
        for size in (50, 64, 50):
            raw = rng.standard_normal((1, 8, 8)).astype(np.float32)
            maps, _ = heatmap(raw, size, sigma=sigma)
            np.testing.assert_allclose(maps, reference(raw, (size, size), "gaussian", sigma, None, False), atol=2e-6)


BAD_INPUTS = [
    (lambda: heatmap(np.zeros((28, 28), np.float32), 224), ValueError, "shape"),
    (lambda: heatmap(np.zeros((1, 2, 28, 28), np.float32), 224), ValueError, "shape"),
    (lambda: heatmap(np.zeros((0, 28, 28), np.float32), 224), ValueError, "non-empty"),
    (lambda: heatmap(np.zeros((1, 0, 28), np.float32), 224), ValueError, "non-empty"),
    (lambda: heatmap(np.zeros((1, 28, 28), np.float32), 224, sigma=-1.0), ValueError, "sigma"),
    (lambda: heatmap(np.zeros((1, 28, 28), np.float32), 224, sigma=float("nan")), ValueError, "sigma"),
    (lambda: heatmap(np.zeros((1, 28, 28), np.float32), 0), ValueError, "output_size"),
    (lambda: heatmap(np.zeros((1, 28, 28), np.float32), (224,)), ValueError, "output_size"),
    (lambda: heatmap(np.zeros((1, 28, 28), np.float32), 224, smooth="median"), ValueError, "smooth"),
    (lambda: heatmap(np.zeros((1, 28, 28), np.float32), 224, smooth="box"), ValueError, "window"),
    (lambda: heatmap(np.zeros((1, 28, 28), np.float32), 224, smooth="box", window=0), ValueError, "window"),
    (lambda: heatmap(np.zeros((1, 28, 28), np.float32), 224, score_from="max"), ValueError, "score_from"),
    (lambda: heatmap(np.zeros((1, 28, 28), np.float32), 224, normalize=(1.0, 1.0)), ValueError, "norm_max"),
    (lambda: heatmap(np.zeros((1, 28, 56), np.float32)[:, :, ::2], 224), ValueError, "contiguous"),
    (lambda: heatmap(np.zeros((1, 28, 28), np.int32), 224), TypeError, "float32 or float16"),
    (lambda: heatmap(np.zeros((1, 28, 28), np.float64), 224), TypeError, "float32 or float16"),
    (lambda: heatmap([[[0.0]]], 224), TypeError, "numpy array"),
    (lambda: heatmap(np.zeros((1, 300, 300), np.float32), 300, sigma=20.0), ValueError, "spans"),
    (lambda: heatmap(np.zeros((1, 8, 8), np.float32), 64, sigma=200.0), ValueError, "taps"),
]


@pytest.mark.parametrize("call, error, words", BAD_INPUTS, ids=[b[2] + str(i) for i, b in enumerate(BAD_INPUTS)])
def test_bad_input_raises_clear_error(call, error, words) -> None:
    with pytest.raises(error, match=words):
        call()


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:5])) + f"-{c[5]}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_matches_cpu_and_reference(case, dtype) -> None:
    n, h, w, out_h, out_w, smooth, sigma, window, align_corners = case
    raw = torch.randn((n, h, w), generator=torch.Generator().manual_seed(n + h + w)).to(dtype)
    kwargs = dict(smooth=smooth, sigma=sigma, window=window, align_corners=align_corners)
    maps_gpu, scores_gpu, masks_gpu = heatmap(raw.cuda(), (out_h, out_w), threshold=0.1, **kwargs)
    maps_cpu, scores_cpu, masks_cpu = heatmap(raw.numpy(), (out_h, out_w), threshold=0.1, **kwargs)
    assert maps_gpu.is_cuda and maps_gpu.dtype == torch.float32
    np.testing.assert_allclose(maps_gpu.cpu().numpy(), maps_cpu, atol=2e-6)
    np.testing.assert_allclose(scores_gpu.cpu().numpy(), scores_cpu, atol=2e-6)
    ref = reference(raw.double().numpy(), (out_h, out_w), smooth, sigma, window, align_corners)
    np.testing.assert_allclose(maps_gpu.cpu().numpy(), ref, atol=2e-6)
    disagree = (masks_gpu.cpu().numpy() != masks_cpu).mean()
    assert disagree < 1e-3  # only pixels within float rounding of the threshold may differ


@pytest.mark.gpu
def test_cuda_score_from_raw_and_normalize() -> None:
    raw = torch.randn((4, 28, 28), generator=torch.Generator().manual_seed(5))
    _, scores = heatmap(raw.cuda(), 224, score_from="raw", normalize=(-1.0, 3.0))
    expected = np.clip((raw.reshape(4, -1).max(1).values.numpy() + 1.0) / 4.0, 0, 1)
    np.testing.assert_allclose(scores.cpu().numpy(), expected, atol=1e-6)


@pytest.mark.gpu
def test_cuda_bad_input_raises() -> None:
    with pytest.raises(ValueError, match="contiguous"):
        heatmap(torch.zeros((1, 28, 56), device="cuda")[:, :, ::2], 224)
    with pytest.raises(TypeError, match="float32 or float16"):
        heatmap(torch.zeros((1, 28, 28), dtype=torch.float64, device="cuda"), 224)
    with pytest.raises(ValueError, match="sigma"):
        heatmap(torch.zeros((1, 28, 28), device="cuda"), 224, sigma=-2.0)


def test_thread_count_does_not_change_results() -> None:
    raw = np.random.default_rng(6).standard_normal((4, 36, 36)).astype(np.float32)
    maps_1, scores_1 = heatmap(raw, 288, threads=1)
    maps_n, scores_n = heatmap(raw, 288, threads=0)
    np.testing.assert_array_equal(maps_1, maps_n)
    np.testing.assert_array_equal(scores_1, scores_n)
    with pytest.raises(ValueError, match="threads"):
        heatmap(raw, 288, threads=-1)


@pytest.mark.gpu
def test_cuda_first_call_inside_a_graph_capture() -> None:
    """A shape first seen while its stream is captured: the coefficients are built on the device
    (host uploads cannot be captured); the replay, and a later uncaptured call that uses the uploaded
    tables, both match the CPU kernel."""
    raw = torch.randn((3, 19, 23), generator=torch.Generator().manual_seed(11))
    device_raw = raw.cuda()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        maps, scores = heatmap(device_raw, (151, 177), sigma=3.0)
    graph.replay()
    torch.cuda.synchronize()
    want_maps, want_scores = heatmap(raw.numpy(), (151, 177), sigma=3.0)
    np.testing.assert_allclose(maps.cpu().numpy(), want_maps, atol=2e-6)
    np.testing.assert_allclose(scores.cpu().numpy(), want_scores, atol=2e-6)
    again_maps, again_scores = heatmap(device_raw, (151, 177), sigma=3.0)
    np.testing.assert_allclose(again_maps.cpu().numpy(), want_maps, atol=2e-6)
    np.testing.assert_allclose(again_scores.cpu().numpy(), want_scores, atol=2e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("score_from_raw", [False, True])
def test_cuda_scores_only_writes_no_map_and_gives_the_same_scores(score_from_raw: bool) -> None:
    """maps=0 (what the TensorRT backend passes when only scores are wanted) is accepted and gives the
    scores of a full call (with scores from the raw map, nothing full-size is computed at all)."""
    from edge_ad import _kernels

    n, h, w, out_h, out_w = 3, 28, 28, 224, 224
    raw = torch.randn((n, h, w), generator=torch.Generator().manual_seed(12)).cuda()
    kwargs = dict(smooth="gaussian", sigma=4.0, window=0, align_corners=False, score_from_raw=score_from_raw)
    ws = _kernels.heatmap_cuda_workspace_bytes(n, h, w, out_h, out_w, smooth="gaussian", sigma=4.0)
    workspace = torch.empty(ws, dtype=torch.uint8, device="cuda")
    maps = torch.full((n, out_h, out_w), -7.0, device="cuda")
    full, only = torch.empty(n, device="cuda"), torch.empty(n, device="cuda")
    stream = torch.cuda.current_stream().cuda_stream
    _kernels.heatmap_cuda(raw.data_ptr(), "float32", n, h, w, out_h, out_w, maps.data_ptr(), full.data_ptr(), 0,
                          workspace.data_ptr(), ws, stream, **kwargs)
    _kernels.heatmap_cuda(raw.data_ptr(), "float32", n, h, w, out_h, out_w, 0, only.data_ptr(), 0,
                          workspace.data_ptr(), ws, stream, **kwargs)
    torch.cuda.synchronize()
    assert torch.equal(full, only)
    assert not bool((maps == -7.0).any())                 # the full call did write every pixel
