// Errors as values. Every entry point returns a Status; a failed one carries a message that names
// the offending argument and what was expected, plus the source location that raised it.
#pragma once

#include <string>
#include <utility>

namespace fsa {

enum class StatusCode {
  kOk,
  kInvalidArgument,  // the caller passed something the contract forbids
  kNotImplemented,   // valid request, but no implementation on this device / for this shape yet
  kCudaError,        // a CUDA runtime call or kernel launch failed
  kInternal,         // a bug in the library
};

const char* status_code_name(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message, const char* file = "", int line = 0)
      : code_(code), message_(std::move(message)), file_(file), line_(line) {}

  static Status ok() { return {}; }
  bool is_ok() const { return code_ == StatusCode::kOk; }
  explicit operator bool() const { return is_ok(); }

  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  const char* file() const { return file_; }
  int line() const { return line_; }
  // "invalid argument: q: expected ... (src/api/validate.cpp:42)", for C++ callers' diagnostics.
  // The Python extension shows message() alone, with the op's name (python/csrc/named_op.hpp).
  std::string to_string() const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
  const char* file_ = "";
  int line_ = 0;
};

}  // namespace fsa

#define FSA_ERROR(code, msg) ::fsa::Status((code), (msg), __FILE__, __LINE__)
#define FSA_INVALID(msg) FSA_ERROR(::fsa::StatusCode::kInvalidArgument, (msg))

// Propagates a failed Status to the caller.
#define FSA_RETURN_IF_ERROR(expr)               \
  do {                                          \
    ::fsa::Status fsa_status_ = (expr);         \
    if (!fsa_status_.is_ok()) return fsa_status_; \
  } while (0)
