// upfirdn2d CPU kernel: upsample (zero insertion), pad/crop, valid FIR correlation, downsample.
//
// The Python wrapper passes a correlation filter g with flip and gain already folded in, so this
// file computes, per axis, y[o] = sum_t g[t] * u[o * down + t - pad0], where u is the input with
// up - 1 zeros after every sample (u[k] = x[k / up] when k % up == 0, and 0 outside [0, n * up)).
//
// Work is done the cheap way:
//  * polyphase: only taps t with (o * down + t - pad0) % up == 0 touch a real sample, so each
//    output costs about taps / up multiply-adds and the inserted zeros are never materialised;
//  * only the kept outputs (every down-th) are computed;
//  * separable filters (1-D, or 2-D of numerical rank 1 such as outer([1,3,3,1])) run as a
//    horizontal pass into a per-plane scratch buffer and a vertical pass of whole-row axpys;
//  * planes (n, c) are split across threads with at::parallel_for;
//  * small planes (<= kSmallMaxPixels in and out, e.g. StyleGAN2's 4x4 .. 33x33) go through
//    run_small instead, which filters 16 planes at once in a transposed [pixel][plane] layout.
//    The row path's fixed cost per row dominated there (rows of 4 - 33 samples).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// Polyphase schedule of one axis. Outputs o and o + period share their tap pattern; the input
// index of their first tap differs by `step`.
struct AxisPlan {
  int64_t n, nout, up, down, pad0, taps;
  int64_t period, step;
  int64_t lo, hi;  // range of input indices any output reads (may lie outside [0, n))
  std::vector<int64_t> first_tap, first_in, count;  // per phase r < period: t0, m0, #taps

  AxisPlan(int64_t n_, int64_t up_, int64_t down_, int64_t pad0_, int64_t pad1, int64_t taps_)
      : n(n_), up(up_), down(down_), pad0(pad0_), taps(taps_) {
    nout = (n * up + pad0 + pad1 - taps) / down + 1;
    period = up / std::gcd(up, down);
    step = period * down / up;
    lo = floor_div(-pad0, up);
    hi = floor_div((nout - 1) * down - pad0 + taps - 1, up);
    for (int64_t r = 0; r < period; ++r) {
      const int64_t s = r * down - pad0;          // upsampled position under tap 0
      const int64_t t0 = ((-s) % up + up) % up;   // first tap on a real sample
      first_tap.push_back(t0);
      first_in.push_back(floor_div(s + t0, up));
      count.push_back(t0 < taps ? (taps - t0 + up - 1) / up : 0);
    }
  }
};

// acc[k] = sum_j w[j * wstride] * s[k * STEP + j] for k < K. STEP is a template argument so the
// common unit and stride-2 cases vectorise; STEP == 0 means "use the runtime step".
template <typename T, int STEP>
void fir_phase(const T* __restrict s, const T* __restrict w, int64_t wstride, int64_t J, int64_t K,
               int64_t step, T* __restrict acc) {
  const int64_t st = STEP ? STEP : step;
  const T w0 = w[0];
  for (int64_t k = 0; k < K; ++k) acc[k] = w0 * s[k * st];
  for (int64_t j = 1; j < J; ++j) {
    const T wj = w[j * wstride];
    const T* __restrict sj = s + j;
    for (int64_t k = 0; k < K; ++k) acc[k] += wj * sj[k * st];
  }
}

// One row along x: out[o] (=|+=) sum_t w[t] * u[...]. `buf` holds input index m at buf[m - blo]
// with zeros outside [0, n); `acc` is scratch of at least nout / period + 1 elements.
template <typename T, bool ACCUMULATE>
void fir_row(const AxisPlan& p, int64_t blo, const T* buf, const T* w, T* out, T* acc) {
  for (int64_t r = 0; r < p.period && r < p.nout; ++r) {
    const int64_t K = (p.nout - r + p.period - 1) / p.period;
    const int64_t J = p.count[r];
    T* dst = out + r;
    if (J == 0) {
      if (!ACCUMULATE)
        for (int64_t k = 0; k < K; ++k) dst[k * p.period] = T(0);
      continue;
    }
    const T* s = buf + (p.first_in[r] - blo);
    const T* wr = w + p.first_tap[r];
    // Unit-period rows without accumulation write straight into the output.
    T* target = (p.period == 1 && !ACCUMULATE) ? dst : acc;
    if (p.step == 1)
      fir_phase<T, 1>(s, wr, p.up, J, K, 1, target);
    else if (p.step == 2)
      fir_phase<T, 2>(s, wr, p.up, J, K, 2, target);
    else
      fir_phase<T, 0>(s, wr, p.up, J, K, p.step, target);
    if (target == dst) continue;
    for (int64_t k = 0; k < K; ++k) {
      if (ACCUMULATE)
        dst[k * p.period] += acc[k];
      else
        dst[k * p.period] = acc[k];
    }
  }
}

// d[x] (=|+=) sum_{j < count} w[j] * rows[j][x] for count <= 4 rows, in a single sweep over d.
template <typename T, bool ACCUMULATE>
void combine_rows(T* __restrict d, const T* const* rows, const T* w, int64_t count, int64_t width) {
  const T* __restrict a = rows[0];
  const T* __restrict b = rows[count > 1 ? 1 : 0];
  const T* __restrict c = rows[count > 2 ? 2 : 0];
  const T* __restrict e = rows[count > 3 ? 3 : 0];
  // Missing rows get weight 0 and alias row 0, so one loop body serves every count.
  const T wa = w[0], wb = count > 1 ? w[1] : T(0), wc = count > 2 ? w[2] : T(0), we = count > 3 ? w[3] : T(0);
  for (int64_t x = 0; x < width; ++x) {
    const T v = wa * a[x] + wb * b[x] + wc * c[x] + we * e[x];
    d[x] = ACCUMULATE ? d[x] + v : v;
  }
}

// Vertical pass over whole rows: out[o][:] = sum_t w[t] * src[m][:], src [n][width], out [nout][width].
template <typename T>
void fir_cols(const AxisPlan& p, const T* src, int64_t width, const T* w, T* out) {
  std::vector<const T*> rows(p.taps);
  std::vector<T> weights(p.taps);
  for (int64_t o = 0; o < p.nout; ++o) {
    const int64_t r = o % p.period;
    const int64_t m0 = p.first_in[r] + (o / p.period) * p.step;
    int64_t used = 0;
    for (int64_t j = 0; j < p.count[r]; ++j) {
      const int64_t m = m0 + j;
      if (m < 0 || m >= p.n) continue;  // zero padding contributes nothing
      rows[used] = src + m * width;
      weights[used++] = w[p.first_tap[r] + j * p.up];
    }
    T* d = out + o * width;
    if (used == 0) {
      std::fill(d, d + width, T(0));
      continue;
    }
    combine_rows<T, false>(d, rows.data(), weights.data(), std::min<int64_t>(used, 4), width);
    for (int64_t j = 4; j < used; j += 4)
      combine_rows<T, true>(d, rows.data() + j, weights.data() + j, std::min<int64_t>(used - j, 4), width);
  }
}

// Per-thread scratch for one plane.
template <typename T>
struct Scratch {
  std::vector<T> rows;  // zero-bordered input rows, `stride` elements each
  std::vector<T> tmp;   // separable: horizontal-pass result [n_y][nout_x]
  std::vector<T> acc;   // one phase of one output row
  int64_t stride = 0, blo = 0;
};

struct Problem {
  AxisPlan px, py;
  bool separable;
  int64_t H, W;
};

// Copy input row y of `plane` into its zero-bordered slot of the scratch rows.
template <typename T>
const T* padded_row(const Problem& pb, Scratch<T>& sc, const T* plane, int64_t y, int64_t slot) {
  T* dst = sc.rows.data() + slot * sc.stride;
  std::copy(plane + y * pb.W, plane + (y + 1) * pb.W, dst - sc.blo);
  return dst;
}

template <typename T>
void plane_separable(const Problem& pb, Scratch<T>& sc, const T* plane, const T* wx, const T* wy, T* out) {
  const int64_t ylo = std::max<int64_t>(pb.py.lo, 0), yhi = std::min(pb.py.hi, pb.H - 1);
  for (int64_t y = ylo; y <= yhi; ++y) {  // rows no output reads are skipped (cropping)
    const T* buf = padded_row(pb, sc, plane, y, 0);
    fir_row<T, false>(pb.px, sc.blo, buf, wx, sc.tmp.data() + y * pb.px.nout, sc.acc.data());
  }
  fir_cols(pb.py, sc.tmp.data(), pb.px.nout, wy, out);
}

template <typename T>
void plane_2d(const Problem& pb, Scratch<T>& sc, const T* plane, const T* g, T* out) {
  const AxisPlan& py = pb.py;
  const int64_t ylo = std::max<int64_t>(py.lo, 0), yhi = std::min(py.hi, pb.H - 1);
  for (int64_t y = ylo; y <= yhi; ++y) padded_row(pb, sc, plane, y, y);
  const int64_t woutx = pb.px.nout, fw = pb.px.taps;
  for (int64_t o = 0; o < py.nout; ++o) {
    const int64_t r = o % py.period;
    const int64_t m0 = py.first_in[r] + (o / py.period) * py.step;
    T* row_out = out + o * woutx;
    bool written = false;
    for (int64_t j = 0; j < py.count[r]; ++j) {
      const int64_t m = m0 + j;
      if (m < 0 || m >= py.n) continue;
      const T* w = g + (py.first_tap[r] + j * py.up) * fw;
      const T* buf = sc.rows.data() + m * sc.stride;
      if (written)
        fir_row<T, true>(pb.px, sc.blo, buf, w, row_out, sc.acc.data());
      else
        fir_row<T, false>(pb.px, sc.blo, buf, w, row_out, sc.acc.data());
      written = true;
    }
    if (!written) std::fill(row_out, row_out + woutx, T(0));
  }
}

// If the 2-D filter [fh, fw] equals outer(col, row) up to `tol` * max|g|, fill col/row and return true.
template <typename T>
bool rank_one_factors(const T* g, int64_t fh, int64_t fw, double tol, std::vector<T>& col, std::vector<T>& row) {
  int64_t best = 0;
  for (int64_t i = 1; i < fh * fw; ++i)
    if (std::abs(g[i]) > std::abs(g[best])) best = i;
  const double peak = std::abs(static_cast<double>(g[best]));
  if (peak == 0.0) return false;
  const int64_t bi = best / fw, bj = best % fw;
  col.assign(fh, T(0));
  row.assign(fw, T(0));
  for (int64_t i = 0; i < fh; ++i) col[i] = g[i * fw + bj];
  for (int64_t j = 0; j < fw; ++j) row[j] = static_cast<T>(static_cast<double>(g[bi * fw + j]) / g[best]);
  for (int64_t i = 0; i < fh; ++i)
    for (int64_t j = 0; j < fw; ++j)
      if (std::abs(static_cast<double>(g[i * fw + j]) - static_cast<double>(col[i]) * row[j]) > tol * peak)
        return false;
  return true;
}

// ---------------------------------------------------------------------------------------------
// Small planes (up to 33x33): the row-by-row path above pays its per-row bookkeeping on
// rows only a few samples long. Here kLanes planes are processed together: they are transposed
// into a [pixel][lane] scratch (in L1/L2), every tap becomes one kLanes-wide vector
// multiply-add over the lanes, and the result is transposed back. Per-output tap lists with the
// zero padding already dropped replace the polyphase bookkeeping; each plane's result is computed
// the same way whichever block it falls in, so it does not depend on the thread count.

constexpr int64_t kLanes = 16;  // transpose_tile16 assumes 16
constexpr int64_t kSmallMaxPixels = 1089;  // in and out pixels per plane (33 x 33; measured faster)

// Per-output list of (input index, tap index) pairs along one axis, taps on padding dropped.
struct TapList {
  std::vector<int64_t> start;  // outputs o use entries [start[o], start[o + 1])
  std::vector<int64_t> m, t;

  explicit TapList(const AxisPlan& p) {
    start.push_back(0);
    for (int64_t o = 0; o < p.nout; ++o) {
      const int64_t r = o % p.period;
      const int64_t m0 = p.first_in[r] + (o / p.period) * p.step;
      for (int64_t j = 0; j < p.count[r]; ++j) {
        const int64_t mm = m0 + j;
        if (mm < 0 || mm >= p.n) continue;
        m.push_back(mm);
        t.push_back(p.first_tap[r] + j * p.up);
      }
      start.push_back(static_cast<int64_t>(m.size()));
    }
  }
};

// dst[l] (=|+=) w * src[l] over the lanes.
template <typename T, bool ACCUMULATE>
inline void lanes_axpy(T* __restrict dst, const T* __restrict src, T w) {
#pragma omp simd
  for (int64_t l = 0; l < kLanes; ++l) dst[l] = ACCUMULATE ? dst[l] + w * src[l] : w * src[l];
}

template <typename T>
inline void lanes_zero(T* __restrict dst) {
  for (int64_t l = 0; l < kLanes; ++l) dst[l] = T(0);
}

// d[i * kLanes + l] = src[l * n + i] for l < np, i < n, in tiles of kTile pixels so that both
// sides stay within a few cache lines.
constexpr int64_t kTile = 16;

// Full 16 x 16 float tiles: rows of src (stride ss) become columns of dst (stride ds). Only built
// with AVX-512 (this plugin is compiled with -march=native); elsewhere the plain loops serve.
template <typename T>
inline bool transpose_tile16(const T* src, int64_t ss, T* dst, int64_t ds) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    __m512 r[16], t[16];
    for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * ss);
    for (int i = 0; i < 16; i += 2) {
      t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
      t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {  // each 128-bit lane j of r[i + q]: column 4j + q of rows i..i+3
      const __m512d a = _mm512_castps_pd(t[i]), b = _mm512_castps_pd(t[i + 1]);
      const __m512d c = _mm512_castps_pd(t[i + 2]), e = _mm512_castps_pd(t[i + 3]);
      r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
      r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
      r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, e));
      r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, e));
    }
    for (int q = 0; q < 4; ++q) {  // gather lane j of r[q], r[4 + q], r[8 + q], r[12 + q]
      const __m512 u0 = _mm512_shuffle_f32x4(r[q], r[4 + q], 0x44), u1 = _mm512_shuffle_f32x4(r[q], r[4 + q], 0xEE);
      const __m512 v0 = _mm512_shuffle_f32x4(r[8 + q], r[12 + q], 0x44);
      const __m512 v1 = _mm512_shuffle_f32x4(r[8 + q], r[12 + q], 0xEE);
      _mm512_storeu_ps(dst + (0 + q) * ds, _mm512_shuffle_f32x4(u0, v0, 0x88));
      _mm512_storeu_ps(dst + (4 + q) * ds, _mm512_shuffle_f32x4(u0, v0, 0xDD));
      _mm512_storeu_ps(dst + (8 + q) * ds, _mm512_shuffle_f32x4(u1, v1, 0x88));
      _mm512_storeu_ps(dst + (12 + q) * ds, _mm512_shuffle_f32x4(u1, v1, 0xDD));
    }
    return true;
  }
#endif
  (void)src, (void)ss, (void)dst, (void)ds;
  return false;
}

template <typename T>
void transpose_in(const T* __restrict src, T* __restrict d, int64_t np, int64_t n) {
  for (int64_t i0 = 0; i0 < n; i0 += kTile) {
    const int64_t i1 = std::min(n, i0 + kTile);
    if (np == kLanes && i1 - i0 == kTile && transpose_tile16(src + i0, n, d + i0 * kLanes, kLanes)) continue;
    for (int64_t l = 0; l < np; ++l) {
      const T* s = src + l * n;
      for (int64_t i = i0; i < i1; ++i) d[i * kLanes + l] = s[i];
    }
  }
}

// dst[l * n + i] = s[i * kLanes + l] for l < np, i < n.
template <typename T>
void transpose_out(const T* __restrict s, T* __restrict dst, int64_t np, int64_t n) {
  for (int64_t i0 = 0; i0 < n; i0 += kTile) {
    const int64_t i1 = std::min(n, i0 + kTile);
    if (np == kLanes && i1 - i0 == kTile && transpose_tile16(s + i0 * kLanes, kLanes, dst + i0, n)) continue;
    for (int64_t l = 0; l < np; ++l) {
      T* d = dst + l * n;
      for (int64_t i = i0; i < i1; ++i) d[i] = s[i * kLanes + l];
    }
  }
}

template <typename T>
void run_small(const T* xp, T* yp, int64_t planes, const Problem& pb, bool separable, const T* g, const T* wx,
               const T* wy) {
  const TapList lx(pb.px), ly(pb.py);
  const int64_t in_size = pb.H * pb.W, nox = pb.px.nout, noy = pb.py.nout, out_size = nox * noy;
  const int64_t fw = pb.px.taps;
  const int64_t blocks = (planes + kLanes - 1) / kLanes;
  const int64_t grain = std::max<int64_t>(1, 8192 / (kLanes * std::max(in_size, out_size)));
  at::parallel_for(0, blocks, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> xin(in_size * kLanes), tmp(separable ? pb.H * nox * kLanes : 0), out(out_size * kLanes);
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t p0 = blk * kLanes, np = std::min(kLanes, planes - p0);
      const T* src = xp + p0 * in_size;
      if (np < kLanes) std::fill(xin.begin(), xin.end(), T(0));
      transpose_in(src, xin.data(), np, in_size);
      if (separable) {
        // Horizontal pass over every input row: tmp[y][ox] = sum wx[t] * x[y][m].
        for (int64_t y = 0; y < pb.H; ++y) {
          const T* xrow = xin.data() + y * pb.W * kLanes;
          T* trow = tmp.data() + y * nox * kLanes;
          for (int64_t o = 0; o < nox; ++o) {
            T* d = trow + o * kLanes;
            const int64_t a = lx.start[o], b = lx.start[o + 1];
            if (a == b) { lanes_zero(d); continue; }
            lanes_axpy<T, false>(d, xrow + lx.m[a] * kLanes, wx[lx.t[a]]);
            for (int64_t e = a + 1; e < b; ++e) lanes_axpy<T, true>(d, xrow + lx.m[e] * kLanes, wx[lx.t[e]]);
          }
        }
        // Vertical pass: out[oy][:] = sum wy[t] * tmp[m][:], whole rows of nox * kLanes.
        const int64_t rowlen = nox * kLanes;
        for (int64_t o = 0; o < noy; ++o) {
          T* d = out.data() + o * rowlen;
          const int64_t a = ly.start[o], b = ly.start[o + 1];
          if (a == b) { std::fill(d, d + rowlen, T(0)); continue; }
          {
            const T* s = tmp.data() + ly.m[a] * rowlen;
            const T w = wy[ly.t[a]];
#pragma omp simd
            for (int64_t k = 0; k < rowlen; ++k) d[k] = w * s[k];
          }
          for (int64_t e = a + 1; e < b; ++e) {
            const T* s = tmp.data() + ly.m[e] * rowlen;
            const T w = wy[ly.t[e]];
#pragma omp simd
            for (int64_t k = 0; k < rowlen; ++k) d[k] += w * s[k];
          }
        }
      } else {
        for (int64_t oy = 0; oy < noy; ++oy) {
          for (int64_t ox = 0; ox < nox; ++ox) {
            T* d = out.data() + (oy * nox + ox) * kLanes;
            bool written = false;
            for (int64_t ey = ly.start[oy]; ey < ly.start[oy + 1]; ++ey) {
              const T* xrow = xin.data() + ly.m[ey] * pb.W * kLanes;
              const T* grow = g + ly.t[ey] * fw;
              for (int64_t ex = lx.start[ox]; ex < lx.start[ox + 1]; ++ex) {
                if (written)
                  lanes_axpy<T, true>(d, xrow + lx.m[ex] * kLanes, grow[lx.t[ex]]);
                else
                  lanes_axpy<T, false>(d, xrow + lx.m[ex] * kLanes, grow[lx.t[ex]]);
                written = true;
              }
            }
            if (!written) lanes_zero(d);
          }
        }
      }
      transpose_out(out.data(), yp + p0 * out_size, np, out_size);
    }
  });
}

template <typename T>
void run(const at::Tensor& x, const at::Tensor& f, const Problem& pb, at::Tensor& y) {
  const T* g = f.data_ptr<T>();
  std::vector<T> wx, wy;
  bool separable = pb.separable;
  if (separable) {
    wx.assign(g, g + pb.px.taps);
    wy = wx;
  } else {
    // A rank-1 filter in 2-D form (StyleGAN2's outer([1,3,3,1])) gives the same result, up to
    // rounding, with two 1-D passes: 2 * taps instead of taps^2 multiply-adds per output.
    const double tol = 4 * std::numeric_limits<T>::epsilon();
    separable = rank_one_factors(g, pb.py.taps, pb.px.taps, tol, wy, wx);
  }
  const int64_t planes = x.size(0) * x.size(1);
  const int64_t in_size = pb.H * pb.W, out_size = pb.py.nout * pb.px.nout;
  const T* xp = x.data_ptr<T>();
  T* yp = y.data_ptr<T>();
  if (in_size <= kSmallMaxPixels && out_size <= kSmallMaxPixels) {
    run_small<T>(xp, yp, planes, pb, separable, g, wx.data(), wy.data());
    return;
  }
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, out_size));
  at::parallel_for(0, planes, grain, [&](int64_t begin, int64_t end) {
    Scratch<T> sc;
    sc.blo = std::min<int64_t>(pb.px.lo, 0);
    sc.stride = std::max(pb.px.hi, pb.W - 1) - sc.blo + 1;
    sc.rows.assign((separable ? 1 : pb.H) * sc.stride, T(0));  // borders stay zero
    if (separable) sc.tmp.assign(pb.H * pb.px.nout, T(0));
    sc.acc.assign(pb.px.nout + 1, T(0));
    for (int64_t i = begin; i < end; ++i) {
      if (separable)
        plane_separable(pb, sc, xp + i * in_size, wx.data(), wy.data(), yp + i * out_size);
      else
        plane_2d(pb, sc, xp + i * in_size, g, yp + i * out_size);
    }
  });
}

at::Tensor upfirdn2d_cpu(const at::Tensor& x, const at::Tensor& f, int64_t upx, int64_t upy, int64_t downx,
                         int64_t downy, int64_t padx0, int64_t padx1, int64_t pady0, int64_t pady1) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 4 && x.is_contiguous(),
              "upfirdn2d_cpu: x must be a contiguous CPU tensor [N, C, H, W]");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "upfirdn2d_cpu: x must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(f.device().is_cpu() && f.scalar_type() == x.scalar_type() && f.is_contiguous() &&
                  (f.dim() == 1 || f.dim() == 2) && f.numel() > 0,
              "upfirdn2d_cpu: f must be a contiguous non-empty 1-D or 2-D CPU tensor of x's dtype");
  TORCH_CHECK(upx >= 1 && upy >= 1 && downx >= 1 && downy >= 1, "upfirdn2d_cpu: up and down must be >= 1");
  const int64_t fw = f.size(-1), fh = f.size(0);
  const int64_t H = x.size(2), W = x.size(3);
  TORCH_CHECK(W * upx + padx0 + padx1 >= fw && H * upy + pady0 + pady1 >= fh,
              "upfirdn2d_cpu: padded input smaller than the filter; increase padding");
  Problem pb{AxisPlan(W, upx, downx, padx0, padx1, fw), AxisPlan(H, upy, downy, pady0, pady1, fh), f.dim() == 1, H, W};
  at::Tensor y = at::empty({x.size(0), x.size(1), pb.py.nout, pb.px.nout}, x.options());
  if (x.numel() == 0 || y.numel() == 0) return y.zero_();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "upfirdn2d_cpu", [&] { run<scalar_t>(x, f, pb, y); });
  return y;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("upfirdn2d", &upfirdn2d_cpu, "upfirdn2d forward (CPU)", py::call_guard<py::gil_scoped_release>());
}
