// The op schemas of the `fsa` torch library and their CPU kernels, expanded from op_table.hpp.
// Autograd formulas and fake (meta) implementations are registered from Python
// (python/fsa/_autograd.py, _fake.py).
#include <torch/library.h>

#include <string>

#include "named_op.hpp"
#include "op_table.hpp"
#include "ops.hpp"

namespace fsa::torch_ext {
namespace {

// "name(arguments, scalars with defaults) -> returns"
std::string schema(const char* name, const char* arguments, const std::string& scalars, const char* returns) {
  return std::string(name) + "(" + arguments + scalars + ") -> " + returns;
}

}  // namespace
}  // namespace fsa::torch_ext

TORCH_LIBRARY(fsa, m) {
  using namespace fsa::torch_ext;
  // Every op but the cache calls is functional (fresh outputs, no aliasing, no mutation); the cache
  // calls write their pools, which their schemas mark mutated (Tensor(a!)), so torch.compile
  // functionalizes them. All are traceable by torch.compile.
  const std::vector<at::Tag> tags{at::Tag::pt2_compliant_tag};
#define FSA_DEFINE_(name, arguments, scalars, returns) \
  m.def(schema(#name, arguments, FSA_SCHEMA(scalars), returns).c_str(), tags);
  FSA_OPS(FSA_DEFINE_)
#undef FSA_DEFINE_
  // No tensor arguments: one kernel for every dispatch key.
#define FSA_DEFINE_SHAPE_OP_(name, arguments, scalars, returns) \
  m.def(schema(#name, arguments, FSA_SCHEMA(scalars), returns).c_str(), TORCH_FN(FSA_NAMED_OP(name)));
  FSA_SHAPE_OPS(FSA_DEFINE_SHAPE_OP_)
#undef FSA_DEFINE_SHAPE_OP_
}

TORCH_LIBRARY_IMPL(fsa, CPU, m) {
  using namespace fsa::torch_ext;
#define FSA_IMPLEMENT_(name, arguments, scalars, returns) m.impl(#name, TORCH_FN(FSA_NAMED_OP(name)));
  FSA_OPS(FSA_IMPLEMENT_)
#undef FSA_IMPLEMENT_
}
