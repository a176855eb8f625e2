# CUDA sources of the library. Kernels are templates in headers; each (op, dtype, head dim)
# combination is instantiated in its own small generated file (tools/gen_instantiations.py) so the
# build parallelises and a 2-core machine finishes in minutes.
set(FSA_CUDA_SOURCES
  ${CMAKE_CURRENT_LIST_DIR}/../src/cuda/runtime.cu
  ${CMAKE_CURRENT_LIST_DIR}/../src/cuda/scratch.cu
  ${CMAKE_CURRENT_LIST_DIR}/../src/kernels/common/kernel_arch.cu
  ${CMAKE_CURRENT_LIST_DIR}/../src/kernels/varlen/shift_cu_seqlens.cu
  ${CMAKE_CURRENT_LIST_DIR}/../src/kernels/varlen/compressed_cu_seqlens.cu
  ${CMAKE_CURRENT_LIST_DIR}/../src/kernels/rope/rope_launch.cu
  ${CMAKE_CURRENT_LIST_DIR}/../src/kernels/slc_attn/slc_plan.cu
  ${CMAKE_CURRENT_LIST_DIR}/../src/kernels/slc_attn/slc_attn.cu
  ${CMAKE_CURRENT_LIST_DIR}/../src/kernels/compress/compress_launch.cu
  ${CMAKE_CURRENT_LIST_DIR}/../src/kernels/cmp_attn/cmp_attn_launch.cu
  ${CMAKE_CURRENT_LIST_DIR}/../src/kernels/flash/flash_launch.cu
  ${CMAKE_CURRENT_LIST_DIR}/../src/kernels/swa/swa_launch.cu
  ${CMAKE_CURRENT_LIST_DIR}/../src/kernels/select/select_launch.cu
  ${CMAKE_CURRENT_LIST_DIR}/../src/kernels/combine/combine.cu
  ${CMAKE_CURRENT_LIST_DIR}/../src/kernels/decode/decode_append.cu
  ${CMAKE_CURRENT_LIST_DIR}/../src/kernels/decode/decode_compress.cu
  ${CMAKE_CURRENT_LIST_DIR}/../src/kernels/decode/decode_gather.cu
  ${CMAKE_CURRENT_LIST_DIR}/../src/kernels/decode/decode_merge.cu
  ${CMAKE_CURRENT_LIST_DIR}/../src/kernels/decode/decode_block_scores.cu
  ${CMAKE_CURRENT_LIST_DIR}/../src/kernels/decode/decode_topk.cu
  ${CMAKE_CURRENT_LIST_DIR}/../src/kernels/decode/decode_step.cu
  ${CMAKE_CURRENT_LIST_DIR}/../src/layer/cuda_layer.cu
)
file(GLOB FSA_CUDA_INSTANTIATIONS CONFIGURE_DEPENDS
  ${CMAKE_CURRENT_LIST_DIR}/../src/kernels/*/instantiations/*.cu)
list(APPEND FSA_CUDA_SOURCES ${FSA_CUDA_INSTANTIATIONS})
