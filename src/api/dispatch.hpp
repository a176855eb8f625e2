// Where an op runs: on the device of its tensors. The CPU runs the reference backend; CUDA runs
// the kernels of src/kernels where an op has them, else returns kNotImplemented.
#pragma once

#include "fsa/types.hpp"

namespace fsa::detail {

inline bool on_cpu(const TensorView& t) { return t.device.kind == DeviceKind::kCPU; }

}  // namespace fsa::detail
