// bias_act CUDA kernels: one grid-stride elementwise pass per call, for float, double, half and
// bfloat16 (the last two computed in float). The per-element math lives in bias_act_kernel.h,
// shared with the CPU kernel; the host side (checks, layouts, stream) is in bias_act.cpp. No torch
// headers here, which keeps nvcc fast.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>

#include "bias_act_kernel.h"

namespace bias_act {
namespace {

constexpr int kThreads = 256;
// Enough blocks to fill any current GPU several times; the grid-stride loop covers the rest, and
// the cap keeps i + stride far below 2^32 for the 32-bit index.
constexpr int64_t kMaxBlocks = 65536;

// Loads and stores in the compute type: float for the 16-bit types, the type itself otherwise.
template <typename T> struct Acc {
    using type = T;
    static __device__ __forceinline__ T load(T v) { return v; }
    static __device__ __forceinline__ T store(T v) { return v; }
};
template <> struct Acc<__half> {
    using type = float;
    static __device__ __forceinline__ float load(__half v) { return __half2float(v); }
    static __device__ __forceinline__ __half store(float v) { return __float2half_rn(v); }
};
template <> struct Acc<__nv_bfloat16> {
    using type = float;
    static __device__ __forceinline__ float load(__nv_bfloat16 v) { return __bfloat162float(v); }
    static __device__ __forceinline__ __nv_bfloat16 store(float v) { return __float2bfloat16_rn(v); }
};

template <typename T, typename index_t, int A, int M>
__global__ void __launch_bounds__(kThreads) bias_act_kernel(Params p) {
    using acc = Acc<T>;
    using acc_t = typename acc::type;
    const T* __restrict__ in = static_cast<const T*>(p.in);
    const T* __restrict__ ref = static_cast<const T*>(p.ref);
    const T* __restrict__ b = static_cast<const T*>(p.b);
    T* __restrict__ out = static_cast<T*>(p.out);
    const bool no_clamp = p.clamp < 0;
    const acc_t alpha = acc_t(p.alpha), gain = acc_t(p.gain);
    const acc_t clamp = no_clamp ? acc_t(INFINITY) : acc_t(p.clamp);
    const index_t n = index_t(p.numel), inner = index_t(p.inner), C = index_t(p.C);
    const index_t stride = index_t(gridDim.x) * index_t(blockDim.x);
    for (index_t i = index_t(blockIdx.x) * index_t(blockDim.x) + index_t(threadIdx.x); i < n; i += stride) {
        const acc_t bias = b != nullptr ? acc::load(b[(i / inner) % C]) : acc_t(0);
        const acc_t r = M == kForward ? acc_t(0) : acc::load(ref[i]);
        out[i] = acc::store(eval<A, M>(acc::load(in[i]), bias, r, alpha, gain, clamp, no_clamp));
    }
}

template <typename T, typename index_t>
const char* launch_typed(const Params& p, cudaStream_t stream) {
    const int64_t blocks = std::min<int64_t>((p.numel + kThreads - 1) / kThreads, kMaxBlocks);
    const bool known = dispatch_act_mode(p.act, p.mode, [&](auto act, auto mode) {
        bias_act_kernel<T, index_t, decltype(act)::value, decltype(mode)::value>
            <<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p);
    });
    if (!known) {
        return "unsupported (act, mode) pair";
    }
    const cudaError_t err = cudaGetLastError();
    return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

template <typename T>
const char* launch_indexed(const Params& p, cudaStream_t stream) {
    // 32-bit index arithmetic (the divisions dominate the ALU work) unless the tensor is huge.
    if (p.numel <= INT32_MAX) {
        return launch_typed<T, uint32_t>(p, stream);
    }
    return launch_typed<T, int64_t>(p, stream);
}

}  // namespace

const char* launch_cuda(const Params& p, int dtype, void* stream) {
    if (p.numel == 0) {
        return nullptr;
    }
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    switch (dtype) {
        case kFloat32: return launch_indexed<float>(p, s);
        case kFloat64: return launch_indexed<double>(p, s);
        case kFloat16: return launch_indexed<__half>(p, s);
        case kBFloat16: return launch_indexed<__nv_bfloat16>(p, s);
        default: return "unsupported dtype code";
    }
}

}  // namespace bias_act
