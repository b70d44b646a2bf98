// bias_act: host code shared by both devices (argument checks, memory layout, dispatch), the
// multi-threaded CPU kernel, and the Python binding. bias_act.py builds this file twice: alone as
// the CPU plugin, and with -DBIAS_ACT_WITH_CUDA together with bias_act.cu as the CUDA plugin, so
// the layout logic the CPU tests exercise is the same code that feeds the GPU kernel.
// Only ATen and the pybind glue are included (not <torch/extension.h>): it halves the build time.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <optional>

#ifdef BIAS_ACT_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "bias_act_kernel.h"

namespace bias_act {
namespace {

// Elements per OpenMP task: large enough that thread start-up is noise, small enough that a
// 32x512x8x8 activation still splits across cores.
constexpr int64_t kGrainSize = 16384;

template <typename T>
struct Consts {
    T alpha, gain, clamp;  // clamp: +inf when there is none
    bool no_clamp;
};

// One run of storage with a single channel (NCHW-like layouts: inner > 1). Plain loops over
// __restrict__ pointers so the compiler vectorises them.
template <typename T, int A, int M>
void run_one_channel(const T* __restrict__ in, const T* __restrict__ ref, T* __restrict__ out, int64_t n,
                     T bias, const Consts<T> k) {
    for (int64_t j = 0; j < n; ++j) {
        out[j] = eval<A, M>(in[j], bias, ref[j], k.alpha, k.gain, k.clamp, k.no_clamp);
    }
}

// A stretch of one row holding consecutive channels (channels-last layouts: inner == 1).
template <typename T, int A, int M>
void run_channel_row(const T* __restrict__ in, const T* __restrict__ ref, T* __restrict__ out, int64_t n,
                     const T* __restrict__ bias, const Consts<T> k) {
    for (int64_t j = 0; j < n; ++j) {
        out[j] = eval<A, M>(in[j], bias[j], ref[j], k.alpha, k.gain, k.clamp, k.no_clamp);
    }
}

template <typename T, int A, int M>
void cpu_kernel(const Params& p) {
    const T* in = static_cast<const T*>(p.in);
    const T* ref = p.ref ? static_cast<const T*>(p.ref) : in;  // kForward never reads ref
    const T* b = static_cast<const T*>(p.b);
    T* out = static_cast<T*>(p.out);
    const bool no_clamp = p.clamp < 0;
    const Consts<T> k{T(p.alpha), T(p.gain), no_clamp ? T(INFINITY) : T(p.clamp), no_clamp};
    at::parallel_for(0, p.numel, kGrainSize, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end;) {
            const int64_t run = i / p.inner;
            const int64_t c = run % p.C;
            int64_t n;
            if (p.inner == 1 && b != nullptr) {
                n = std::min(end - i, p.C - c);
                run_channel_row<T, A, M>(in + i, ref + i, out + i, n, b + c, k);
            } else {
                n = std::min(end, (run + 1) * p.inner) - i;
                run_one_channel<T, A, M>(in + i, ref + i, out + i, n, b ? b[c] : T(0), k);
            }
            i += n;
        }
    });
}

template <typename T>
void cpu_launch(const Params& p) {
    dispatch_act_mode(p.act, p.mode, [&](auto act, auto mode) {
        cpu_kernel<T, decltype(act)::value, decltype(mode)::value>(p);
    });
}

// Any dense layout (contiguous, channels_last, permuted) is processed in place; others are copied.
at::Tensor make_dense(const at::Tensor& t) {
    return t.is_non_overlapping_and_dense() ? t : t.contiguous();
}

// `t` with exactly the strides of the dense tensor `like` (same sizes), copying only if needed.
at::Tensor match_layout(const at::Tensor& t, const at::Tensor& like) {
    if (t.strides() == like.strides()) {
        return t;
    }
    return at::empty_like(like).copy_(t);
}

void check_tensor(const at::Tensor& t, const at::Tensor& like, const char* name) {
    TORCH_CHECK(t.device() == like.device(), "bias_act: ", name, " is on ", t.device(), " but the input is on ",
                like.device(), "; move it to the input's device");
    TORCH_CHECK(t.scalar_type() == like.scalar_type(), "bias_act: ", name, " has dtype ", t.scalar_type(),
                " but the input has ", like.scalar_type(), "; cast it to the input's dtype");
}

void launch(const Params& p, const at::Tensor& like) {
    const auto dtype = like.scalar_type();
    if (like.is_cuda()) {
#ifdef BIAS_ACT_WITH_CUDA
        TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
                    "bias_act: the CUDA kernel takes float16/bfloat16/float32/float64, got ", dtype,
                    "; use impl='ref'");
        const int code = dtype == at::kFloat ? kFloat32 : dtype == at::kDouble ? kFloat64
                         : dtype == at::kHalf ? kFloat16 : kBFloat16;
        c10::cuda::CUDAGuard guard(like.device());
        const char* err = launch_cuda(p, code, c10::cuda::getCurrentCUDAStream(like.device().index()).stream());
        TORCH_CHECK(err == nullptr, "bias_act: CUDA kernel launch failed: ", err);
#else
        TORCH_CHECK(false, "bias_act: this is the CPU plugin, got a CUDA tensor; use the CUDA plugin for it");
#endif
        return;
    }
    TORCH_CHECK(like.is_cpu(), "bias_act: the kernels take CPU or CUDA tensors, got ", like.device(),
                "; use impl='ref'");
    if (dtype == at::kFloat) {
        cpu_launch<float>(p);
    } else if (dtype == at::kDouble) {
        cpu_launch<double>(p);
    } else {
        TORCH_CHECK(false, "bias_act: the CPU kernel takes float32/float64, got ", dtype, "; use impl='ref'");
    }
}

}  // namespace

// See bias_act_kernel.h for what each mode computes. `in`: x (kForward) or the incoming gradient.
// `b`: [in.shape[dim]] or None. `ref`: the saved x (kGradX, kGrad2X) or y (kGradY), else None.
// Returns a new tensor shaped like `in`, with the memory layout of x/ref when that is dense.
at::Tensor bias_act_op(const at::Tensor& in, const std::optional<at::Tensor>& b, const std::optional<at::Tensor>& ref,
                       int64_t dim, int64_t act, int64_t mode, double alpha, double gain, double clamp) {
    TORCH_CHECK(act >= 0 && act < kNumActs && mode >= 0 && mode < kNumModes && valid_combo(act, mode),
                "bias_act: unsupported kernel (act ", act, ", mode ", mode, "); call it through bias_act.py");
    const bool has_ref = mode != kForward;
    TORCH_CHECK(!has_ref || (ref && ref->defined()), "bias_act: mode ", mode, " needs `ref` (the saved x or y)");
    const at::Tensor master = make_dense(has_ref ? *ref : in);  // fixes the layout of every operand
    TORCH_CHECK(in.sizes() == master.sizes(), "bias_act: gradient shape ", in.sizes(), " differs from the saved ",
                "tensor's ", master.sizes());
    check_tensor(in, master, "the gradient");
    const at::Tensor x = has_ref ? match_layout(in, master) : master;
    at::Tensor bias;
    if (b && b->defined()) {
        TORCH_CHECK(dim >= 0 && dim < master.dim(), "bias_act: dim=", dim, " is out of range for a ", master.dim(),
                    "-D input");
        TORCH_CHECK(b->dim() == 1 && b->numel() == master.size(dim), "bias_act: b must have shape [",
                    master.size(dim), "] (x.shape[dim]), got ", b->sizes());
        check_tensor(*b, master, "b");
        bias = b->contiguous();
    }
    at::Tensor out = at::empty_like(master);
    if (master.numel() == 0) {
        return out;
    }
    const int64_t C = bias.defined() ? bias.numel() : 1;
    Params p{out.data_ptr(), x.data_ptr(), bias.defined() ? bias.data_ptr() : nullptr,
             has_ref ? master.data_ptr() : nullptr, master.numel(), C,
             C > 1 ? master.stride(dim) : master.numel(), static_cast<int>(act), static_cast<int>(mode),
             alpha, gain, clamp};
    launch(p, master);
    return out;
}

}  // namespace bias_act

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("bias_act", &bias_act::bias_act_op, "Fused bias + activation + gain + clamp and its gradients",
          pybind11::arg("input"), pybind11::arg("b"), pybind11::arg("ref"), pybind11::arg("dim"),
          pybind11::arg("act"), pybind11::arg("mode"), pybind11::arg("alpha"), pybind11::arg("gain"),
          pybind11::arg("clamp"));
#ifdef BIAS_ACT_WITH_CUDA
    m.attr("with_cuda") = true;
#else
    m.attr("with_cuda") = false;
#endif
}
