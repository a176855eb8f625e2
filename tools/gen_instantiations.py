#!/usr/bin/env python3
"""Writes the CUDA kernels' explicit instantiations and their runtime dispatch from one table.

Each kernel family's launcher is a template in a header (src/kernels/<directory>/*.cuh); compiling
every combination in its own translation unit lets the build run in parallel and keeps any one
file fast to compile. The table below is the only place that lists the combinations. From it this
script writes
  - src/kernels/*/instantiations/<phase>_<suffix>.cu, one small file per (op, dtype[, head dims]);
  - src/kernels/common/dispatch_table.hpp, the one header that turns runtime values into template
    arguments (dispatch_dtype, dispatch_attention, dispatch_select, dispatch_block_size; check_dtype
    and check_block_size for code that only checks), with a loud kNotImplemented naming the
    argument, the op, the supported values and the value given.
Both are committed and marked GENERATED.

Adding a head dim (or an element type): add it to ATTENTION_DIMS (or DTYPES) and rerun; selection
follows from the q/k head dims. Adding a selection block size: add it to BLOCK_SIZES and rerun;
the selected-attention forward takes B as a template argument through dispatch_block_size. Then
reconfigure (the build globs the instantiation files) and build. The kernels' traits hold the
tile sizes and static_asserts that a new value must satisfy, and the config rule of
docs/semantics.md section 0 (NsaConfig::validate, B in {32, 64, 128}) bounds B for every
backend, not only this table.

Usage: python3 tools/gen_instantiations.py   (rewrites the files above)
"""
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Element types: the name fsa's dtype_name prints (also the file suffix) -> (C++ type, DType enumerator).
DTYPES = {"bf16": ("__nv_bfloat16", "kBFloat16"), "fp16": ("__half", "kFloat16")}

# Head dims (q/k, v) of the attention kernels: those of common models, including MLA-style 192/128.
ATTENTION_DIMS = [(64, 64), (128, 128), (192, 128), (256, 256)]

# Selection reads q and compressed k only: one instantiation per q/k head dim.
SELECT_DIMS = sorted({dqk for dqk, _ in ATTENTION_DIMS})

# Selection block sizes B (all that docs/semantics.md section 0 allows); the selected-attention forward's kernels are templates of B.
BLOCK_SIZES = [32, 64, 128]


def attention_combos():
    return [(f"{name}_{dqk}x{dv}", f"{ctype}, {dqk}, {dv}")
            for name, (ctype, _) in DTYPES.items() for dqk, dv in ATTENTION_DIMS]


def dtype_combos():
    return [(name, ctype) for name, (ctype, _) in DTYPES.items()]


# phase -> (directory under src/kernels, namespace, header, template function, declaration,
#           list of (file suffix, template arguments)). Files are <directory>/instantiations/<phase>_<suffix>.cu.
TABLE = {
    "rope": ("rope", "fsa::cuda", "kernels/rope/rope_kernel.cuh", "launch_rope",
             "Status {fn}<{args}>(const RopeParams&, cudaStream_t);",
             dtype_combos()),
    "slc_fwd": ("slc_attn", "fsa::cuda::slc", "kernels/slc_attn/slc_fwd_kernel.cuh", "launch_slc_forward",
                "Status {fn}<{args}>(const SlcForwardParams&, cudaStream_t);", attention_combos()),
    "slc_bwd": ("slc_attn", "fsa::cuda", "kernels/slc_attn/slc_bwd_kernel.cuh", "launch_slc_backward",
                "Status {fn}<{args}>(const SlcBackwardParams&, cudaStream_t);", attention_combos()),
    "compress_fwd": ("compress", "fsa::cuda", "kernels/compress/compress_kernel.cuh", "launch_compress_forward",
                     "Status {fn}<{args}>(const CompressParams&, cudaStream_t);",
                     dtype_combos()),
    "compress_bwd": ("compress", "fsa::cuda", "kernels/compress/compress_kernel.cuh", "launch_compress_backward",
                     "Status {fn}<{args}>(const CompressParams&, cudaStream_t);",
                     dtype_combos()),
    # Masked flash attention: compressed attention and sliding-window attention (runtime mask kind).
    "flash_fwd": ("flash", "fsa::cuda", "kernels/flash/flash_fwd_kernel.cuh", "launch_flash_forward",
                  "Status {fn}<{args}>(const FlashParams&, cudaStream_t);", attention_combos()),
    "flash_bwd": ("flash", "fsa::cuda", "kernels/flash/flash_bwd_kernel.cuh", "launch_flash_backward",
                  "Status {fn}<{args}>(const FlashParams&, cudaStream_t);", attention_combos()),
    "select": ("select", "fsa::cuda", "kernels/select/select_launch_impl.cuh", "launch_select_blocks",
               "Status {fn}<{args}>(SelectParams, const sel::SmemLimits&, cudaStream_t);",
               [(f"{name}_{dqk}", f"{ctype}, {dqk}") for name, (ctype, _) in DTYPES.items() for dqk in SELECT_DIMS]),
    # Inference over the paged cache: attention of the three branches, and block selection.
    "decode_attn": ("decode", "fsa::cuda::decode", "kernels/decode/decode_attn_kernel.cuh", "launch_decode_attention",
                    "Status {fn}<{args}>(const AttnParams&, cudaStream_t);", attention_combos()),
    "decode_select": ("decode", "fsa::cuda::decode", "kernels/decode/decode_select_kernel.cuh",
                      "launch_decode_select", "Status {fn}<{args}>(const SelectParams&, cudaStream_t);",
                      [(f"{name}_{dqk}", f"{ctype}, {dqk}") for name, (ctype, _) in DTYPES.items()
                       for dqk in SELECT_DIMS]),
}

HEADER = """// GENERATED by tools/gen_instantiations.py: do not edit.
#include "{header}"

namespace {namespace} {{
template {decl}
}}  // namespace {namespace}
"""


DISPATCH_HEADER = """\
// GENERATED by tools/gen_instantiations.py from its table: do not edit; edit the table and rerun.
//
// The one place where the CUDA kernels' runtime values become template arguments: the element
// types, head dims and selection block sizes that src/kernels/*/instantiations/ instantiate (the
// same table wrote both). Each dispatch_* calls fn.template operator()<...>() with the matching
// compile-time values, or returns kNotImplemented naming the argument, the op, the supported
// values and the value given. Also the architecture choice (kernel_arch), which the ops make once
// per call and carry in their params to the launchers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <string>

#include "fsa/status.hpp"
#include "fsa/types.hpp"
#include "kernels/common/kernel_arch.hpp"

namespace fsa::cuda::common {{

// The kernel set the current device runs (kernel_arch.cu): kSm90a where it is a Hopper GPU, the
// build includes sm_90a and FSA_DISABLE_WGMMA is unset; kSm80 otherwise. Probed once per device.
// Each op calls it once and stores the result in its params (FlashParams, SelectParams,
// SlcBackwardParams::arch); a launcher with a wgmma variant reads it there.
KernelArch kernel_arch();

// The table, as the errors print it.
inline constexpr char kSupportedDtypes[] = "{dtype_list}";
inline constexpr char kSupportedAttentionDims[] = "{attention_list}";  // Dqk/Dv
inline constexpr char kSupportedSelectDims[] = "{select_list}";  // Dqk (selection reads no v)
inline constexpr char kSupportedBlockSizes[] = "{block_list}";  // B

// fn.template operator()<Element>() for each of kSupportedDtypes; `name` is the argument whose dtype
// decides.
template <class Fn>
Status dispatch_dtype(const char* op, const char* name, DType dtype, Fn&& fn) {{
{dtype_cases}
  return FSA_ERROR(StatusCode::kNotImplemented, std::string(name) + ": " + op + " on CUDA supports " +
                                                    kSupportedDtypes + ", got " + dtype_name(dtype));
}}

// fn.template operator()<Element, kDqk, kDv>() for each of kSupportedAttentionDims; q's dtype decides
// the element type.
template <class Fn>
Status dispatch_attention(const char* op, DType dtype, std::int64_t dqk, std::int64_t dv, Fn&& fn) {{
  return dispatch_dtype(op, "q", dtype, [&]<class Element>() -> Status {{
{attention_cases}
    return FSA_ERROR(StatusCode::kNotImplemented, std::string("q: ") + op + " on CUDA supports head dims (Dqk/Dv) " +
                                                      kSupportedAttentionDims + ", got " + std::to_string(dqk) + "/" +
                                                      std::to_string(dv));
  }});
}}

// fn.template operator()<Element, kDqk>() for each of kSupportedSelectDims; q's dtype decides the
// element type.
template <class Fn>
Status dispatch_select(const char* op, DType dtype, std::int64_t dqk, Fn&& fn) {{
  return dispatch_dtype(op, "q", dtype, [&]<class Element>() -> Status {{
{select_cases}
    return FSA_ERROR(StatusCode::kNotImplemented, std::string("q: ") + op + " on CUDA supports head dims Dqk " +
                                                      kSupportedSelectDims + ", got " + std::to_string(dqk));
  }});
}}

// fn.template operator()<kB>() for each of kSupportedBlockSizes.
template <class Fn>
Status dispatch_block_size(const char* op, int block_size, Fn&& fn) {{
{block_cases}
  return FSA_ERROR(StatusCode::kNotImplemented, std::string("block_size: ") + op + " on CUDA supports block sizes B " +
                                                    kSupportedBlockSizes + ", got " + std::to_string(block_size));
}}

// The errors of dispatch_dtype and dispatch_block_size without the dispatch: for checks before work
// that does not depend on the template arguments, and for code that serves every block size without
// taking B as one. (A struct, not a captureless generic lambda, whose conversion to a function
// pointer nvcc warns about when the template parameter is unused.)
struct AcceptSupported {{
  template <class>
  Status operator()() const {{
    return Status::ok();
  }}
  template <int>
  Status operator()() const {{
    return Status::ok();
  }}
}};
inline Status check_dtype(const char* op, const char* name, DType dtype) {{
  return dispatch_dtype(op, name, dtype, AcceptSupported{{}});
}}
inline Status check_block_size(const char* op, int block_size) {{
  return dispatch_block_size(op, block_size, AcceptSupported{{}});
}}

}}  // namespace fsa::cuda::common
"""


def english_list(items):
    items = [str(item) for item in items]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def dispatch_header():
    dtype_cases = "\n".join(f"  if (dtype == DType::{enum}) return fn.template operator()<{ctype}>();"
                            for ctype, enum in DTYPES.values())
    attention_cases = "\n".join(
        f"    if (dqk == {dqk} && dv == {dv}) return fn.template operator()<Element, {dqk}, {dv}>();"
        for dqk, dv in ATTENTION_DIMS)
    select_cases = "\n".join(f"    if (dqk == {dqk}) return fn.template operator()<Element, {dqk}>();"
                             for dqk in SELECT_DIMS)
    block_cases = "\n".join(f"  if (block_size == {b}) return fn.template operator()<{b}>();" for b in BLOCK_SIZES)
    return DISPATCH_HEADER.format(
        dtype_list=english_list(DTYPES), dtype_cases=dtype_cases,
        attention_list=english_list(f"{dqk}/{dv}" for dqk, dv in ATTENTION_DIMS), attention_cases=attention_cases,
        select_list=english_list(SELECT_DIMS), select_cases=select_cases,
        block_list=english_list(BLOCK_SIZES), block_cases=block_cases)


def main():
    for phase, (directory, namespace, header, fn, decl, combos) in TABLE.items():
        out_dir = ROOT / "src" / "kernels" / directory / "instantiations"
        out_dir.mkdir(parents=True, exist_ok=True)
        wanted = set()
        for suffix, args in combos:
            path = out_dir / f"{phase}_{suffix}.cu"
            wanted.add(path)
            path.write_text(HEADER.format(header=header, namespace=namespace,
                                          decl=decl.format(fn=fn, args=args)))
        # Several phases can share a directory: only this phase's files can be stale.
        for stale in out_dir.glob(f"{phase}_*.cu"):
            if stale not in wanted:
                stale.unlink()
    (ROOT / "src" / "kernels" / "common" / "dispatch_table.hpp").write_text(dispatch_header())


if __name__ == "__main__":
    main()
