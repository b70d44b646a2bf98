// upfirdn2d CUDA binding: validates tensors, allocates outputs and launches the kernels of
// upfirdn2d.cu on the current stream of x's device. Same Python signature as the CPU plugin.

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/csrc/utils/pybind.h>

#include "upfirdn2d_cuda.h"

namespace {

Upfirdn2dAxis make_axis(int64_t n, int64_t up, int64_t down, int64_t pad0, int64_t pad1, int64_t taps) {
  TORCH_CHECK(n * up + pad0 + pad1 >= taps, "upfirdn2d_cuda: padded input smaller than the filter; increase padding");
  return Upfirdn2dAxis{n, (n * up + pad0 + pad1 - taps) / down + 1, up, down, pad0, taps};
}

Upfirdn2dDtype dtype_of(const at::Tensor& x) {
  switch (x.scalar_type()) {
    case at::kHalf: return Upfirdn2dDtype::kHalf;
    case at::kFloat: return Upfirdn2dDtype::kFloat;
    case at::kDouble: return Upfirdn2dDtype::kDouble;
    default: TORCH_CHECK(false, "upfirdn2d_cuda: x must be float16, float32 or float64, got ", x.scalar_type());
  }
}

void check_inputs(const at::Tensor& x, const at::Tensor& f, int64_t upx, int64_t upy, int64_t downx, int64_t downy) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 4 && x.is_contiguous(),
              "upfirdn2d_cuda: x must be a contiguous CUDA tensor [N, C, H, W]");
  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(f.device() == x.device() && f.scalar_type() == acc_type && f.is_contiguous() &&
                  (f.dim() == 1 || f.dim() == 2) && f.numel() > 0,
              "upfirdn2d_cuda: f must be a contiguous non-empty 1-D or 2-D tensor on x's device, "
              "float64 for float64 x and float32 otherwise");
  TORCH_CHECK(upx >= 1 && upy >= 1 && downx >= 1 && downy >= 1, "upfirdn2d_cuda: up and down must be >= 1");
}

at::Tensor upfirdn2d_cuda(const at::Tensor& x, const at::Tensor& f, int64_t upx, int64_t upy, int64_t downx,
                          int64_t downy, int64_t padx0, int64_t padx1, int64_t pady0, int64_t pady1) {
  check_inputs(x, f, upx, upy, downx, downy);
  const c10::cuda::CUDAGuard guard(x.device());
  const Upfirdn2dDtype dtype = dtype_of(x);
  const int64_t planes = x.size(0) * x.size(1), H = x.size(2), W = x.size(3);
  const Upfirdn2dAxis ax = make_axis(W, upx, downx, padx0, padx1, f.size(-1));
  const Upfirdn2dAxis ay = make_axis(H, upy, downy, pady0, pady1, f.size(0));
  at::Tensor y = at::empty({x.size(0), x.size(1), ay.nout, ax.nout}, x.options());
  if (y.numel() == 0) return y;
  if (x.numel() == 0) return y.zero_();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
  cudaError_t err;
  if (f.dim() == 2) {
    const Upfirdn2dPass2d p{x.data_ptr(), y.data_ptr(), f.data_ptr(), planes, ax, ay};
    err = upfirdn2d_launch_2d(p, dtype, stream);
  } else {
    // Horizontal pass into an intermediate kept in the accumulation type, then the vertical pass.
    at::Tensor tmp = at::empty({planes, H, ax.nout}, x.options().dtype(f.scalar_type()));
    const Upfirdn2dPass1d px{x.data_ptr(), tmp.data_ptr(), f.data_ptr(), planes * H, 1, ax};
    err = upfirdn2d_launch_1d(px, dtype, false, true, stream);
    if (err == cudaSuccess) {
      const Upfirdn2dPass1d py{tmp.data_ptr(), y.data_ptr(), f.data_ptr(), planes, ax.nout, ay};
      err = upfirdn2d_launch_1d(py, dtype, true, false, stream);
    }
  }
  TORCH_CHECK(err == cudaSuccess, "upfirdn2d_cuda: kernel launch failed: ", cudaGetErrorString(err));
  return y;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("upfirdn2d", &upfirdn2d_cuda, "upfirdn2d forward (CUDA)", py::call_guard<py::gil_scoped_release>());
}
