// cu_seqlens of a query chunk: out[b] = cu[b] - first_token for b in [0, num_seqs]. With the query,
// output and index pointers advanced to the chunk's first token, a kernel that reads the chunk's
// tokens [0, chunk) then finds each one's sequence and position exactly as in the whole batch,
// and the keys before the chunk at negative rows (still inside the caller's tensors).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "fsa/status.hpp"

namespace fsa::cuda {

Status shift_cu_seqlens(const std::int32_t* cu, std::int64_t cu_stride, int num_seqs, std::int64_t first_token,
                        std::int32_t* out, cudaStream_t stream);

}  // namespace fsa::cuda
