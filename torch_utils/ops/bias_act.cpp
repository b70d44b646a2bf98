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
#include <tuple>
#include <vector>

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

// run_one_channel that also returns the sum of what it wrote.
template <typename T, int A, int M>
double run_one_channel_sum(const T* __restrict__ in, const T* __restrict__ ref, T* __restrict__ out, int64_t n,
                           T bias, const Consts<T> k) {
    T acc = 0;  // vector-wide partial sums in T; runs are short (one channel of one image)
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < n; ++j) {
        const T v = eval<A, M>(in[j], bias, ref[j], k.alpha, k.gain, k.clamp, k.no_clamp);
        out[j] = v;
        acc += v;
    }
    return static_cast<double>(acc);
}

// The kernel plus per-run sums (layouts with inner > 1 only): run_sums[r] = sum of the outputs of
// run r (elements [r * inner, (r + 1) * inner)). Work is split by whole runs so that each sum is
// formed by one thread in a fixed order: the result does not depend on the thread count.
template <typename T, int A, int M>
void cpu_kernel_run_sums(const Params& p, double* run_sums) {
    const T* in = static_cast<const T*>(p.in);
    const T* ref = p.ref ? static_cast<const T*>(p.ref) : in;
    const T* b = static_cast<const T*>(p.b);
    T* out = static_cast<T*>(p.out);
    const bool no_clamp = p.clamp < 0;
    const Consts<T> k{T(p.alpha), T(p.gain), no_clamp ? T(INFINITY) : T(p.clamp), no_clamp};
    const int64_t runs = p.numel / p.inner;
    const int64_t grain = std::max<int64_t>(1, kGrainSize / p.inner);
    at::parallel_for(0, runs, grain, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
            const int64_t i = r * p.inner;
            run_sums[r] = run_one_channel_sum<T, A, M>(in + i, ref + i, out + i, p.inner, b ? b[r % p.C] : T(0), k);
        }
    });
}

template <typename T>
void cpu_launch(const Params& p, double* run_sums = nullptr) {
    dispatch_act_mode(p.act, p.mode, [&](auto act, auto mode) {
        if (run_sums != nullptr)
            cpu_kernel_run_sums<T, decltype(act)::value, decltype(mode)::value>(p, run_sums);
        else
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
namespace {

// Checked operands of one call and its kernel parameters (out allocated, not yet written).
struct Prepared {
    at::Tensor master, x, bias, out;
    Params p;
};

Prepared prepare(const at::Tensor& in, const std::optional<at::Tensor>& b, const std::optional<at::Tensor>& ref,
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
    at::Tensor out = at::empty_like(master);  // every element is written (unless numel is 0)
    const int64_t C = bias.defined() ? bias.numel() : 1;
    Params p{out.data_ptr(), x.data_ptr(), bias.defined() ? bias.data_ptr() : nullptr,
             has_ref ? master.data_ptr() : nullptr, master.numel(), C,
             C > 1 ? master.stride(dim) : master.numel(), static_cast<int>(act), static_cast<int>(mode),
             alpha, gain, clamp};
    return Prepared{master, x, bias, out, p};
}

}  // namespace

at::Tensor bias_act_op(const at::Tensor& in, const std::optional<at::Tensor>& b, const std::optional<at::Tensor>& ref,
                       int64_t dim, int64_t act, int64_t mode, double alpha, double gain, double clamp) {
    Prepared pr = prepare(in, b, ref, dim, act, mode, alpha, gain, clamp);
    if (pr.master.numel() > 0) {
        launch(pr.p, pr.master);
    }
    return pr.out;
}

// A gradient mode (kGradX / kGradY / kGrad2X) that also returns the bias gradient: (out, db) with
// db [in.shape[dim]] = out summed over every dim but `dim`. On CPU tensors whose channel runs are
// longer than one element (NCHW-like layouts) db is formed inside the kernel pass from per-run sums,
// saving a second pass over `out`; elsewhere it is a separate reduction.
std::tuple<at::Tensor, at::Tensor> bias_act_with_db_op(const at::Tensor& in, const std::optional<at::Tensor>& b,
                                                       const std::optional<at::Tensor>& ref, int64_t dim, int64_t act,
                                                       int64_t mode, double alpha, double gain, double clamp) {
    TORCH_CHECK(mode != kForward, "bias_act: the bias gradient comes with a gradient mode, not the forward");
    TORCH_CHECK(ref && ref->defined() && dim >= 0 && dim < ref->dim(), "bias_act: dim=", dim,
                " is out of range for the saved tensor");
    Prepared pr = prepare(in, b, ref, dim, act, mode, alpha, gain, clamp);
    const at::Tensor& master = pr.master;
    const int64_t C = master.size(dim);
    const int64_t inner = master.stride(dim);
    // Storage order must hold whole runs of one channel with period C: true for any dense layout
    // when the channel's stride is `inner` and the dims outside it cycle through C channels.
    const bool fused = master.is_cpu() && master.numel() > 0 && inner > 1 && C > 1 &&
                       master.numel() % (inner * C) == 0 &&
                       (master.scalar_type() == at::kFloat || master.scalar_type() == at::kDouble);
    if (!fused) {
        if (master.numel() > 0) {
            launch(pr.p, master);
        }
        std::vector<int64_t> dims;
        for (int64_t i = 0; i < master.dim(); ++i) {
            if (i != dim) dims.push_back(i);
        }
        at::Tensor db = dims.empty() ? pr.out.clone() : pr.out.sum(dims);
        return {pr.out, db};
    }
    pr.p.C = C;  // without a bias (kGradY) the kernel had no channels; the sums need them
    pr.p.inner = inner;
    const int64_t runs = master.numel() / inner;
    std::vector<double> run_sums(runs);
    if (master.scalar_type() == at::kFloat) {
        cpu_launch<float>(pr.p, run_sums.data());
    } else {
        cpu_launch<double>(pr.p, run_sums.data());
    }
    // Channel of run r is r % C; add the runs of each channel in a fixed order.
    std::vector<double> acc(C, 0.0);
    for (int64_t r = 0; r < runs; ++r) acc[r % C] += run_sums[r];
    at::Tensor db = at::empty({C}, master.options());
    if (master.scalar_type() == at::kFloat) {
        float* d = db.data_ptr<float>();
        for (int64_t c = 0; c < C; ++c) d[c] = static_cast<float>(acc[c]);
    } else {
        double* d = db.data_ptr<double>();
        for (int64_t c = 0; c < C; ++c) d[c] = acc[c];
    }
    return {pr.out, db};
}

}  // namespace bias_act

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("bias_act", &bias_act::bias_act_op, "Fused bias + activation + gain + clamp and its gradients",
          pybind11::arg("input"), pybind11::arg("b"), pybind11::arg("ref"), pybind11::arg("dim"),
          pybind11::arg("act"), pybind11::arg("mode"), pybind11::arg("alpha"), pybind11::arg("gain"),
          pybind11::arg("clamp"));
    m.def("bias_act_with_db", &bias_act::bias_act_with_db_op,
          "A gradient mode of bias_act that also returns the bias gradient (out summed over all dims but dim)",
          pybind11::arg("input"), pybind11::arg("b"), pybind11::arg("ref"), pybind11::arg("dim"),
          pybind11::arg("act"), pybind11::arg("mode"), pybind11::arg("alpha"), pybind11::arg("gain"),
          pybind11::arg("clamp"));
#ifdef BIAS_ACT_WITH_CUDA
    m.attr("with_cuda") = true;
#else
    m.attr("with_cuda") = false;
#endif
}
