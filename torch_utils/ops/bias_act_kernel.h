// Shared by bias_act.cpp (host code, CPU kernel) and bias_act.cu (CUDA kernel): the kernel
// parameters and the per-element math, written once so both devices compute the same formulas.
//
// Every kernel call is one elementwise pass over a dense tensor `in` (numel elements) with an
// optional per-channel bias b[C] and an optional saved tensor `ref` of the same layout:
//   kForward: out = clamp(act(in + b) * gain)                           (in = x)
//   kGradX:   out = in * gain * act'(ref + b)  where unclamped, else 0  (in = dy, ref = saved x)
//   kGrad2X:  out = in * gain * act''(ref + b) where unclamped, else 0  (in = d_dx * dy, ref = x)
//   kGradY:   out = in * gain * act'(.) read off the saved output y     (in = dy, ref = saved y)
// "Unclamped" is |act(x + b) * gain| < clamp (or no clamp): torch.clamp's gradient is zero at the
// bounds too, so ties behave like the pure-PyTorch path. The channel of element i (storage order)
// is (i / inner) % C, which holds for any dense layout when inner = stride of the channel dim.
#pragma once

#include <math.h>
#include <stdint.h>

#include <type_traits>

#ifdef __CUDACC__
#define BA_HD __host__ __device__ __forceinline__
#else
#define BA_HD inline
#endif

namespace bias_act {

// Activation indices; the Python table (bias_act.py, `kernel_idx`) uses the same numbers.
enum Act : int { kLinear = 0, kRelu, kLrelu, kTanh, kSigmoid, kElu, kSelu, kSoftplus, kSwish, kNumActs };
enum Mode : int { kForward = 0, kGradX, kGrad2X, kGradY, kNumModes };
// Element types the CUDA launcher understands (the CPU kernel takes the first two).
enum DType : int { kFloat32 = 0, kFloat64, kFloat16, kBFloat16 };

struct Params {
    void* out;
    const void* in;
    const void* b;    // nullptr: no bias
    const void* ref;  // unused by kForward
    int64_t numel;
    int64_t C;        // channels (1 without bias)
    int64_t inner;    // elements per run of one channel in storage order
    int act;
    int mode;
    double alpha;
    double gain;
    double clamp;     // < 0: no clamp
};

// kGradY reads the derivative off y's sign: only for the piecewise-linear activations, and only
// when gain > 0 and alpha >= 0 (the Python side checks). kGrad2X only for the smooth ones.
constexpr bool valid_combo(int act, int mode) {
    return mode == kGradY ? act <= kLrelu : (mode == kGrad2X ? act >= kTanh : true);
}

// Plain C math names resolve to the float or double overload on host and device alike.
BA_HD float ba_exp(float x) { return expf(x); }
BA_HD double ba_exp(double x) { return exp(x); }
BA_HD float ba_expm1(float x) { return expm1f(x); }
BA_HD double ba_expm1(double x) { return expm1(x); }
BA_HD float ba_log1p(float x) { return log1pf(x); }
BA_HD double ba_log1p(double x) { return log1p(x); }
BA_HD float ba_tanh(float x) { return tanhf(x); }
BA_HD double ba_tanh(double x) { return tanh(x); }
BA_HD float ba_abs(float x) { return fabsf(x); }
BA_HD double ba_abs(double x) { return fabs(x); }

// torch.nn.functional.selu's constants.
constexpr double kSeluAlpha = 1.6732632423543772848170429916717;
constexpr double kSeluScale = 1.0507009873554804934193349852946;
constexpr double kSoftplusThreshold = 20.0;  // torch's default (beta 1)

template <typename T> BA_HD T sigmoid(T x) { return T(1) / (T(1) + ba_exp(-x)); }

// act(x). The branch conditions copy torch's kernels so kinks and NaNs behave the same.
template <int A, typename T> BA_HD T act_fwd(T x, T alpha) {
    if constexpr (A == kLinear) return x;
    else if constexpr (A == kRelu) return x < T(0) ? T(0) : x;  // keeps NaN, like torch.relu
    else if constexpr (A == kLrelu) return x > T(0) ? x : x * alpha;
    else if constexpr (A == kTanh) return ba_tanh(x);
    else if constexpr (A == kSigmoid) return sigmoid(x);
    else if constexpr (A == kElu) return x > T(0) ? x : ba_expm1(x);
    else if constexpr (A == kSelu) return x > T(0) ? x * T(kSeluScale) : ba_expm1(x) * T(kSeluAlpha) * T(kSeluScale);
    else if constexpr (A == kSoftplus) return x > T(kSoftplusThreshold) ? x : ba_log1p(ba_exp(x));
    else return x * sigmoid(x);  // kSwish
}

// d act / dx. At x == 0 torch takes the x <= 0 branch (it matters for lrelu and selu).
template <int A, typename T> BA_HD T act_d1(T x, T alpha) {
    if constexpr (A == kLinear) return T(1);
    else if constexpr (A == kRelu) return x > T(0) ? T(1) : T(0);
    else if constexpr (A == kLrelu) return x > T(0) ? T(1) : alpha;
    else if constexpr (A == kTanh) { T t = ba_tanh(x); return T(1) - t * t; }
    else if constexpr (A == kSigmoid) { T s = sigmoid(x); return s * (T(1) - s); }
    else if constexpr (A == kElu) return x > T(0) ? T(1) : ba_exp(x);
    else if constexpr (A == kSelu) return x > T(0) ? T(kSeluScale) : ba_exp(x) * T(kSeluAlpha) * T(kSeluScale);
    else if constexpr (A == kSoftplus) return x > T(kSoftplusThreshold) ? T(1) : sigmoid(x);
    else { T s = sigmoid(x); return s * (T(1) + x * (T(1) - s)); }  // kSwish
}

// d^2 act / dx^2 (smooth activations only). torch's double backward of elu/selu/softplus takes the
// linear branch at the kink itself (x == 0, x == threshold), so the conditions are strict here.
template <int A, typename T> BA_HD T act_d2(T x, T alpha) {
    if constexpr (A == kTanh) { T t = ba_tanh(x); return T(-2) * t * (T(1) - t * t); }
    else if constexpr (A == kSigmoid) { T s = sigmoid(x); return s * (T(1) - s) * (T(1) - T(2) * s); }
    else if constexpr (A == kElu) return x < T(0) ? ba_exp(x) : T(0);
    else if constexpr (A == kSelu) return x < T(0) ? ba_exp(x) * T(kSeluAlpha) * T(kSeluScale) : T(0);
    else if constexpr (A == kSoftplus) { T s = sigmoid(x); return x < T(kSoftplusThreshold) ? s * (T(1) - s) : T(0); }
    else if constexpr (A == kSwish) { T s = sigmoid(x); return s * (T(1) - s) * (T(2) + x * (T(1) - T(2) * s)); }
    else return T(0);  // piecewise linear
}

// d act / dx from y = clamp(act(x) * gain) with gain > 0 and alpha >= 0: y > 0 exactly when x > 0.
template <int A, typename T> BA_HD T act_d1_from_y(T y, T alpha) {
    if constexpr (A == kLinear) return T(1);
    else if constexpr (A == kRelu) return y > T(0) ? T(1) : T(0);
    else return y > T(0) ? T(1) : alpha;  // kLrelu
}

// One output element. `clamp` is +inf when there is no clamp (so the forward needs no branch) and
// `no_clamp` keeps infinite values' gradients flowing then, like the unclamped PyTorch path.
// Branch-free selects and non-short-circuit `|` let compilers vectorise the loops.
template <int A, int M, typename T>
BA_HD T eval(T in, T bias, T ref, T alpha, T gain, T clamp, bool no_clamp) {
    if constexpr (M == kForward) {
        T v = act_fwd<A>(in + bias, alpha) * gain;
        v = v < -clamp ? -clamp : v;  // NaN stays NaN, like torch.clamp
        return v > clamp ? clamp : v;
    } else if constexpr (M == kGradY) {
        bool pass = (ba_abs(ref) < clamp) | no_clamp;
        return pass ? in * gain * act_d1_from_y<A>(ref, alpha) : T(0);
    } else {
        T xb = ref + bias;
        bool pass = (ba_abs(act_fwd<A>(xb, alpha) * gain) < clamp) | no_clamp;
        T d = M == kGradX ? act_d1<A>(xb, alpha) : act_d2<A>(xb, alpha);
        return pass ? in * gain * d : T(0);
    }
}

// Calls f(std::integral_constant<int, A>{}, std::integral_constant<int, M>{}) for the runtime
// (act, mode), instantiating only the valid combinations. Returns false for an invalid pair.
template <int A, typename F> bool dispatch_mode(int mode, F&& f) {
    switch (mode) {
        case kForward: f(std::integral_constant<int, A>{}, std::integral_constant<int, kForward>{}); return true;
        case kGradX: f(std::integral_constant<int, A>{}, std::integral_constant<int, kGradX>{}); return true;
        case kGrad2X:
            if constexpr (valid_combo(A, kGrad2X)) {
                f(std::integral_constant<int, A>{}, std::integral_constant<int, kGrad2X>{});
                return true;
            }
            return false;
        case kGradY:
            if constexpr (valid_combo(A, kGradY)) {
                f(std::integral_constant<int, A>{}, std::integral_constant<int, kGradY>{});
                return true;
            }
            return false;
        default: return false;
    }
}

template <typename F> bool dispatch_act_mode(int act, int mode, F&& f) {
    switch (act) {
        case kLinear: return dispatch_mode<kLinear>(mode, f);
        case kRelu: return dispatch_mode<kRelu>(mode, f);
        case kLrelu: return dispatch_mode<kLrelu>(mode, f);
        case kTanh: return dispatch_mode<kTanh>(mode, f);
        case kSigmoid: return dispatch_mode<kSigmoid>(mode, f);
        case kElu: return dispatch_mode<kElu>(mode, f);
        case kSelu: return dispatch_mode<kSelu>(mode, f);
        case kSoftplus: return dispatch_mode<kSoftplus>(mode, f);
        case kSwish: return dispatch_mode<kSwish>(mode, f);
        default: return false;
    }
}

#ifdef BIAS_ACT_WITH_CUDA
// Defined in bias_act.cu; returns nullptr on success, else the CUDA error string.
const char* launch_cuda(const Params& p, int dtype, void* stream);
#endif

}  // namespace bias_act
