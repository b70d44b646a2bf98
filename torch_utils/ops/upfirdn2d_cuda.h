// Interface between the upfirdn2d CUDA binding (upfirdn2d_cuda.cpp, host compiler, ATen) and its
// kernels (upfirdn2d.cu, nvcc, CUDA headers only, which keeps the nvcc compile short).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

enum class Upfirdn2dDtype { kHalf, kFloat, kDouble };

// One axis of the op: y[o] = sum_t g[t] * u[o * down + t - pad0], u = x with up - 1 zeros after
// each sample. taps is the filter length along this axis.
struct Upfirdn2dAxis {
  int64_t n, nout, up, down, pad0, taps;
};

// Filtering along one axis of a contiguous array viewed as [outer, n, inner] -> [outer, nout, inner].
// `g` is a 1-D correlation filter (float for half/float data, double for double data).
struct Upfirdn2dPass1d {
  const void* x;
  void* y;
  const void* g;
  int64_t outer, inner;
  Upfirdn2dAxis axis;
};

// Full 2-D filtering of [planes, H, W] -> [planes, Hout, Wout] with a 2-D correlation filter
// g [fh, fw] (fh = ay.taps, fw = ax.taps).
struct Upfirdn2dPass2d {
  const void* x;
  void* y;
  const void* g;
  int64_t planes;
  Upfirdn2dAxis ax, ay;
};

// in_is_acc / out_is_acc: that side holds the accumulation type (float for half data) instead of
// the data type, so the separable passes can keep their intermediate at full precision.
cudaError_t upfirdn2d_launch_1d(const Upfirdn2dPass1d& p, Upfirdn2dDtype dtype, bool in_is_acc,
                                bool out_is_acc, cudaStream_t stream);
cudaError_t upfirdn2d_launch_2d(const Upfirdn2dPass2d& p, Upfirdn2dDtype dtype, cudaStream_t stream);
