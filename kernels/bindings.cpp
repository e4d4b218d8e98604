// pybind11 bindings: edge_ad._kernels. The Python face is edge_ad.postprocess; these functions check
// every argument and raise ValueError/TypeError with a message instead of crashing.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "kernels.h"

namespace py = pybind11;
using namespace edge_ad;

namespace {

Smooth parse_smooth(const std::string& s) {
  if (s == "gaussian") return Smooth::kGaussian;
  if (s == "box") return Smooth::kBox;
  if (s == "none") return Smooth::kNone;
  throw py::value_error("smooth must be 'gaussian', 'box' or 'none', got '" + s + "'");
}

DType parse_dtype_name(const std::string& s) {
  if (s == "float32") return DType::kFloat32;
  if (s == "float16") return DType::kFloat16;
  throw py::value_error("dtype must be 'float32' or 'float16', got '" + s + "'");
}

DType array_dtype(const py::array& a, const char* name) {
  const auto dt = a.dtype();
  if (dt.kind() == 'f' && dt.itemsize() == 4) return DType::kFloat32;
  if (dt.kind() == 'f' && dt.itemsize() == 2) return DType::kFloat16;
  throw py::type_error(std::string(name) + " must be float32 or float16, got dtype " +
                       std::string(py::str(dt)));
}

void require_contiguous(const py::array& a, const char* name) {
  if (!(a.flags() & py::array::c_style)) {
    throw py::value_error(std::string(name) +
                          " must be C-contiguous; pass np.ascontiguousarray(" + name + ")");
  }
}

HeatmapParams make_params(int n, int h, int w, int out_h, int out_w, const std::string& smooth,
                          double sigma, int window, bool align_corners, bool score_from_raw,
                          std::optional<float> norm_min, std::optional<float> norm_max,
                          std::optional<float> threshold, int threads = 0) {
  HeatmapParams p;
  p.n = n; p.in_h = h; p.in_w = w; p.out_h = out_h; p.out_w = out_w;
  p.smooth = parse_smooth(smooth);
  p.sigma = sigma;
  p.window = window;
  p.align_corners = align_corners;
  p.score_from_raw = score_from_raw;
  if (norm_min.has_value() != norm_max.has_value()) {
    throw py::value_error("give both norm_min and norm_max, or neither");
  }
  if (norm_min) { p.normalize = true; p.norm_min = *norm_min; p.norm_max = *norm_max; }
  if (threshold) { p.has_threshold = true; p.threshold = *threshold; }
  if (threads < 0) throw py::value_error("threads must be >= 0 (0: OpenMP's default)");
  p.threads = threads;
  validate(p);
  return p;
}

py::tuple heatmap_numpy(const py::array& raw, int out_h, int out_w, const std::string& smooth,
                        double sigma, int window, bool align_corners, bool score_from_raw,
                        std::optional<float> norm_min, std::optional<float> norm_max,
                        std::optional<float> threshold, int threads) {
  const DType dtype = array_dtype(raw, "raw");
  if (raw.ndim() != 3) {
    throw py::value_error("raw must have shape (N, h, w), got " + std::to_string(raw.ndim()) +
                          " dimensions");
  }
  require_contiguous(raw, "raw");
  const HeatmapParams p = make_params(static_cast<int>(raw.shape(0)), static_cast<int>(raw.shape(1)),
                                      static_cast<int>(raw.shape(2)), out_h, out_w, smooth, sigma,
                                      window, align_corners, score_from_raw, norm_min, norm_max,
                                      threshold, threads);
  py::array_t<float> maps({p.n, p.out_h, p.out_w});
  py::array_t<float> scores({p.n});
  py::object masks = py::none();
  uint8_t* mask_ptr = nullptr;
  if (p.has_threshold) {
    py::array_t<uint8_t> m({p.n, p.out_h, p.out_w});
    mask_ptr = m.mutable_data();
    masks = m;
  }
  const void* src = raw.data();
  float* maps_ptr = maps.mutable_data();
  float* scores_ptr = scores.mutable_data();
  {
    py::gil_scoped_release release;
    heatmap_cpu(src, dtype, p, maps_ptr, scores_ptr, mask_ptr);
  }
  return py::make_tuple(maps, scores, masks);
}

DdimParams make_ddim(double a_t, double a_prev, std::optional<float> clamp) {
  DdimParams p;
  p.alpha_bar_t = a_t;
  p.alpha_bar_prev = a_prev;
  if (clamp) { p.clamp = true; p.clamp_value = *clamp; }
  validate(p);
  return p;
}

py::array ddim_numpy(const py::array& x_t, const py::array& eps, double a_t, double a_prev,
                     std::optional<float> clamp, std::optional<py::array> out) {
  const DType dtype = array_dtype(x_t, "x_t");
  if (array_dtype(eps, "eps") != dtype) throw py::type_error("x_t and eps must have the same dtype");
  require_contiguous(x_t, "x_t");
  require_contiguous(eps, "eps");
  if (x_t.size() == 0) throw py::value_error("ddim_step: x_t is empty");
  if (x_t.ndim() != eps.ndim() ||
      !std::equal(x_t.shape(), x_t.shape() + x_t.ndim(), eps.shape())) {
    throw py::value_error("x_t and eps must have the same shape");
  }
  const DdimParams p = make_ddim(a_t, a_prev, clamp);
  py::array result = out ? *out : py::array(x_t.dtype(), std::vector<py::ssize_t>(
                                                  x_t.shape(), x_t.shape() + x_t.ndim()));
  if (out) {
    if (array_dtype(result, "out") != dtype || result.size() != x_t.size()) {
      throw py::value_error("out must have the dtype and size of x_t");
    }
    require_contiguous(result, "out");
    if (!result.writeable()) throw py::value_error("out must be writeable");
  }
  const void* xp = x_t.data();
  const void* ep = eps.data();
  void* op = result.mutable_data();
  const int64_t count = x_t.size();
  {
    py::gil_scoped_release release;
    ddim_step_cpu(xp, ep, op, count, dtype, p);
  }
  return result;
}

// Rows of an image array: its pixels must be contiguous within a row (any row stride).
bool rows_of_contiguous_pixels(const py::array& a) {
  const py::ssize_t item = 1;   // uint8
  if (a.ndim() == 2) return a.shape(1) == 1 || a.strides(1) == item;
  return (a.shape(2) == 1 || a.strides(2) == item) &&
         (a.shape(1) == 1 || a.strides(1) == a.shape(2) * item);
}

// [lowest, highest] byte an array's elements touch.
std::pair<const char*, const char*> byte_span(const py::array& a) {
  const char* lo = static_cast<const char*>(a.data());
  const char* hi = lo;
  for (py::ssize_t d = 0; d < a.ndim(); ++d) {
    const py::ssize_t reach = (a.shape(d) - 1) * a.strides(d);
    (reach < 0 ? lo : hi) += reach;
  }
  return {lo, hi + a.itemsize() - 1};
}

py::array resize_area_numpy(const py::array& image, int out_h, int out_w, std::optional<py::array> out,
                            bool avx2) {
  if (image.dtype().kind() != 'u' || image.dtype().itemsize() != 1) {
    throw py::type_error("image must be uint8, got dtype " + std::string(py::str(image.dtype())) +
                         "; use cv2.resize(..., interpolation=cv2.INTER_AREA) for other types");
  }
  if (image.ndim() != 2 && image.ndim() != 3) {
    throw py::value_error("image must be H x W or H x W x C, got " + std::to_string(image.ndim()) +
                          " dimensions");
  }
  if (image.shape(0) > INT32_MAX / 2 || image.shape(1) > INT32_MAX / 2) {
    throw py::value_error("image is too large; use cv2.resize");
  }
  AreaResizeParams p;
  p.src_h = static_cast<int>(image.shape(0));
  p.src_w = static_cast<int>(image.shape(1));
  p.channels = image.ndim() == 3 ? static_cast<int>(std::min<py::ssize_t>(image.shape(2), INT32_MAX)) : 1;
  p.dst_h = out_h;
  p.dst_w = out_w;
  p.avx2 = avx2;
  validate(p);
  if (!rows_of_contiguous_pixels(image)) {
    throw py::value_error("the pixels within each row of image must be contiguous (a view that skips "
                          "pixels or reverses channels is not); pass np.ascontiguousarray(image)");
  }
  std::vector<py::ssize_t> shape{out_h, out_w};
  if (image.ndim() == 3) shape.push_back(p.channels);
  py::array result = out ? *out : py::array(image.dtype(), shape);
  if (out) {
    if (result.dtype().kind() != 'u' || result.dtype().itemsize() != 1) {
      throw py::type_error("out must be uint8, got dtype " + std::string(py::str(result.dtype())));
    }
    if (result.ndim() != image.ndim() ||
        !std::equal(shape.begin(), shape.end(), result.shape())) {
      throw py::value_error("out must have shape (out_h, out_w" +
                            std::string(image.ndim() == 3 ? ", C)" : ")") + " = " +
                            std::string(py::str(py::tuple(py::cast(shape)))));
    }
    if (!result.writeable()) throw py::value_error("out must be writeable");
    if (!rows_of_contiguous_pixels(result)) {
      throw py::value_error("the pixels within each row of out must be contiguous");
    }
    const auto a = byte_span(image), b = byte_span(result);
    if (a.first <= b.second && b.first <= a.second) {
      throw py::value_error("out must not overlap image; give a separate array");
    }
  }
  const auto* src = static_cast<const uint8_t*>(image.data());
  auto* dst = static_cast<uint8_t*>(result.mutable_data());
  const int64_t src_stride = image.strides(0), dst_stride = result.strides(0);
  {
    py::gil_scoped_release release;
    resize_area_cpu(src, src_stride, dst, dst_stride, p);
  }
  return result;
}

}  // namespace

PYBIND11_MODULE(_kernels, m) {
  m.doc() = "edge_ad compiled kernels: heatmap post-processing and the DDIM step (CPU and CUDA).";
#ifdef EDGE_AD_WITH_CUDA
  m.attr("has_cuda") = true;
#else
  m.attr("has_cuda") = false;
#endif
  py::register_exception_translator([](std::exception_ptr e) {
    try {
      if (e) std::rethrow_exception(e);
    } catch (const std::invalid_argument& err) {
      PyErr_SetString(PyExc_ValueError, err.what());
    }
  });

  m.def("heatmap_cpu", &heatmap_numpy, py::arg("raw"), py::arg("out_h"), py::arg("out_w"),
        py::kw_only(), py::arg("smooth") = "gaussian", py::arg("sigma") = 4.0,
        py::arg("window") = 0, py::arg("align_corners") = false,
        py::arg("score_from_raw") = false, py::arg("norm_min") = py::none(),
        py::arg("norm_max") = py::none(), py::arg("threshold") = py::none(), py::arg("threads") = 0,
        "Full-size maps, image scores and masks (None without threshold) from N x h x w raw maps.");
  m.def("ddim_step_cpu", &ddim_numpy, py::arg("x_t"), py::arg("eps"), py::arg("alpha_bar_t"),
        py::arg("alpha_bar_prev"), py::kw_only(), py::arg("clamp") = py::none(),
        py::arg("out") = py::none(), "One deterministic DDIM step (eta = 0), fp32 or fp16.");

  m.def("resize_area_cpu", &resize_area_numpy, py::arg("image"), py::arg("out_h"), py::arg("out_w"),
        py::kw_only(), py::arg("out") = py::none(), py::arg("avx2") = true,
        "uint8 H x W (x 1/3/4) image shrunk to out_h x out_w by area averaging: the pixels of "
        "cv2.resize(image, (out_w, out_h), interpolation=cv2.INTER_AREA). One thread. avx2=False: the "
        "baseline build even on an AVX2 CPU (for tests and comparisons).");

#ifdef EDGE_AD_WITH_CUDA
  m.def("heatmap_cuda_workspace_bytes",
        [](int n, int h, int w, int out_h, int out_w, const std::string& smooth, double sigma,
           int window, bool align_corners) {
          return heatmap_cuda_workspace_bytes(make_params(n, h, w, out_h, out_w, smooth, sigma,
                                                          window, align_corners, false, {}, {}, {}));
        },
        py::arg("n"), py::arg("h"), py::arg("w"), py::arg("out_h"), py::arg("out_w"), py::kw_only(),
        py::arg("smooth") = "gaussian", py::arg("sigma") = 4.0, py::arg("window") = 0,
        py::arg("align_corners") = false);
  m.def("heatmap_cuda",
        [](uintptr_t raw, const std::string& dtype, int n, int h, int w, int out_h, int out_w,
           uintptr_t maps, uintptr_t scores, uintptr_t masks, uintptr_t workspace,
           size_t workspace_bytes, uintptr_t stream, const std::string& smooth, double sigma,
           int window, bool align_corners, bool score_from_raw, std::optional<float> norm_min,
           std::optional<float> norm_max, std::optional<float> threshold) {
          const HeatmapParams p = make_params(n, h, w, out_h, out_w, smooth, sigma, window,
                                              align_corners, score_from_raw, norm_min, norm_max,
                                              threshold);
          if (raw == 0 || scores == 0) throw py::value_error("null device pointer");
          if (p.has_threshold && masks == 0) throw py::value_error("threshold given but no masks buffer");
          py::gil_scoped_release release;
          heatmap_cuda(reinterpret_cast<const void*>(raw), parse_dtype_name(dtype), p,
                       reinterpret_cast<float*>(maps),  // 0: scores (and masks) only
                       reinterpret_cast<float*>(scores),
                       p.has_threshold ? reinterpret_cast<uint8_t*>(masks) : nullptr,
                       reinterpret_cast<void*>(workspace), workspace_bytes, stream);
        },
        py::arg("raw"), py::arg("dtype"), py::arg("n"), py::arg("h"), py::arg("w"), py::arg("out_h"),
        py::arg("out_w"), py::arg("maps"), py::arg("scores"), py::arg("masks"),
        py::arg("workspace"), py::arg("workspace_bytes"), py::arg("stream"), py::kw_only(),
        py::arg("smooth") = "gaussian", py::arg("sigma") = 4.0, py::arg("window") = 0,
        py::arg("align_corners") = false, py::arg("score_from_raw") = false,
        py::arg("norm_min") = py::none(), py::arg("norm_max") = py::none(),
        py::arg("threshold") = py::none(),
        "Device-pointer heatmap on a CUDA stream (asynchronous; graph-capturable); maps=0 writes "
        "no full-size maps (scores only).");
  m.def("ddim_step_cuda",
        [](uintptr_t x_t, uintptr_t eps, uintptr_t out, int64_t count, const std::string& dtype,
           double a_t, double a_prev, std::optional<float> clamp, uintptr_t stream) {
          if (x_t == 0 || eps == 0 || out == 0) throw py::value_error("null device pointer");
          const DdimParams p = make_ddim(a_t, a_prev, clamp);
          py::gil_scoped_release release;
          ddim_step_cuda(reinterpret_cast<const void*>(x_t), reinterpret_cast<const void*>(eps),
                         reinterpret_cast<void*>(out), count, parse_dtype_name(dtype), p, stream);
        },
        py::arg("x_t"), py::arg("eps"), py::arg("out"), py::arg("count"), py::arg("dtype"),
        py::arg("alpha_bar_t"), py::arg("alpha_bar_prev"), py::kw_only(),
        py::arg("clamp") = py::none(), py::arg("stream") = 0);
  m.def("cuda_device_count", &cuda_device_count, "CUDA devices visible (0 without a GPU or driver).");
  m.def("cuda_init_error", &cuda_init_error,
        "Why CUDA cannot be used here (error name, driver and build CUDA versions); empty when it can.");
  m.def("cuda_device_name", &cuda_device_name, py::arg("device") = 0);
  m.def("cuda_synchronize", &cuda_synchronize);
  m.def("cuda_device_capability", &cuda_device_capability, py::arg("device") = 0,
        "(major, minor) compute capability of a CUDA device.");
  m.def("cuda_graph_begin_capture", [](uintptr_t stream) {
          py::gil_scoped_release release;
          cuda_graph_begin_capture(stream);
        }, py::arg("stream"), "Start capturing the work queued on `stream` (not the default stream).");
  m.def("cuda_graph_end_capture", [](uintptr_t stream) {
          py::gil_scoped_release release;
          return cuda_graph_end_capture(stream);
        }, py::arg("stream"), "End the capture; returns the instantiated graph's handle.");
  m.def("cuda_graph_launch", [](uintptr_t exec, uintptr_t stream) {
          if (exec == 0) throw py::value_error("null CUDA graph handle");
          py::gil_scoped_release release;
          cuda_graph_launch(exec, stream);
        }, py::arg("graph"), py::arg("stream"));
  m.def("cuda_graph_destroy", &cuda_graph_destroy, py::arg("graph"));
  m.def("cuda_memcpy_htod_async", [](uintptr_t dst, const py::array& src, uintptr_t stream) {
          require_contiguous(src, "src");
          if (dst == 0) throw py::value_error("null device pointer");
          const auto host = reinterpret_cast<uintptr_t>(src.data());
          const auto nbytes = static_cast<std::size_t>(src.nbytes());
          py::gil_scoped_release release;
          cuda_memcpy_async(dst, host, nbytes, true, stream);
        }, py::arg("dst"), py::arg("src"), py::arg("stream"),
        "Copy a C-contiguous host array to device memory on `stream` (async for pinned arrays).");
  m.def("cuda_memcpy_dtoh_async", [](py::array& dst, uintptr_t src, uintptr_t stream) {
          require_contiguous(dst, "dst");
          if (!dst.writeable()) throw py::value_error("dst must be writeable");
          if (src == 0) throw py::value_error("null device pointer");
          const auto host = reinterpret_cast<uintptr_t>(dst.mutable_data());
          const auto nbytes = static_cast<std::size_t>(dst.nbytes());
          py::gil_scoped_release release;
          cuda_memcpy_async(host, src, nbytes, false, stream);
        }, py::arg("dst"), py::arg("src"), py::arg("stream"),
        "Copy device memory into a C-contiguous host array on `stream`; synchronize before reading it.");
  m.def("cuda_stream_synchronize", [](uintptr_t stream) {
          py::gil_scoped_release release;
          cuda_stream_synchronize(stream);
        }, py::arg("stream"));
#else
  m.def("cuda_device_count", []() { return 0; }, "Built without CUDA: always 0.");
  m.def("cuda_init_error", []() { return std::string("edge_ad was built without its CUDA kernels (no nvcc at build time)"); });
#endif
}
