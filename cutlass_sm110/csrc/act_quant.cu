// Fused activation quantization: RMSNorm / GeGLU / identity, then FP8 E4M3 (per-tensor inv_scale) or NVFP4
// (E2M1 codes, 16-element E4M3 block scales in CUTLASS's SM100 swizzled layout, per-tensor fp32 global scale).
// Arch-generic CUDA (sm_90a, sm_100a, sm_110a): 16-byte vector loads, fp32 math. The formats and the operation order
// follow triforce/quant/formats.py exactly, so codes are bit-identical to the CPU reference for identical fp32 inputs.
#include <cuda_fp8.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#include "act_quant.h"

namespace triforce {
namespace act_quant {

// ── configuration ───────────────────────────────────────────────────────────────────────────────────────────────
using ElementIn = uint16_t;        // bf16 activations, read as raw bits (bf16 -> fp32 is a 16-bit shift)
using ElementFp8 = __nv_fp8_e4m3;  // fp8 outputs and NVFP4 block scales
using Vec = uint4;                 // one 16-byte load: 8 bf16
constexpr int kVecElems = sizeof(Vec) / sizeof(ElementIn);  // 8
constexpr int kBlock = 16;                                  // NVFP4 block along the row
constexpr float kE2M1Max = 6.0f;
constexpr int kSfAtomRows = 128, kSfAtomCols = 4, kSfAtomBytes = kSfAtomRows * kSfAtomCols;
constexpr int kMaxRowThreads = 512;  // threads of a row-per-block kernel (RMSNorm)
constexpr int kFlatThreads = 256;    // threads of an element-wise kernel (GeGLU, quant)

// ── per-element math, host+device (so a host harness can check it against the Python reference) ──────────────────
__host__ __device__ inline float bits_to_float(uint32_t bits) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(bits);
#else
  float f;
  memcpy(&f, &bits, sizeof(f));
  return f;
#endif
}

// Exact IEEE division even under --use_fast_math (the reference divides g by the block scale once per block).
__host__ __device__ inline float div_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

__host__ __device__ inline void unpack_bf16x8(const Vec& v, float* out) {
  const uint32_t words[4] = {v.x, v.y, v.z, v.w};
  for (int i = 0; i < 4; ++i) {
    out[2 * i] = bits_to_float(words[i] << 16);
    out[2 * i + 1] = bits_to_float(words[i] & 0xFFFF0000u);
  }
}

__host__ __device__ inline float gelu_tanh(float x) {
  constexpr float kSqrt2OverPi = 0.7978845608028654f, kCubic = 0.044715f;
  return 0.5f * x * (1.0f + tanhf(kSqrt2OverPi * (x + kCubic * x * x * x)));
}

// Round to E2M1 (nearest, ties to the even code, saturating at 6): between codes i and i+1 a tie stays at i when i
// is even. Sign bit from v < 0. Same comparisons as formats.e2m1_encode.
__host__ __device__ inline uint32_t e2m1_code(float v) {
  const float a = fabsf(v);
  uint32_t code = (a > 0.25f) + (a >= 0.75f) + (a > 1.25f) + (a >= 1.75f) + (a > 2.5f) + (a >= 3.5f) + (a > 5.0f);
  return code | (v < 0.0f ? 8u : 0u);
}

__host__ __device__ inline uint8_t e4m3_bits(float v) {
  return uint8_t(__nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3));
}

__host__ __device__ inline float e4m3_value(uint8_t bits) {
  ElementFp8 f;
  f.__x = bits;
  return float(f);
}

// 8 fp32 -> 8 saturated e4m3 bytes, element 0 in the lowest byte.
__host__ __device__ inline uint2 e4m3x8(const float* v) {
  uint32_t w[2];
  for (int half = 0; half < 2; ++half) {
    const float* p = v + 4 * half;
    uint32_t lo = __nv_cvt_float2_to_fp8x2(make_float2(p[0], p[1]), __NV_SATFINITE, __NV_E4M3);
    uint32_t hi = __nv_cvt_float2_to_fp8x2(make_float2(p[2], p[3]), __NV_SATFINITE, __NV_E4M3);
    w[half] = lo | (hi << 16);
  }
  return make_uint2(w[0], w[1]);
}

// One NVFP4 block: sf = e4m3(amax * (g / 6)), codes of v * (g / sf) (0 for an all-zero block), 2 per byte, even
// element in the low nibble.
__host__ __device__ inline uint2 nvfp4_block(const float* v, float g, float g_over_6, uint8_t& sf) {
  float amax = 0.0f;
  for (int i = 0; i < kBlock; ++i) amax = fmaxf(amax, fabsf(v[i]));
  sf = e4m3_bits(amax * g_over_6);
  const float sf_value = e4m3_value(sf);
  const float to_code = sf_value > 0.0f ? div_rn(g, sf_value) : 0.0f;
  uint32_t w[2] = {0, 0};
  for (int i = 0; i < kBlock; ++i) w[i / 8] |= e2m1_code(v[i] * to_code) << (4 * (i % 8));
  return make_uint2(w[0], w[1]);
}

// Byte offset of block scale (row, kblock) in CUTLASS's Sm1xxBlockScaledBasicChunk K-major layout: 128x4 atoms of
// 512 bytes, atoms K-fastest; inside an atom row = 32*r1 + r0 and column c sit at r0*16 + r1*4 + c.
__host__ __device__ inline size_t sf_offset(int row, int kblock, int padded_kblocks) {
  const size_t atom = size_t(row / kSfAtomRows) * (padded_kblocks / kSfAtomCols) + kblock / kSfAtomCols;
  return atom * kSfAtomBytes + (row % 32) * 16 + (row % kSfAtomRows) / 32 * 4 + kblock % kSfAtomCols;
}

__host__ __device__ inline int round_up(int v, int m) { return (v + m - 1) / m * m; }

// ── device helpers ──────────────────────────────────────────────────────────────────────────────────────────────
__device__ inline void load_bf16(const ElementIn* src, float* out, int count) {
  for (int i = 0; i < count; i += kVecElems) unpack_bf16x8(*reinterpret_cast<const Vec*>(src + i), out + i);
}

template <typename Weight>
__device__ inline void load_weight(const Weight* src, float* out, int count);

template <>
__device__ inline void load_weight<float>(const float* src, float* out, int count) {
  for (int i = 0; i < count; i += 4) {
    const float4 v = *reinterpret_cast<const float4*>(src + i);
    out[i] = v.x, out[i + 1] = v.y, out[i + 2] = v.z, out[i + 3] = v.w;
  }
}

template <>
__device__ inline void load_weight<ElementIn>(const ElementIn* src, float* out, int count) {
  load_bf16(src, out, count);
}

// Sum over the block; every thread gets the result. blockDim.x is a multiple of 32.
__device__ float block_sum(float v) {
  __shared__ float warp_sums[32];
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  v = lane < warps ? warp_sums[lane] : 0.0f;
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// 1 / rms of row x (fp32): rsqrt(sum(x^2) / dim + eps).
__device__ float row_inv_rms(const ElementIn* x, int dim, float eps) {
  float sum_sq = 0.0f;
  for (int c = threadIdx.x * kVecElems; c < dim; c += blockDim.x * kVecElems) {
    float v[kVecElems];
    load_bf16(x + c, v, kVecElems);
    for (int i = 0; i < kVecElems; ++i) sum_sq += v[i] * v[i];
  }
  return rsqrtf(block_sum(sum_sq) / float(dim) + eps);
}

template <typename Weight, int N>
__device__ inline void rmsnorm_chunk(const ElementIn* x, const Weight* w, float inv_rms, float* y) {
  float wv[N];
  load_bf16(x, y, N);
  load_weight(w, wv, N);
  for (int i = 0; i < N; ++i) y[i] = y[i] * inv_rms * (1.0f + wv[i]);
}

__device__ inline void geglu_chunk(const ElementIn* gate, const ElementIn* up, float* y, int n) {
  float u[kBlock];
  load_bf16(gate, y, n);
  load_bf16(up, u, n);
  for (int i = 0; i < n; ++i) y[i] = gelu_tanh(y[i]) * u[i];
}

// ── kernels ─────────────────────────────────────────────────────────────────────────────────────────────────────
// One block per row: reduce, then each thread normalizes, scales and converts 8-element chunks.
template <typename Weight>
__global__ void rmsnorm_quant_fp8_kernel(const ElementIn* x, const Weight* weight, const float* inv_scale,
                                         uint8_t* out, int dim, float eps) {
  const ElementIn* row_x = x + size_t(blockIdx.x) * dim;
  const float inv_rms = row_inv_rms(row_x, dim, eps), scale = *inv_scale;
  for (int c = threadIdx.x * kVecElems; c < dim; c += blockDim.x * kVecElems) {
    float y[kVecElems];
    rmsnorm_chunk<Weight, kVecElems>(row_x + c, weight + c, inv_rms, y);
    for (int i = 0; i < kVecElems; ++i) y[i] *= scale;
    *reinterpret_cast<uint2*>(out + size_t(blockIdx.x) * dim + c) = e4m3x8(y);
  }
}

// One block per padded row (rows rounded up to 128): real rows quantize 16-element blocks; every padding scale
// (rows >= rows, kblocks >= dim/16) is written as 0 so the swizzled tensor is fully defined.
template <typename Weight>
__global__ void rmsnorm_quant_nvfp4_kernel(const ElementIn* x, const Weight* weight, const float* global_scale,
                                           uint8_t* out, uint8_t* out_sf, int rows, int dim, float eps) {
  const int row = blockIdx.x, kblocks = dim / kBlock, padded_kblocks = round_up(kblocks, kSfAtomCols);
  if (row >= rows) {
    for (int kb = threadIdx.x; kb < padded_kblocks; kb += blockDim.x) out_sf[sf_offset(row, kb, padded_kblocks)] = 0;
    return;
  }
  const ElementIn* row_x = x + size_t(row) * dim;
  const float inv_rms = row_inv_rms(row_x, dim, eps), g = *global_scale, g_over_6 = div_rn(g, kE2M1Max);
  for (int kb = threadIdx.x; kb < padded_kblocks; kb += blockDim.x) {
    uint8_t sf = 0;
    if (kb < kblocks) {
      float y[kBlock];
      rmsnorm_chunk<Weight, kBlock>(row_x + kb * kBlock, weight + kb * kBlock, inv_rms, y);
      *reinterpret_cast<uint2*>(out + size_t(row) * (dim / 2) + kb * (kBlock / 2)) = nvfp4_block(y, g, g_over_6, sf);
    }
    out_sf[sf_offset(row, kb, padded_kblocks)] = sf;
  }
}

// One thread per 8 outputs.
__global__ void geglu_quant_fp8_kernel(const ElementIn* gate_up, const float* inv_scale, uint8_t* out, int rows,
                                       int inner) {
  const int chunks_per_row = inner / kVecElems;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= int64_t(rows) * chunks_per_row) return;
  const int64_t row = idx / chunks_per_row;
  const int col = int(idx % chunks_per_row) * kVecElems;
  const ElementIn* gate = gate_up + row * 2 * inner + col;
  float y[kVecElems];
  geglu_chunk(gate, gate + inner, y, kVecElems);
  const float scale = *inv_scale;
  for (int i = 0; i < kVecElems; ++i) y[i] *= scale;
  *reinterpret_cast<uint2*>(out + row * inner + col) = e4m3x8(y);
}

// One thread per scale slot of the padded [round_up(rows, 128), round_up(cols/16, 4)] grid: real slots quantize a
// 16-element block of y (GeGLU of gate_up, or x itself), padding slots write a 0 scale.
template <bool kGeglu>
__global__ void nvfp4_flat_kernel(const ElementIn* in, const float* global_scale, uint8_t* out, uint8_t* out_sf,
                                  int rows, int cols) {
  const int kblocks = cols / kBlock, padded_kblocks = round_up(kblocks, kSfAtomCols);
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= int64_t(round_up(rows, kSfAtomRows)) * padded_kblocks) return;
  const int row = int(idx / padded_kblocks), kb = int(idx % padded_kblocks);
  uint8_t sf = 0;
  if (row < rows && kb < kblocks) {
    const float g = *global_scale;
    float y[kBlock];
    if (kGeglu) {
      const ElementIn* gate = in + size_t(row) * 2 * cols + kb * kBlock;
      geglu_chunk(gate, gate + cols, y, kBlock);
    } else {
      load_bf16(in + size_t(row) * cols + kb * kBlock, y, kBlock);
    }
    uint2* dst = reinterpret_cast<uint2*>(out + size_t(row) * (cols / 2) + kb * (kBlock / 2));
    *dst = nvfp4_block(y, g, div_rn(g, kE2M1Max), sf);
  }
  out_sf[sf_offset(row, kb, padded_kblocks)] = sf;
}

// ── launch helpers ──────────────────────────────────────────────────────────────────────────────────────────────
void require(bool ok, const char* op, const std::string& what) {
  if (!ok) throw std::invalid_argument(std::string(op) + ": " + what);
}

void check_launch(const char* op) {
  if (cudaError_t err = cudaGetLastError(); err != cudaSuccess)
    throw std::runtime_error(std::string(op) + ": kernel launch failed: " + cudaGetErrorString(err));
}

void check_rows_cols(const char* op, int rows, int cols, int multiple) {
  require(rows > 0 && cols > 0 && cols % multiple == 0, op,
          "needs rows > 0 and a row length that is a positive multiple of " + std::to_string(multiple) + " (got rows=" +
              std::to_string(rows) + ", cols=" + std::to_string(cols) + ")");
}

// Threads of a row-per-block kernel: one per `elems_per_thread` chunk, whole warps, at most kMaxRowThreads.
unsigned row_threads(int dim, int elems_per_thread) {
  const int chunks = (dim + elems_per_thread - 1) / elems_per_thread;
  return unsigned(std::min(round_up(chunks, 32), kMaxRowThreads));
}

unsigned flat_blocks(int64_t items) { return unsigned((items + kFlatThreads - 1) / kFlatThreads); }

template <typename Weight>
void launch_rmsnorm_fp8(const void* x, const void* weight, const float* inv_scale, void* out, int rows, int dim,
                        float eps, cudaStream_t stream) {
  rmsnorm_quant_fp8_kernel<Weight><<<rows, row_threads(dim, kVecElems), 0, stream>>>(
      static_cast<const ElementIn*>(x), static_cast<const Weight*>(weight), inv_scale, static_cast<uint8_t*>(out),
      dim, eps);
}

template <typename Weight>
void launch_rmsnorm_nvfp4(const void* x, const void* weight, const float* global_scale, void* out, void* out_sf,
                          int rows, int dim, float eps, cudaStream_t stream) {
  rmsnorm_quant_nvfp4_kernel<Weight><<<round_up(rows, kSfAtomRows), row_threads(dim, kBlock), 0, stream>>>(
      static_cast<const ElementIn*>(x), static_cast<const Weight*>(weight), global_scale, static_cast<uint8_t*>(out),
      static_cast<uint8_t*>(out_sf), rows, dim, eps);
}

template <bool kGeglu>
void launch_nvfp4_flat(const void* in, const float* global_scale, void* out, void* out_sf, int rows, int cols,
                       cudaStream_t stream) {
  const int64_t slots = int64_t(round_up(rows, kSfAtomRows)) * round_up(cols / kBlock, kSfAtomCols);
  nvfp4_flat_kernel<kGeglu><<<flat_blocks(slots), kFlatThreads, 0, stream>>>(
      static_cast<const ElementIn*>(in), global_scale, static_cast<uint8_t*>(out), static_cast<uint8_t*>(out_sf),
      rows, cols);
}

}  // namespace act_quant

// ── host entry points (act_quant.h) ─────────────────────────────────────────────────────────────────────────────
using namespace act_quant;

size_t act_quant_nvfp4_sf_bytes(int rows, int cols) {
  check_rows_cols("nvfp4_sf_bytes", rows, cols, kBlock);
  return size_t(round_up(rows, kSfAtomRows)) * round_up(cols / kBlock, kSfAtomCols);
}

void rmsnorm_quant_fp8(const void* x, const void* weight, bool weight_is_bf16, const float* inv_scale, void* out,
                       int rows, int dim, float eps, cudaStream_t stream) {
  const char* op = "rmsnorm_quant_fp8";
  check_rows_cols(op, rows, dim, kVecElems);
  if (weight_is_bf16)
    launch_rmsnorm_fp8<ElementIn>(x, weight, inv_scale, out, rows, dim, eps, stream);
  else
    launch_rmsnorm_fp8<float>(x, weight, inv_scale, out, rows, dim, eps, stream);
  check_launch(op);
}

void rmsnorm_quant_nvfp4(const void* x, const void* weight, bool weight_is_bf16, const float* global_scale, void* out,
                         void* out_sf, int rows, int dim, float eps, cudaStream_t stream) {
  const char* op = "rmsnorm_quant_nvfp4";
  check_rows_cols(op, rows, dim, kBlock);
  if (weight_is_bf16)
    launch_rmsnorm_nvfp4<ElementIn>(x, weight, global_scale, out, out_sf, rows, dim, eps, stream);
  else
    launch_rmsnorm_nvfp4<float>(x, weight, global_scale, out, out_sf, rows, dim, eps, stream);
  check_launch(op);
}

void geglu_quant_fp8(const void* gate_up, const float* inv_scale, void* out, int rows, int inner, cudaStream_t stream) {
  const char* op = "geglu_quant_fp8";
  check_rows_cols(op, rows, inner, kVecElems);
  geglu_quant_fp8_kernel<<<flat_blocks(int64_t(rows) * (inner / kVecElems)), kFlatThreads, 0, stream>>>(
      static_cast<const ElementIn*>(gate_up), inv_scale, static_cast<uint8_t*>(out), rows, inner);
  check_launch(op);
}

void geglu_quant_nvfp4(const void* gate_up, const float* global_scale, void* out, void* out_sf, int rows, int inner,
                       cudaStream_t stream) {
  const char* op = "geglu_quant_nvfp4";
  check_rows_cols(op, rows, inner, kBlock);
  launch_nvfp4_flat<true>(gate_up, global_scale, out, out_sf, rows, inner, stream);
  check_launch(op);
}

void quant_nvfp4(const void* x, const float* global_scale, void* out, void* out_sf, int rows, int cols,
                 cudaStream_t stream) {
  const char* op = "quant_nvfp4";
  check_rows_cols(op, rows, cols, kBlock);
  launch_nvfp4_flat<false>(x, global_scale, out, out_sf, rows, cols, stream);
  check_launch(op);
}

}  // namespace triforce
