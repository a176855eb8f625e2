// torch tensors as fsa::TensorView, and fsa::Status as a Python exception: the only two places where
// the extension translates between torch and the fsa API.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "fsa/status.hpp"
#include "fsa/types.hpp"

namespace fsa::torch_ext {

// The fsa dtype of a torch dtype; a TypeError naming `name` when fsa has none.
DType to_fsa_dtype(at::ScalarType type, const char* name);

// A view of `tensor` (dtype, device, sizes, strides; no copy). `name` is the argument's name in the
// op schema, used in the error raised when the tensor cannot be described at all (an unsupported
// dtype or device, too many dims); every other check is the fsa API's, which names arguments too.
TensorView to_view(const at::Tensor& tensor, const char* name);
// An absent optional tensor is an undefined view (the fsa API's "none").
TensorView to_view(const std::optional<at::Tensor>& tensor, const char* name);

// Raises the Python exception matching a failed Status: NotImplementedError for kNotImplemented
// (an op without a CUDA kernel yet), ValueError for kInvalidArgument, RuntimeError otherwise. The
// message is the Status's own, which starts with the argument it names; the registration adds the
// op's name at its end (named_op.hpp). The Status's source location is left out (see the .cpp).
void throw_if_error(const Status& status);

}  // namespace fsa::torch_ext
