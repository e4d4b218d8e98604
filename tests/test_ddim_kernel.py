"""The ddim_step kernel against a float64 NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge_ad.postprocess import ddim_step


def reference(x_t, eps, a_t, a_prev, clamp=None):
    x_t, eps = x_t.astype(np.float64), eps.astype(np.float64)
    x0 = (x_t - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t)
    if clamp is not None:
        x0 = np.clip(x0, -clamp, clamp)
    return np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev) * eps


STEPS = [(0.05, 0.2, None), (0.3, 0.7, None), (0.9, 0.999, None), (0.02, 1.0, None), (0.1, 0.4, 1.0)]
SHAPES = [(1, 4, 32, 32), (3, 4, 7, 5), (17,), (2, 3, 192, 192)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("a_t, a_prev, clamp", STEPS)
def test_fp32_matches_float64(shape, a_t, a_prev, clamp) -> None:
    rng = np.random.default_rng(len(shape))
    x_t = rng.standard_normal(shape).astype(np.float32)
    eps = rng.standard_normal(shape).astype(np.float32)
    out = ddim_step(x_t, eps, a_t, a_prev, clamp=clamp)
    assert out.shape == shape and out.dtype == np.float32
    np.testing.assert_allclose(out, reference(x_t, eps, a_t, a_prev, clamp), rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("a_t, a_prev, clamp", STEPS)
def test_fp16_matches_float64(a_t, a_prev, clamp) -> None:
    rng = np.random.default_rng(7)
    x_t = rng.standard_normal((2, 4, 32, 32)).astype(np.float16)
    eps = rng.standard_normal((2, 4, 32, 32)).astype(np.float16)
    out = ddim_step(x_t, eps, a_t, a_prev, clamp=clamp)
    assert out.dtype == np.float16
    ref = reference(x_t, eps, a_t, a_prev, clamp)
    # One fp16 rounding of the result (relative 2^-11) plus float32 arithmetic.
    np.testing.assert_allclose(out.astype(np.float64), ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())


def test_in_place() -> None:
    rng = np.random.default_rng(8)
    x_t = rng.standard_normal((4, 8, 8)).astype(np.float32)
    eps = rng.standard_normal((4, 8, 8)).astype(np.float32)
    expected = reference(x_t, eps, 0.2, 0.5)
    result = ddim_step(x_t, eps, 0.2, 0.5, out=x_t)
    assert result is x_t
    np.testing.assert_allclose(x_t, expected, rtol=2e-6, atol=2e-6)


def _every_finite_half() -> np.ndarray:
    """All finite fp16 values but -0.0 (x - 0 * eps turns -0.0 into +0.0, as IEEE says)."""
    bits = np.arange(65536, dtype=np.uint16)
    every = bits[bits != 0x8000].view(np.float16)
    return every[np.isfinite(every)]


def test_fp16_conversion_is_exact_for_every_half() -> None:
    """abar_t = abar_prev = 1 makes the step the identity: every finite fp16 value round-trips."""
    finite = _every_finite_half()
    out = ddim_step(finite, np.zeros_like(finite), 1.0, 1.0)
    np.testing.assert_array_equal(out.view(np.uint16), finite.view(np.uint16))


def test_fp16_rounding_matches_numpy() -> None:
    """Halving every half exercises round-to-nearest-even down into the subnormals."""
    finite = _every_finite_half()
    out = ddim_step(finite, np.zeros_like(finite), 1.0, 0.25)  # x_prev = 0.5 * x_t
    expected = (finite.astype(np.float32) * np.float32(0.5)).astype(np.float16)
    np.testing.assert_array_equal(out.view(np.uint16), expected.view(np.uint16))


BAD = [
    (lambda: ddim_step(np.zeros((2, 3), np.float32), np.zeros((3, 2), np.float32), 0.5, 0.6), ValueError, "same shape"),
    (lambda: ddim_step(np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float16), 0.5, 0.6), TypeError, "same dtype"),
    (lambda: ddim_step(np.zeros((0,), np.float32), np.zeros((0,), np.float32), 0.5, 0.6), ValueError, "empty"),
    (lambda: ddim_step(np.zeros((4,), np.float32), np.zeros((4,), np.float32), 0.0, 0.6), ValueError, "alpha_bar"),
    (lambda: ddim_step(np.zeros((4,), np.float32), np.zeros((4,), np.float32), 0.5, 1.5), ValueError, "alpha_bar"),
    (lambda: ddim_step(np.zeros((4,), np.float32), np.zeros((4,), np.float32), 0.5, 0.6, clamp=-1), ValueError, "clamp"),
    (lambda: ddim_step(np.zeros((4, 8), np.float32)[:, ::2], np.zeros((4, 4), np.float32), 0.5, 0.6), ValueError, "contiguous"),
    (lambda: ddim_step(np.zeros((4,), np.int64), np.zeros((4,), np.int64), 0.5, 0.6), TypeError, "float32 or float16"),
    (lambda: ddim_step(np.zeros((4,), np.float32), np.zeros((4,), np.float32), 0.5, 0.6, out=np.zeros(3, np.float32)), ValueError, "out"),
]


@pytest.mark.parametrize("call, error, words", BAD, ids=[b[2] + str(i) for i, b in enumerate(BAD)])
def test_bad_input_raises_clear_error(call, error, words) -> None:
    with pytest.raises(error, match=words):
        call()


@pytest.mark.gpu
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("a_t, a_prev, clamp", STEPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_matches_cpu(shape, a_t, a_prev, clamp, dtype) -> None:
    g = torch.Generator().manual_seed(9)
    x_t = torch.randn(shape, generator=g).to(dtype)
    eps = torch.randn(shape, generator=g).to(dtype)
    out = ddim_step(x_t.cuda(), eps.cuda(), a_t, a_prev, clamp=clamp)
    assert out.is_cuda and out.dtype == dtype
    cpu = ddim_step(x_t.numpy(), eps.numpy(), a_t, a_prev, clamp=clamp)
    if dtype == torch.float32:
        np.testing.assert_allclose(out.cpu().numpy(), cpu, rtol=1e-6, atol=1e-6)
    else:  # the GPU may contract to FMA differently: allow one fp16 ulp
        np.testing.assert_allclose(out.cpu().float().numpy(), cpu.astype(np.float32), rtol=1e-3, atol=1e-3)


@pytest.mark.gpu
def test_cuda_in_place() -> None:
    x_t = torch.randn((2, 4, 32, 32), device="cuda")
    eps = torch.randn((2, 4, 32, 32), device="cuda")
    expected = reference(x_t.cpu().numpy(), eps.cpu().numpy(), 0.3, 0.6)
    ddim_step(x_t, eps, 0.3, 0.6, out=x_t)
    np.testing.assert_allclose(x_t.cpu().numpy(), expected, rtol=2e-6, atol=2e-6)
