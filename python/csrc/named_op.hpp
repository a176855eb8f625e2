// Every error an op raises ends with the op's name: "d_o: expected ... (fsa::nsa_backward)". The
// message itself starts with the argument it names (the fsa API's Status, and the extension's own
// checks in torch_view.cpp and fields.cpp); the op is added here, once for every op of the table,
// as the c10::Error's context, so the exception keeps its Python type (ValueError, TypeError,
// NotImplementedError).
#pragma once

#include <c10/util/Exception.h>

#include <string>
#include <utility>

#include "op_table.hpp"
#include "ops.hpp"

namespace fsa::torch_ext {

// The name of each op, as a template argument for NamedOp.
namespace op_names {
#define FSA_OP_NAME_(name, arguments, scalars, returns) inline constexpr char name[] = #name;
FSA_OPS(FSA_OP_NAME_)
FSA_SHAPE_OPS(FSA_OP_NAME_)
#undef FSA_OP_NAME_
}  // namespace op_names

template <const char* kName, class Fn, Fn* op>
struct NamedOp;

// Calls `op`; an error it raises leaves with " (fsa::<kName>)" appended to its message.
template <const char* kName, class Result, class... Args, Result (*op)(Args...)>
struct NamedOp<kName, Result(Args...), op> {
  static Result call(Args... args) {
    try {
      return op(std::forward<Args>(args)...);
    } catch (c10::Error& error) {
      error.add_context(std::string("fsa::") + kName);
      throw;
    }
  }
};

}  // namespace fsa::torch_ext

// The kernel function of op `name` (a function of ops.hpp), its errors naming the op.
#define FSA_NAMED_OP(name) \
  (::fsa::torch_ext::NamedOp<::fsa::torch_ext::op_names::name, decltype(::fsa::torch_ext::name), \
                             &::fsa::torch_ext::name>::call)
