// Issue rate of warp-level bf16 MMA (mma.sync m16n8k16, fp32 accumulate): the instruction the few-row W4A16
// kernel multiplies with (HMMA.16816.F32.BF16). Each warp runs `iters` rounds of ILP independent MMAs on register
// operands, so the time is the tensor pipe's, at the occupancy and ILP the launch asks for; no memory is read.
// bench/mma_rate.py compiles this with nvcc, loads the cubin through the driver API and times it.
#include <cstdint>

namespace {

// bf16 pair from a hash: sign and mantissa random, exponent 125-126 (|v| in [0.25, 1)), so the accumulators stay
// finite and the operands toggle as real data does (the tensor cores draw less power on constant data).
__device__ uint32_t bf16_pair(uint32_t h) {
  h ^= h >> 15; h *= 0x2c1b3c6dU; h ^= h >> 12; h *= 0x297a2d39U; h ^= h >> 15;
  const uint32_t lo = (h & 0x807FU) | ((125U + ((h >> 7) & 1U)) << 7);
  const uint32_t hi = ((h >> 16) & 0x807FU) | ((125U + ((h >> 23) & 1U)) << 7);
  return lo | (hi << 16);
}

template <int ILP>
__device__ void mma_rounds(int iters, uint32_t seed, float* out) {
  const uint32_t t = blockIdx.x * blockDim.x + threadIdx.x;
  uint32_t a[4], b[2];
  for (int i = 0; i < 4; ++i) a[i] = seed ? bf16_pair(seed * 0x9E3779B9U + t * 8U + i) : 0x3F803F80U;  // 1.0 pairs
  for (int i = 0; i < 2; ++i) b[i] = seed ? bf16_pair(seed * 0x85EBCA6BU + t * 8U + 4U + i) : 0x3F803F80U;
  float acc[ILP][4];
#pragma unroll
  for (int j = 0; j < ILP; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
  for (int r = 0; r < iters; ++r) {
#pragma unroll
    for (int j = 0; j < ILP; ++j) {
      asm volatile(
          "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
          "{%0,%1,%2,%3};\n"
          : "+f"(acc[j][0]), "+f"(acc[j][1]), "+f"(acc[j][2]), "+f"(acc[j][3])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
  }
  float sum = 0.f;
#pragma unroll
  for (int j = 0; j < ILP; ++j) sum += acc[j][0] + acc[j][1] + acc[j][2] + acc[j][3];
  out[t] = sum;  // one float a thread: keeps every chain live, and lets a test check the arithmetic
}

}  // namespace

#define MMA_RATE_KERNEL(ILP) \
  extern "C" __global__ void mma_rate_ilp##ILP(int iters, uint32_t seed, float* out) { \
    mma_rounds<ILP>(iters, seed, out); \
  }

MMA_RATE_KERNEL(1)
MMA_RATE_KERNEL(2)
MMA_RATE_KERNEL(4)
MMA_RATE_KERNEL(8)
MMA_RATE_KERNEL(16)
