// Winograd F(2x2, 3x3) tile transforms for 3x3 stride-1 convolutions on the CPU.
//
// A 3x3 correlation y = conv(x, w) is computed per 2x2 output tile as Y = A^T [U (.) V] A with
// V = B^T d B (d: the 4x4 input patch under the tile) and U = G w G^T; summed over the input
// channels the element-wise product becomes 16 independent matrix products M[k] = U[k] @ V[k],
// which the Python side runs with torch.bmm. This file holds the data-movement parts around
// that product, each with its adjoint (the transpose of the linear map) for the backward pass:
//
//   input_transform   x [N, C, H, W] -> V [16, C, P]      P = N * tiles_y * tiles_x
//   input_adjoint     V [16, C, P]   -> x [N, C, H, W]    (overlapping patches summed)
//   output_transform  M [16, O, P]   -> y [N, O, Ho, Wo]  (tiles past Ho/Wo cropped)
//   output_adjoint    y [N, O, Ho, Wo] -> M [16, O, P]
//
// with B^T = [[1,0,-1,0], [0,1,1,0], [0,-1,1,0], [0,1,0,-1]] and A^T = [[1,1,1,0], [0,1,-1,-1]].
// Index k of the 16 transformed values is 4 * row + column. Planes (n, c) are split across
// threads; each thread owns whole output planes, so the adjoint's sums need no atomics.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <vector>

namespace {

struct Geometry {
  int64_t n, c, h, w, pad_y, pad_x, out_h, out_w, tiles_y, tiles_x;
  int64_t tiles() const { return tiles_y * tiles_x; }
  int64_t p() const { return n * tiles(); }
};

Geometry make_geometry(int64_t n, int64_t c, int64_t h, int64_t w, int64_t pad_y, int64_t pad_x) {
  TORCH_CHECK(pad_y >= 0 && pad_x >= 0, "winograd: padding must be >= 0");
  const int64_t out_h = h + 2 * pad_y - 2, out_w = w + 2 * pad_x - 2;
  TORCH_CHECK(out_h >= 1 && out_w >= 1, "winograd: the input is smaller than the 3x3 kernel");
  return {n, c, h, w, pad_y, pad_x, out_h, out_w, (out_h + 1) / 2, (out_w + 1) / 2};
}

// Each plane is first copied into a zero-bordered scratch of (2 * tiles + 2)^2 samples, so the
// transforms below run branch-free over whole rows: B^T along the 4 rows of a tile row (vector
// loops over the width), then B along each row's samples with stride-2 loads, writing tiles_x
// consecutive outputs to each of the 16 planes of V.
template <typename T>
void input_transform_kernel(const T* x, T* v, const Geometry& g) {
  const int64_t planes = g.n * g.c, tiles = g.tiles(), cp = g.c * g.p();
  const int64_t wp = 2 * g.tiles_x + 2, hp = 2 * g.tiles_y + 2, tx_n = g.tiles_x;
  at::parallel_for(0, planes, 16, [&](int64_t begin, int64_t end) {
    std::vector<T> scratch(hp * wp), rows(4 * wp);
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t n = plane / g.c, ch = plane % g.c;
      const T* src = x + plane * g.h * g.w;
      std::fill(scratch.begin(), scratch.end(), T(0));
      const int64_t y_lo = std::max<int64_t>(0, -g.pad_y), y_hi = std::min(g.h, hp - g.pad_y);
      const int64_t x_lo = std::max<int64_t>(0, -g.pad_x), x_hi = std::min(g.w, wp - g.pad_x);
      for (int64_t yy = y_lo; yy < y_hi; ++yy)
        std::copy(src + yy * g.w + x_lo, src + yy * g.w + x_hi, scratch.data() + (yy + g.pad_y) * wp + x_lo + g.pad_x);
      T* dst = v + ch * g.p() + n * tiles;
      for (int64_t ty = 0; ty < g.tiles_y; ++ty) {
        const T* r0 = scratch.data() + 2 * ty * wp;
        const T *r1 = r0 + wp, *r2 = r1 + wp, *r3 = r2 + wp;
        T *u0 = rows.data(), *u1 = u0 + wp, *u2 = u1 + wp, *u3 = u2 + wp;
        for (int64_t i = 0; i < wp; ++i) {
          u0[i] = r0[i] - r2[i];
          u1[i] = r1[i] + r2[i];
          u2[i] = r2[i] - r1[i];
          u3[i] = r1[i] - r3[i];
        }
        for (int r = 0; r < 4; ++r) {
          const T* u = rows.data() + r * wp;
          T* out = dst + (4 * r) * cp + ty * tx_n;
          for (int64_t t = 0; t < tx_n; ++t) out[t] = u[2 * t] - u[2 * t + 2];
          out += cp;
          for (int64_t t = 0; t < tx_n; ++t) out[t] = u[2 * t + 1] + u[2 * t + 2];
          out += cp;
          for (int64_t t = 0; t < tx_n; ++t) out[t] = u[2 * t + 2] - u[2 * t + 1];
          out += cp;
          for (int64_t t = 0; t < tx_n; ++t) out[t] = u[2 * t + 1] - u[2 * t + 3];
        }
      }
    }
  });
}

// The transpose of input_transform_kernel, in the same row form: B along each row's samples
// (overlapping tiles summed into a row buffer), then B^T's transpose along the 4 rows.
template <typename T>
void input_adjoint_kernel(const T* v, T* x, const Geometry& g) {
  const int64_t planes = g.n * g.c, tiles = g.tiles(), cp = g.c * g.p();
  const int64_t wp = 2 * g.tiles_x + 2, hp = 2 * g.tiles_y + 2, tx_n = g.tiles_x;
  at::parallel_for(0, planes, 16, [&](int64_t begin, int64_t end) {
    std::vector<T> scratch(hp * wp), rows(4 * wp);
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t n = plane / g.c, ch = plane % g.c;
      const T* src = v + ch * g.p() + n * tiles;
      std::fill(scratch.begin(), scratch.end(), T(0));
      for (int64_t ty = 0; ty < g.tiles_y; ++ty) {
        std::fill(rows.begin(), rows.end(), T(0));
        for (int r = 0; r < 4; ++r) {
          T* q = rows.data() + r * wp;
          const T* in = src + (4 * r) * cp + ty * tx_n;
          const T *in0 = in, *in1 = in + cp, *in2 = in + 2 * cp, *in3 = in + 3 * cp;
          for (int64_t t = 0; t < tx_n; ++t) {  // d = B u per tile; neighbours overlap by 2 samples
            q[2 * t] += in0[t];
            q[2 * t + 1] += in1[t] - in2[t] + in3[t];
            q[2 * t + 2] += in1[t] + in2[t] - in0[t];
            q[2 * t + 3] -= in3[t];
          }
        }
        T* d0 = scratch.data() + 2 * ty * wp;
        T *d1 = d0 + wp, *d2 = d1 + wp, *d3 = d2 + wp;
        const T *q0 = rows.data(), *q1 = q0 + wp, *q2 = q1 + wp, *q3 = q2 + wp;
        for (int64_t i = 0; i < wp; ++i) {
          d0[i] += q0[i];
          d1[i] += q1[i] - q2[i] + q3[i];
          d2[i] += q1[i] + q2[i] - q0[i];
          d3[i] -= q3[i];
        }
      }
      T* dst = x + plane * g.h * g.w;
      for (int64_t yy = 0; yy < g.h; ++yy) {
        for (int64_t xx = 0; xx < g.w; ++xx) {
          const int64_t sy = yy + g.pad_y, sx = xx + g.pad_x;
          dst[yy * g.w + xx] = (sy < hp && sx < wp) ? scratch[sy * wp + sx] : T(0);
        }
      }
    }
  });
}

// Output planes (n, o): y tile = A^T m A, cropped to out_h x out_w.
template <typename T>
void output_transform_kernel(const T* m, T* y, const Geometry& g) {
  const int64_t planes = g.n * g.c, tiles = g.tiles(), cp = g.c * g.p();
  at::parallel_for(0, planes, 16, [&](int64_t begin, int64_t end) {
    T in[16];
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t n = plane / g.c, ch = plane % g.c;
      const T* src = m + ch * g.p() + n * tiles;
      T* dst = y + plane * g.out_h * g.out_w;
      for (int64_t ty = 0; ty < g.tiles_y; ++ty) {
        for (int64_t tx = 0; tx < g.tiles_x; ++tx) {
          const int64_t t = ty * g.tiles_x + tx;
          for (int k = 0; k < 16; ++k) in[k] = src[k * cp + t];
          T s[2][4];
          for (int col = 0; col < 4; ++col) {
            s[0][col] = in[col] + in[4 + col] + in[8 + col];
            s[1][col] = in[4 + col] - in[8 + col] - in[12 + col];
          }
          for (int a = 0; a < 2; ++a) {
            const int64_t yy = 2 * ty + a;
            if (yy >= g.out_h) break;
            const T out0 = s[a][0] + s[a][1] + s[a][2];
            const T out1 = s[a][1] - s[a][2] - s[a][3];
            dst[yy * g.out_w + 2 * tx] = out0;
            if (2 * tx + 1 < g.out_w) dst[yy * g.out_w + 2 * tx + 1] = out1;
          }
        }
      }
    }
  });
}

// m = A gy A^T per tile (cropped outputs count as zero).
template <typename T>
void output_adjoint_kernel(const T* gy, T* m, const Geometry& g) {
  const int64_t planes = g.n * g.c, tiles = g.tiles(), cp = g.c * g.p();
  at::parallel_for(0, planes, 16, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t n = plane / g.c, ch = plane % g.c;
      const T* src = gy + plane * g.out_h * g.out_w;
      T* dst = m + ch * g.p() + n * tiles;
      for (int64_t ty = 0; ty < g.tiles_y; ++ty) {
        for (int64_t tx = 0; tx < g.tiles_x; ++tx) {
          T q[2][2] = {{T(0), T(0)}, {T(0), T(0)}};
          for (int a = 0; a < 2; ++a) {
            const int64_t yy = 2 * ty + a;
            if (yy >= g.out_h) break;
            for (int b = 0; b < 2; ++b) {
              const int64_t xx = 2 * tx + b;
              if (xx < g.out_w) q[a][b] = src[yy * g.out_w + xx];
            }
          }
          T rows[4][2];  // A q (rows): [q0, q0 + q1, q0 - q1, -q1]
          for (int b = 0; b < 2; ++b) {
            rows[0][b] = q[0][b];
            rows[1][b] = q[0][b] + q[1][b];
            rows[2][b] = q[0][b] - q[1][b];
            rows[3][b] = -q[1][b];
          }
          const int64_t t = ty * g.tiles_x + tx;
          for (int r = 0; r < 4; ++r) {  // (A q) A^T (columns)
            dst[(4 * r + 0) * cp + t] = rows[r][0];
            dst[(4 * r + 1) * cp + t] = rows[r][0] + rows[r][1];
            dst[(4 * r + 2) * cp + t] = rows[r][0] - rows[r][1];
            dst[(4 * r + 3) * cp + t] = -rows[r][1];
          }
        }
      }
    }
  });
}

void check_input(const at::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.device().is_cpu(), "winograd: ", name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble,
              "winograd: ", name, " must be float32 or float64");
  TORCH_CHECK(t.dim() == dim, "winograd: ", name, " must have ", dim, " dimensions");
}

at::Tensor input_transform(const at::Tensor& x_in, int64_t pad_y, int64_t pad_x) {
  check_input(x_in, "x", 4);
  const at::Tensor x = x_in.contiguous();
  const Geometry g = make_geometry(x.size(0), x.size(1), x.size(2), x.size(3), pad_y, pad_x);
  at::Tensor v = at::empty({16, g.c, g.p()}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "winograd_input_transform", [&] {
    input_transform_kernel<scalar_t>(x.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), g);
  });
  return v;
}

at::Tensor input_adjoint(const at::Tensor& v_in, int64_t n, int64_t h, int64_t w, int64_t pad_y, int64_t pad_x) {
  check_input(v_in, "v", 3);
  const at::Tensor v = v_in.contiguous();
  const Geometry g = make_geometry(n, v.size(1), h, w, pad_y, pad_x);
  TORCH_CHECK(v.size(0) == 16 && v.size(2) == g.p(), "winograd: v has the wrong shape for this geometry");
  at::Tensor x = at::empty({n, g.c, h, w}, v.options());
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "winograd_input_adjoint", [&] {
    input_adjoint_kernel<scalar_t>(v.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), g);
  });
  return x;
}

// The geometry of the output side: "channels" are the output channels, h/w the output size
// (out_h = h + 2 * 1 - 2 with pad 1 reproduces it).
Geometry output_geometry(int64_t n, int64_t o, int64_t out_h, int64_t out_w) {
  return make_geometry(n, o, out_h, out_w, 1, 1);
}

at::Tensor output_transform(const at::Tensor& m_in, int64_t n, int64_t out_h, int64_t out_w) {
  check_input(m_in, "m", 3);
  const at::Tensor m = m_in.contiguous();
  const Geometry g = output_geometry(n, m.size(1), out_h, out_w);
  TORCH_CHECK(m.size(0) == 16 && m.size(2) == g.p(), "winograd: m has the wrong shape for this geometry");
  at::Tensor y = at::empty({n, g.c, out_h, out_w}, m.options());
  AT_DISPATCH_FLOATING_TYPES(m.scalar_type(), "winograd_output_transform", [&] {
    output_transform_kernel<scalar_t>(m.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), g);
  });
  return y;
}

at::Tensor output_adjoint(const at::Tensor& gy_in) {
  check_input(gy_in, "gy", 4);
  const at::Tensor gy = gy_in.contiguous();
  const Geometry g = output_geometry(gy.size(0), gy.size(1), gy.size(2), gy.size(3));
  at::Tensor m = at::empty({16, g.c, g.p()}, gy.options());
  AT_DISPATCH_FLOATING_TYPES(gy.scalar_type(), "winograd_output_adjoint", [&] {
    output_adjoint_kernel<scalar_t>(gy.data_ptr<scalar_t>(), m.data_ptr<scalar_t>(), g);
  });
  return m;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("input_transform", &input_transform, "x [N,C,H,W] -> B^T d B tiles [16,C,P]", nogil);
  m.def("input_adjoint", &input_adjoint, "adjoint of input_transform", nogil);
  m.def("output_transform", &output_transform, "A^T m A tiles [16,O,P] -> y [N,O,Ho,Wo]", nogil);
  m.def("output_adjoint", &output_adjoint, "adjoint of output_transform", nogil);
}
