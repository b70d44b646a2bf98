// upfirdn2d CUDA kernels. One thread per output element (grid-stride), polyphase: every thread
// visits only the taps that land on real (not zero-inserted) input samples, and only kept
// (every down-th) outputs are computed. Separable filters run as two 1-D passes.
// Accumulation is in float for half/float data and in double for double data.

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "upfirdn2d_cuda.h"

namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535LL * 64;

__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }

template <typename T, typename A>
__device__ __forceinline__ T from_acc(A v) { return static_cast<T>(v); }
template <>
__device__ __forceinline__ __half from_acc<__half, float>(float v) { return __float2half_rn(v); }

__device__ __forceinline__ int64_t floor_div(int64_t a, int64_t b) {
  return a >= 0 ? a / b : -((-a + b - 1) / b);
}

// First tap t0 that lands on a real sample for output o, and that sample's input index m0.
__device__ __forceinline__ void first_tap(const Upfirdn2dAxis& a, int64_t o, int64_t& t0, int64_t& m0) {
  const int64_t s = o * a.down - a.pad0;
  t0 = ((-s) % a.up + a.up) % a.up;
  m0 = floor_div(s + t0, a.up);
}

template <typename TIn, typename TOut, typename A>
__global__ void pass_1d_kernel(const TIn* __restrict__ x, TOut* __restrict__ y, const A* __restrict__ g,
                               int64_t outer, int64_t inner, Upfirdn2dAxis a) {
  const int64_t total = outer * a.nout * inner;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t c = i % inner;
    const int64_t o = (i / inner) % a.nout;
    const int64_t b = i / (inner * a.nout);
    int64_t t, m;
    first_tap(a, o, t, m);
    const TIn* row = x + b * a.n * inner + c;
    A acc = 0;
    for (; t < a.taps; t += a.up, ++m)
      if (m >= 0 && m < a.n) acc += g[t] * to_acc(row[m * inner]);
    y[i] = from_acc<TOut, A>(acc);
  }
}

template <typename T, typename A>
__global__ void pass_2d_kernel(const T* __restrict__ x, T* __restrict__ y, const A* __restrict__ g,
                               int64_t planes, Upfirdn2dAxis ax, Upfirdn2dAxis ay) {
  const int64_t total = planes * ay.nout * ax.nout;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t ox = i % ax.nout;
    const int64_t oy = (i / ax.nout) % ay.nout;
    const int64_t p = i / (ax.nout * ay.nout);
    int64_t tx0, mx0, ty, my;
    first_tap(ax, ox, tx0, mx0);
    first_tap(ay, oy, ty, my);
    const T* plane = x + p * ay.n * ax.n;
    A acc = 0;
    for (; ty < ay.taps; ty += ay.up, ++my) {
      if (my < 0 || my >= ay.n) continue;
      const T* row = plane + my * ax.n;
      const A* grow = g + ty * ax.taps;
      int64_t mx = mx0;
      for (int64_t tx = tx0; tx < ax.taps; tx += ax.up, ++mx)
        if (mx >= 0 && mx < ax.n) acc += grow[tx] * to_acc(row[mx]);
    }
    y[i] = from_acc<T, A>(acc);
  }
}

int blocks_for(int64_t total) {
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  return static_cast<int>(blocks < kMaxBlocks ? (blocks > 0 ? blocks : 1) : kMaxBlocks);
}

template <typename TIn, typename TOut, typename A>
cudaError_t launch_1d(const Upfirdn2dPass1d& p, cudaStream_t stream) {
  const int64_t total = p.outer * p.axis.nout * p.inner;
  pass_1d_kernel<TIn, TOut, A><<<blocks_for(total), kThreads, 0, stream>>>(
      static_cast<const TIn*>(p.x), static_cast<TOut*>(p.y), static_cast<const A*>(p.g), p.outer, p.inner, p.axis);
  return cudaGetLastError();
}

template <typename T, typename A>
cudaError_t launch_1d_sides(const Upfirdn2dPass1d& p, bool in_is_acc, bool out_is_acc, cudaStream_t stream) {
  if (in_is_acc && out_is_acc) return launch_1d<A, A, A>(p, stream);
  if (in_is_acc) return launch_1d<A, T, A>(p, stream);
  if (out_is_acc) return launch_1d<T, A, A>(p, stream);
  return launch_1d<T, T, A>(p, stream);
}

}  // namespace

cudaError_t upfirdn2d_launch_1d(const Upfirdn2dPass1d& p, Upfirdn2dDtype dtype, bool in_is_acc,
                                bool out_is_acc, cudaStream_t stream) {
  switch (dtype) {
    case Upfirdn2dDtype::kHalf: return launch_1d_sides<__half, float>(p, in_is_acc, out_is_acc, stream);
    case Upfirdn2dDtype::kFloat: return launch_1d<float, float, float>(p, stream);
    case Upfirdn2dDtype::kDouble: return launch_1d<double, double, double>(p, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t upfirdn2d_launch_2d(const Upfirdn2dPass2d& p, Upfirdn2dDtype dtype, cudaStream_t stream) {
  const int64_t total = p.planes * p.ay.nout * p.ax.nout;
  const int blocks = blocks_for(total);
  switch (dtype) {
    case Upfirdn2dDtype::kHalf:
      pass_2d_kernel<__half, float><<<blocks, kThreads, 0, stream>>>(
          static_cast<const __half*>(p.x), static_cast<__half*>(p.y), static_cast<const float*>(p.g), p.planes, p.ax, p.ay);
      break;
    case Upfirdn2dDtype::kFloat:
      pass_2d_kernel<float, float><<<blocks, kThreads, 0, stream>>>(
          static_cast<const float*>(p.x), static_cast<float*>(p.y), static_cast<const float*>(p.g), p.planes, p.ax, p.ay);
      break;
    case Upfirdn2dDtype::kDouble:
      pass_2d_kernel<double, double><<<blocks, kThreads, 0, stream>>>(
          static_cast<const double*>(p.x), static_cast<double*>(p.y), static_cast<const double*>(p.g), p.planes, p.ax, p.ay);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}
