// Host entry points of the fused activation-quantization kernels (act_quant.cu: arch-generic CUDA, compiled into
// every family). Plain C++ (no torch headers); bindings.cpp checks the tensors and calls these on torch's current
// stream. Outputs and scales are device pointers; nothing is allocated, so every call is CUDA-graph safe.
// Each function throws std::invalid_argument for shapes it cannot take and std::runtime_error when a launch fails.
//
// Formats (defined by the CPU references in triforce/quant/formats.py, bit-exact where the math is):
//   fp8:   out = e4m3_satfinite(y * inv_scale)                                      (row-major [rows, cols])
//   nvfp4: per 16-element block along the row: sf = e4m3(amax * (g / 6)), code = e2m1(y * (g / sf)); two codes
//          per byte, even column in the low nibble ([rows, cols / 2]); sf in CUTLASS's SM100 swizzled layout of
//          act_quant_nvfp4_sf_bytes(rows, cols) bytes, every byte written (padding = 0).
#pragma once
#include <cstddef>
#include <cuda_runtime_api.h>

namespace triforce {

// Bytes of the swizzled scale factors of a [rows, cols] NVFP4 operand: rows padded to 128, cols/16 padded to 4.
size_t act_quant_nvfp4_sf_bytes(int rows, int cols);

// y = Gemma RMSNorm of x: x * rsqrt(mean(x^2) + eps) * (1 + weight), fp32. x bf16 [rows, dim]; weight [dim] is fp32
// or bf16 (weight_is_bf16). dim % 8 == 0 (fp8) / dim % 16 == 0 (nvfp4).
void rmsnorm_quant_fp8(const void* x, const void* weight, bool weight_is_bf16, const float* inv_scale, void* out,
                       int rows, int dim, float eps, cudaStream_t stream);
void rmsnorm_quant_nvfp4(const void* x, const void* weight, bool weight_is_bf16, const float* global_scale, void* out,
                         void* out_sf, int rows, int dim, float eps, cudaStream_t stream);

// y = gelu_tanh(gate) * up, fp32. gate_up bf16 [rows, 2 * inner], gate first; out covers [rows, inner].
void geglu_quant_fp8(const void* gate_up, const float* inv_scale, void* out, int rows, int inner, cudaStream_t stream);
void geglu_quant_nvfp4(const void* gate_up, const float* global_scale, void* out, void* out_sf, int rows, int inner,
                       cudaStream_t stream);

// y = x. x bf16 [rows, cols], cols % 16 == 0.
void quant_nvfp4(const void* x, const float* global_scale, void* out, void* out_sf, int rows, int cols,
                 cudaStream_t stream);

}  // namespace triforce
