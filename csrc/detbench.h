// Helpers shared by every detbench op.
#pragma once

#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#ifdef __CUDACC__
#include <c10/cuda/CUDAException.h>  // C10_CUDA_KERNEL_LAUNCH_CHECK: call right after every launch
#endif

// Raises RuntimeError("detbench.<op>: <message>") unless `cond` holds. Messages name the
// offending argument, e.g. DETBENCH_CHECK(ok, "box_iou", "boxes1 must ..., got ", sizes).
#define DETBENCH_CHECK(cond, op, ...) TORCH_CHECK((cond), "detbench.", op, ": ", __VA_ARGS__)

namespace detbench {

template <typename T>
C10_HOST_DEVICE constexpr T ceil_div(T a, T b) {
  return (a + b - 1) / b;
}

// Validation mode (process-wide, off by default): checks that need a device->host sync,
// such as looking for non-finite coordinates in CUDA inputs, run only while it is on.
void set_validation(bool enabled);
bool validation_enabled();

#ifdef __CUDACC__
// SMs of CUDA device `device` (default: the current one, which each op's CUDAGuard sets), for the
// launch math of grid-stride and persistent kernels. A host-side attribute query: no sync.
inline int sm_count(int device = -1) {
  if (device < 0) {
    C10_CUDA_CHECK(cudaGetDevice(&device));
  }
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}
#endif

}  // namespace detbench
