// CPU area-averaging downscale of uint8 images, pixel for pixel what cv2.resize(..., INTER_AREA) gives.
//
// Why: the host-side resize of every camera frame (edge_ad.runtime.preprocess) is a noticeable part of a
// frame's time next to the model on a CPU box, and the model was trained on OpenCV's INTER_AREA pixels,
// so this kernel must reproduce them exactly, not approximately.
//
// Verified exact on x86-64 (g++ 12, baseline and AVX2 builds). Unverified: aarch64 (Jetson; OpenCV's own
// aarch64 build may contract multiply-adds, this kernel does not) and Clang builds: run
// tests/test_resize_kernel.py there before relying on bit-exactness.
//
// OpenCV's algorithm (modules/imgproc/src/resize.cpp), re-derived here:
// - An integer ratio on both axes (1 / (dst / src) in double, within DBL_EPSILON of an integer, as
//   OpenCV decides it) sums each kx x ky block in integers; 2 x 2 blocks round with (sum + 2) >> 2,
//   others as sum * (1.f / (kx * ky)) rounded half to even.
// - Any other ratio: per axis, output cell i covers [i*s, (i+1)*s) of the source (s = src / dst in
//   double); its taps are the consecutive source pixels it overlaps, weighted by overlap / cell width
//   (computed in double, stored as float; overlaps under 1e-3 dropped). Each source row is reduced
//   horizontally into a float row (each output's taps summed left to right from 0), then an output row
//   is w0*h0 + w1*h1 + ... over its source rows in float, left to right, rounded half to even and
//   saturated.
// Bit-exactness needs the same float operations in the same order: every product rounded before it is
// added (no fused multiply-add: the contraction pragmas below), and the taps of one output value in
// OpenCV's order. Different outputs are independent, and that is what is vectorized: horizontally the
// channels of a pixel as four float lanes (three channels use a fourth, scratch lane), two pixels per
// 8-lane vector in the AVX2 build; vertically whole rows. Unlike OpenCV, a source row shared by two
// output rows is reduced once, not twice.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "kernels.h"

namespace edge_ad {

namespace {

#if defined(__GNUC__)
#define EA_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define EA_ALWAYS_INLINE inline
#endif

// x86-64 with GCC >= 12 or Clang: an AVX2 build of the row loops, chosen at run time. Elsewhere, and on
// CPUs without AVX2, the baseline build (SSE2 on x86-64, NEON on aarch64).
#if defined(__x86_64__) && (defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12))
#define EA_AREA_AVX2 1
#endif

using Taps = std::vector<std::pair<int, float>>;   // (source pixel, weight), left to right

// OpenCV's taps of output cell i, `scale` source pixels wide, over `src` pixels (double arithmetic).
Taps cell_taps(int src, double scale, int i) {
  const double f1 = i * scale, f2 = f1 + scale;
  const double cell = std::min(scale, src - f1);
  const int s2 = std::min(static_cast<int>(std::floor(f2)), src - 1);
  const int s1 = std::min(static_cast<int>(std::ceil(f1)), s2);
  Taps taps;
  if (s1 - f1 > 1e-3) taps.emplace_back(s1 - 1, static_cast<float>((s1 - f1) / cell));
  for (int s = s1; s < s2; ++s) taps.emplace_back(s, static_cast<float>(1.0 / cell));
  if (f2 - s2 > 1e-3) {
    taps.emplace_back(s2, static_cast<float>(std::min(std::min(f2 - s2, 1.0), cell) / cell));
  }
  return taps;
}

// One axis of the general case. Output i averages count[i] consecutive source pixels from first[i]
// with weight[i * taps + k]; `taps` is the axis maximum and the weights past count[i] are 0, so every
// output runs the same loop (adding 0 * pixel to a float sum of non-negative terms changes no bit).
struct AreaTaps {
  int taps = 0;
  std::vector<int> first;
  std::vector<int> count;
  std::vector<float> weight;
};

AreaTaps area_taps(int src, int dst, double scale) {
  std::vector<Taps> cells;
  AreaTaps t;
  for (int i = 0; i < dst; ++i) {
    cells.push_back(cell_taps(src, scale, i));
    t.taps = std::max(t.taps, static_cast<int>(cells.back().size()));
  }
  t.weight.assign(static_cast<size_t>(dst) * static_cast<size_t>(t.taps), 0.f);
  for (size_t i = 0; i < cells.size(); ++i) {
    const Taps& c = cells[i];
    if (c.empty()) throw std::logic_error("resize_area: an output cell without a source pixel");
    t.first.push_back(c.front().first);
    t.count.push_back(static_cast<int>(c.size()));
    for (size_t k = 0; k < c.size(); ++k) {
      if (c[k].first != c.front().first + static_cast<int>(k)) {
        throw std::logic_error("resize_area: the taps of an output are not consecutive pixels");
      }
      t.weight[i * static_cast<size_t>(t.taps) + k] = c[k].second;
    }
  }
  return t;
}

// What the row loop of the general case reads and writes; the scratch rows come from area_general.
struct RowJob {
  const uint8_t* src;
  int64_t src_stride;
  uint8_t* dst;
  int64_t dst_stride;
  int src_n, out_n, dst_w, dst_h, cn;   // src_n, out_n: values in a source / output row
  const AreaTaps* tx;
  const AreaTaps* ty;
  const float* wx_pairs;   // AVX2 build: the weights of outputs 2j, 2j+1 at tap k as 8 lanes
  float* row;              // the source row as floats, zero past src_n
  float* h;                // its horizontal reduction (out_n floats + slack)
  float* sum;              // the output row being accumulated
  float* next;             // the next output row, when its first source row ends this one
};

// Round half to even and saturate to uint8, as OpenCV's saturate_cast<uchar>(float), in plain
// arithmetic the compiler vectorizes: adding 2^23 to v in (-2^22, 2^23) rounds it to an integer (in the
// current, nearest-even, mode) held in the low bits of the float's representation.
EA_ALWAYS_INLINE uint8_t round_to_u8(float v) {
  const float r = v + 8388608.f;
  int32_t bits;
  std::memcpy(&bits, &r, sizeof bits);
  int32_t x = bits - 0x4B000000;   // round(v); negative for v < -0.5
  x = x < 0 ? 0 : x;
  x = x > 255 ? 255 : x;
  return static_cast<uint8_t>(x);
}

EA_ALWAYS_INLINE void store_row(const float* sum, int n, uint8_t* out) {
  for (int j = 0; j < n; ++j) out[j] = round_to_u8(sum[j]);
}

EA_ALWAYS_INLINE void row_to_float(const uint8_t* src, int n, float* out) {
  for (int i = 0; i < n; ++i) out[i] = static_cast<float>(src[i]);
}

// Horizontal reduction, one channel: h[i] = 0 + row[first_i] * w_i0 + row[first_i + 1] * w_i1 + ...
template <int K>
EA_ALWAYS_INLINE void hrow_c1(const float* row, const AreaTaps& t, int taps, int dst_w, float* h) {
  const int* first = t.first.data();   // locals: not reloaded after every store through h
  const float* weight = t.weight.data();
  for (int i = 0; i < dst_w; ++i) {
    const float* p = row + first[i];
    const float* w = weight + static_cast<size_t>(i) * taps;
    float acc = 0.f;
    for (int k = 0; k < (K > 0 ? K : taps); ++k) acc += p[k] * w[k];
    h[i] = acc;
  }
}

// One pixel of CN = 3 or 4 interleaved channels as four float lanes: out[0..3] = 0 + p[k*CN + c] * w[k]
// summed over k. GCC and Clang get the lanes as a vector type (their plain-loop form vectorizes
// poorly), other compilers the plain loop: the same float operations in the same order.
#if defined(__GNUC__)
typedef float Lanes4 __attribute__((vector_size(16)));

template <int CN, int K>
EA_ALWAYS_INLINE void reduce_pixel(const float* p, const float* w, int taps, float* out) {
  Lanes4 acc = {0.f, 0.f, 0.f, 0.f};
  for (int k = 0; k < (K > 0 ? K : taps); ++k) {
    Lanes4 v;
    std::memcpy(&v, p + k * CN, sizeof v);
    acc += v * w[k];
  }
  std::memcpy(out, &acc, sizeof acc);
}
#else
template <int CN, int K>
EA_ALWAYS_INLINE void reduce_pixel(const float* p, const float* w, int taps, float* out) {
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  for (int k = 0; k < (K > 0 ? K : taps); ++k) {
    for (int c = 0; c < 4; ++c) acc[c] += p[k * CN + c] * w[k];
  }
  for (int c = 0; c < 4; ++c) out[c] = acc[c];
}
#endif

// Horizontal reduction, CN = 3 or 4 channels, pixel by pixel left to right: with CN = 3 the scratch
// fourth lane lands on the next pixel's first channel, which that pixel's store then overwrites (h has
// a float of slack for the last one).
template <int CN, int K>
EA_ALWAYS_INLINE void hrow_lanes(const float* row, const AreaTaps& t, int taps, int dst_w, float* h) {
  const int* first = t.first.data();
  const float* weight = t.weight.data();
  for (int i = 0; i < dst_w; ++i) {
    reduce_pixel<CN, K>(row + static_cast<size_t>(first[i]) * CN, weight + static_cast<size_t>(i) * taps,
                        taps, h + static_cast<size_t>(i) * CN);
  }
}

#if defined(EA_AREA_AVX2)
typedef float Lanes8 __attribute__((vector_size(32)));

// The AVX2 build's CN = 3 or 4 reduction: outputs 2j and 2j + 1 in one 8-lane vector (each half as in
// reduce_pixel), the pair's weights pre-broadcast in job.wx_pairs; an odd last output runs alone.
template <int CN, int K>
EA_ALWAYS_INLINE void hrow_pairs(const RowJob& job, int taps) {
  const int* first = job.tx->first.data();
  const float* pairs = job.wx_pairs;
  const float* row = job.row;
  float* h = job.h;
  const int dst_w = job.dst_w;
  int i = 0;
  for (; i + 1 < dst_w; i += 2) {
    const float* p0 = row + static_cast<size_t>(first[i]) * CN;
    const float* p1 = row + static_cast<size_t>(first[i + 1]) * CN;
    const float* w = pairs + static_cast<size_t>(i / 2) * taps * 8;
    Lanes8 acc = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    for (int k = 0; k < (K > 0 ? K : taps); ++k) {
      Lanes4 a, b;
      Lanes8 wk;
      std::memcpy(&a, p0 + k * CN, sizeof a);
      std::memcpy(&b, p1 + k * CN, sizeof b);
      std::memcpy(&wk, w + k * 8, sizeof wk);
      acc += __builtin_shufflevector(a, b, 0, 1, 2, 3, 4, 5, 6, 7) * wk;
    }
    const Lanes4 lo = __builtin_shufflevector(acc, acc, 0, 1, 2, 3);
    const Lanes4 hi = __builtin_shufflevector(acc, acc, 4, 5, 6, 7);
    std::memcpy(h + static_cast<size_t>(i) * CN, &lo, sizeof lo);      // before hi: hi overwrites
    std::memcpy(h + static_cast<size_t>(i + 1) * CN, &hi, sizeof hi);  // lo's scratch lane
  }
  if (i < dst_w) {
    reduce_pixel<CN, K>(row + static_cast<size_t>(first[i]) * CN,
                        job.tx->weight.data() + static_cast<size_t>(i) * taps, taps,
                        h + static_cast<size_t>(i) * CN);
  }
}
#endif

// The horizontal reduction of job.row into job.h with K taps (0: any count, not unrolled).
template <bool kPairs, int CN, int K>
EA_ALWAYS_INLINE void hrow_k(const RowJob& job) {
  const int taps = job.tx->taps;
  if (CN == 1) {
    hrow_c1<K>(job.row, *job.tx, taps, job.dst_w, job.h);
    return;
  }
#if defined(EA_AREA_AVX2)
  if (kPairs) {
    hrow_pairs<CN, K>(job, taps);
    return;
  }
#endif
  hrow_lanes<CN, K>(job.row, *job.tx, taps, job.dst_w, job.h);
}

// Unrolled for the tap counts of shrinks up to about 11x.
template <bool kPairs, int CN>
EA_ALWAYS_INLINE void hrow_cn(const RowJob& job) {
  switch (job.tx->taps) {
    case 2: return hrow_k<kPairs, CN, 2>(job);
    case 3: return hrow_k<kPairs, CN, 3>(job);
    case 4: return hrow_k<kPairs, CN, 4>(job);
    case 5: return hrow_k<kPairs, CN, 5>(job);
    case 6: return hrow_k<kPairs, CN, 6>(job);
    case 7: return hrow_k<kPairs, CN, 7>(job);
    case 8: return hrow_k<kPairs, CN, 8>(job);
    case 9: return hrow_k<kPairs, CN, 9>(job);
    case 10: return hrow_k<kPairs, CN, 10>(job);
    case 11: return hrow_k<kPairs, CN, 11>(job);
    case 12: return hrow_k<kPairs, CN, 12>(job);
    default: return hrow_k<kPairs, CN, 0>(job);
  }
}

// Source row sy, as floats, reduced horizontally into job.h.
template <bool kPairs>
EA_ALWAYS_INLINE void reduce_row(const RowJob& job, int sy) {
  row_to_float(job.src + sy * job.src_stride, job.src_n, job.row);
  if (job.cn == 1) {
    hrow_cn<kPairs, 1>(job);
  } else if (job.cn == 3) {
    hrow_cn<kPairs, 3>(job);
  } else {
    hrow_cn<kPairs, 4>(job);
  }
}

// sum = b * h (first term) or sum += b * h.
EA_ALWAYS_INLINE void accumulate(float* sum, const float* h, float b, int n, bool first) {
  if (first) {
    for (int j = 0; j < n; ++j) sum[j] = b * h[j];
  } else {
    for (int j = 0; j < n; ++j) sum[j] += b * h[j];
  }
}

// The rows of the general case, in OpenCV's order: output row dy = w0*h(y0) + w1*h(y0+1) + ...; each
// source row is reduced once: the row that ends output row dy and starts dy + 1 also starts `next`.
template <bool kPairs>
EA_ALWAYS_INLINE void area_rows(const RowJob& job) {
  const AreaTaps& ty = *job.ty;
  float* sum = job.sum;
  float* next = job.next;
  int reduced = -1;       // the source row job.h holds
  bool started = false;   // sum holds its first term already (next of the previous output row)
  for (int dy = 0; dy < job.dst_h; ++dy) {
    const int y0 = ty.first[static_cast<size_t>(dy)];
    const int ny = ty.count[static_cast<size_t>(dy)];
    const float* wy = ty.weight.data() + static_cast<size_t>(dy) * ty.taps;
    const bool shares = dy + 1 < job.dst_h && ty.first[static_cast<size_t>(dy) + 1] == y0 + ny - 1;
    for (int k = 0; k < ny; ++k) {
      if (y0 + k != reduced) {
        reduced = y0 + k;
        reduce_row<kPairs>(job, reduced);
      }
      if (k > 0 || !started) accumulate(sum, job.h, wy[k], job.out_n, k == 0);
      if (shares && k == ny - 1) {
        accumulate(next, job.h, ty.weight[static_cast<size_t>(dy + 1) * ty.taps], job.out_n, true);
      }
    }
    store_row(sum, job.out_n, job.dst + dy * job.dst_stride);
    std::swap(sum, next);
    started = shares;
  }
}

void area_rows_baseline(const RowJob& job) { area_rows<false>(job); }

#if defined(EA_AREA_AVX2)
__attribute__((target("avx2"))) void area_rows_avx2(const RowJob& job) { area_rows<true>(job); }

bool has_avx2() {
  static const bool yes = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0;
  }();
  return yes;
}

// The AVX2 build's horizontal weights: for outputs 2j, 2j + 1 and tap k, 8 lanes (4 + 4 broadcast).
std::vector<float> pair_weights(const AreaTaps& tx, int dst_w) {
  const size_t taps = static_cast<size_t>(tx.taps);
  std::vector<float> pairs(static_cast<size_t>(dst_w / 2) * taps * 8);
  for (size_t i = 0; i + 1 < static_cast<size_t>(dst_w); i += 2) {
    for (size_t k = 0; k < taps; ++k) {
      float* q = pairs.data() + (i / 2) * taps * 8 + k * 8;
      std::fill(q, q + 4, tx.weight[i * taps + k]);
      std::fill(q + 4, q + 8, tx.weight[(i + 1) * taps + k]);
    }
  }
  return pairs;
}
#endif

// The general (non-integer ratio) case.
void area_general(const uint8_t* src, int64_t src_stride, uint8_t* dst, int64_t dst_stride,
                  const AreaResizeParams& p, double scale_x, double scale_y) {
  const AreaTaps tx = area_taps(p.src_w, p.dst_w, scale_x);
  const AreaTaps ty = area_taps(p.src_h, p.dst_h, scale_y);
  const int cn = p.channels;
  const size_t out_n = static_cast<size_t>(p.dst_w) * cn;
  // The float row has room for the zero-weight taps past the last pixel and the scratch lane.
  std::vector<float> row(static_cast<size_t>(p.src_w + tx.taps) * cn + 4, 0.f);
  std::vector<float> h(out_n + 4), sum(out_n), next(out_n), pairs;
  RowJob job{src, src_stride, dst, dst_stride, p.src_w * cn, static_cast<int>(out_n), p.dst_w, p.dst_h,
             cn, &tx, &ty, nullptr, row.data(), h.data(), sum.data(), next.data()};
#if defined(EA_AREA_AVX2)
  if (p.avx2 && cn != 1 && has_avx2()) {   // one channel: the baseline build measured faster
    pairs = pair_weights(tx, p.dst_w);
    job.wx_pairs = pairs.data();
    area_rows_avx2(job);
    return;
  }
#endif
  area_rows_baseline(job);
}

// The integer-ratio case: kx x ky blocks summed in integers.
struct BlockJob {
  const uint8_t* src;
  int64_t src_stride;
  uint8_t* dst;
  int64_t dst_stride;
  int dst_w, dst_h, kx, ky;
  int32_t* col;   // the column sums of one band of ky source rows (dst_w * kx * channels)
};

// 2 x 2 blocks: OpenCV rounds their mean half up, (sum + 2) >> 2.
template <int CN>
EA_ALWAYS_INLINE void halve_rows(const BlockJob& job) {
  for (int dy = 0; dy < job.dst_h; ++dy) {
    const uint8_t* r0 = job.src + static_cast<int64_t>(dy) * 2 * job.src_stride;
    const uint8_t* r1 = r0 + job.src_stride;
    uint8_t* out = job.dst + dy * job.dst_stride;
    for (int dx = 0; dx < job.dst_w; ++dx) {
      for (int c = 0; c < CN; ++c) {
        const int i = dx * 2 * CN + c;
        const unsigned s = r0[i] + r0[i + CN] + r1[i] + r1[i + CN];
        out[dx * CN + c] = static_cast<uint8_t>((s + 2) >> 2);
      }
    }
  }
}

// Other blocks: the sum times 1.f / (kx * ky), rounded half to even.
template <int CN>
EA_ALWAYS_INLINE void block_rows_cn(const BlockJob& job) {
  const int kx = job.kx, ky = job.ky;
  const int used_n = job.dst_w * kx * CN;   // the values of a source row that land in an output
  const float scale = 1.f / static_cast<float>(kx * ky);
  int32_t* col = job.col;
  for (int dy = 0; dy < job.dst_h; ++dy) {
    const uint8_t* r = job.src + static_cast<int64_t>(dy) * ky * job.src_stride;
    for (int j = 0; j < used_n; ++j) col[j] = r[j];
    for (int t = 1; t < ky; ++t) {
      r += job.src_stride;
      for (int j = 0; j < used_n; ++j) col[j] += r[j];
    }
    uint8_t* out = job.dst + dy * job.dst_stride;
    for (int dx = 0; dx < job.dst_w; ++dx) {
      for (int c = 0; c < CN; ++c) {
        const int32_t* q = col + dx * kx * CN + c;
        int32_t s = 0;
        for (int t = 0; t < kx; ++t) s += q[t * CN];
        out[dx * CN + c] = round_to_u8(static_cast<float>(s) * scale);
      }
    }
  }
}

template <int CN>
EA_ALWAYS_INLINE void blocks_cn(const BlockJob& job) {
  if (job.kx == 2 && job.ky == 2) {
    halve_rows<CN>(job);
  } else {
    block_rows_cn<CN>(job);
  }
}

EA_ALWAYS_INLINE void blocks(const BlockJob& job, int cn) {
  if (cn == 1) {
    blocks_cn<1>(job);
  } else if (cn == 3) {
    blocks_cn<3>(job);
  } else {
    blocks_cn<4>(job);
  }
}

void blocks_baseline(const BlockJob& job, int cn) { blocks(job, cn); }
#if defined(EA_AREA_AVX2)
__attribute__((target("avx2"))) void blocks_avx2(const BlockJob& job, int cn) { blocks(job, cn); }
#endif

void area_integer(const uint8_t* src, int64_t src_stride, uint8_t* dst, int64_t dst_stride,
                  const AreaResizeParams& p, int kx, int ky) {
  std::vector<int32_t> col(static_cast<size_t>(p.dst_w) * kx * p.channels);
  const BlockJob job{src, src_stride, dst, dst_stride, p.dst_w, p.dst_h, kx, ky, col.data()};
#if defined(EA_AREA_AVX2)
  if (p.avx2 && has_avx2()) {
    blocks_avx2(job, p.channels);
    return;
  }
#endif
  blocks_baseline(job, p.channels);
}

}  // namespace

void validate(const AreaResizeParams& p) {
  if (p.src_h < 1 || p.src_w < 1) {
    throw std::invalid_argument("resize_area: the image is empty (" + std::to_string(p.src_h) + " x " +
                                std::to_string(p.src_w) + "); pass an H x W or H x W x C uint8 image");
  }
  if (p.channels != 1 && p.channels != 3 && p.channels != 4) {
    throw std::invalid_argument("resize_area: images with 1, 3 or 4 channels only, got " +
                                std::to_string(p.channels) + "; use cv2.resize for others");
  }
  if (p.dst_h < 1 || p.dst_w < 1 || p.dst_h > p.src_h || p.dst_w > p.src_w) {
    throw std::invalid_argument(
        "resize_area: the output size must be between 1 and the input size on both axes (it only "
        "shrinks), got " + std::to_string(p.dst_h) + " x " + std::to_string(p.dst_w) + " for a " +
        std::to_string(p.src_h) + " x " + std::to_string(p.src_w) +
        " image; enlarge with cv2.resize(..., interpolation=cv2.INTER_LINEAR)");
  }
  if (static_cast<int64_t>(p.src_w) * p.channels > (int64_t{1} << 29)) {
    throw std::invalid_argument("resize_area: rows of more than 2^29 values (" +
                                std::to_string(p.src_w) + " pixels x " + std::to_string(p.channels) +
                                ") are not supported; use cv2.resize");
  }
}

void resize_area_cpu(const uint8_t* src, int64_t src_stride, uint8_t* dst, int64_t dst_stride,
                     const AreaResizeParams& p) {
  validate(p);
  const double scale_x = 1.0 / (static_cast<double>(p.dst_w) / p.src_w);   // as OpenCV computes them
  const double scale_y = 1.0 / (static_cast<double>(p.dst_h) / p.src_h);
  const int kx = static_cast<int>(std::lrint(scale_x));
  const int ky = static_cast<int>(std::lrint(scale_y));
  if (std::abs(scale_x - kx) < DBL_EPSILON && std::abs(scale_y - ky) < DBL_EPSILON) {
    area_integer(src, src_stride, dst, dst_stride, p, kx, ky);
  } else {
    area_general(src, src_stride, dst, dst_stride, p, scale_x, scale_y);
  }
}

}  // namespace edge_ad
