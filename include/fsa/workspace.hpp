// Caller-owned device scratch memory (FlashInfer's plan/run idea: the library sizes, the caller
// allocates).
//
// Every GPU entry point that needs scratch takes a `Workspace` as its last argument and has a
// query, `<op>_workspace_bytes(...)`, that takes the op's own arguments (sizes and config only:
// no tensor data is read, nothing is allocated, nothing waits for the device) and returns the bytes
// the call needs. Pass a workspace of at least that size, on the tensors' device, 256-byte aligned;
// the call uses it on the current stream (runtime.hpp) and keeps nothing in it after the call's
// work on the stream has run. A smaller or misaligned workspace is an error naming `workspace`.
//
// Convenience: an empty Workspace (the default argument) asks the entry point to allocate the
// bytes itself, stream-ordered (cudaMallocAsync / cudaFreeAsync on the current stream, from the
// device's default memory pool, whose settings are left alone). That is the only place the library
// allocates device memory. Serving engines, CUDA-graph captures and framework integrations (the
// PyTorch extension allocates with torch's allocator) pass their own.
//
// Bounded memory: scratch that grows with N * Hq * topk (selected attention's partial outputs, its
// dQ slots, its plan) stays under a cap, SlcOptions::workspace_cap (default kDefaultWorkspaceCap);
// larger problems run in query chunks inside the same call. The other scratch is at most the size
// of the op's own tensors in fp32 (accumulators of dq, dk, dv). See docs/architecture.md.
#pragma once

#include <cstddef>

namespace fsa {

struct Workspace {
  void* data = nullptr;  // device memory, 256-byte aligned
  std::size_t bytes = 0;

  // Empty: the entry point allocates what it needs itself (see above).
  bool empty() const { return data == nullptr && bytes == 0; }
};

// Workspace alignment every entry point requires (and every query's byte count is a multiple of).
inline constexpr std::size_t kWorkspaceAlignment = 256;

// Default cap of the chunked scratch of selected attention: 8 GiB, next to a model on an 80 GB GPU.
// Why 8: the canonical 64K-token problems up to G = 4 (4.4 GB of scratch, 5.0 GB in the
// deterministic mode, measured) then run unchunked, keeping the dense/sparse split that query
// chunks give up; and at one 1M-token sequence (G = 4) the layer backward's largest step is still
// the window backward's fp32 accumulators (12.1 GiB), so the layer's peak does not grow with the
// cap. Lower it next to a larger model; raise it (SlcOptions::workspace_cap, NsaLayerOptions) to
// run long sequences in fewer chunks.
inline constexpr std::size_t kDefaultWorkspaceCap = std::size_t{8} << 30;

}  // namespace fsa
