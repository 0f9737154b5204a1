// The Python module ops._C. Importing it also runs the TORCH_LIBRARY registrations of every op.
#include <atomic>

#include <torch/extension.h>

#include "detbench.h"

#ifdef WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace detbench {

namespace {
std::atomic<bool> validation{false};
}  // namespace

void set_validation(bool enabled) {
  validation.store(enabled, std::memory_order_relaxed);
}

bool validation_enabled() {
  return validation.load(std::memory_order_relaxed);
}

}  // namespace detbench

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
#ifdef WITH_CUDA
  m.attr("built_with_cuda") = true;
  m.attr("cuda_version") = CUDART_VERSION;
#else
  m.attr("built_with_cuda") = false;
  m.attr("cuda_version") = pybind11::none();
#endif
  m.def("set_validation", &detbench::set_validation, pybind11::arg("enabled"),
        "Turn validation mode (checks that need a device->host sync) on or off, process-wide.");
  m.def("validation_enabled", &detbench::validation_enabled, "Whether validation mode is on.");
}
