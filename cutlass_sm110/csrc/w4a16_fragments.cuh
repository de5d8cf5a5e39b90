// Device helpers shared by the few-row W4A16 kernels (w4a16_skinny.cu: warp MMA, every family;
// w4a16_wgmma_sm90.cu: warpgroup MMA, sm_90a): the cp.async stream, programmatic dependent launch, the int4
// fragment dequantization and where a (16-row tile, 128-k group) of the fragment layout lives.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace triforce {
namespace frag {

constexpr int kChunk = 64;   // k per prepacked 16-byte lane fragment (four MMAs)
constexpr int kGroup = 128;  // k per scale (one pipeline stage)
constexpr int kBlockTiles = 8;  // 16-row tiles of one block of the blocked layout

__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
  const auto d = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async4(void* dst, const void* src, int src_bytes) {
  const auto d = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(d), "l"(src), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

// Programmatic dependent launch: both are no-ops when the kernel was launched without the attribute.
__device__ __forceinline__ void grid_dependency_wait() { asm volatile("griddepcontrol.wait;\n" ::: "memory"); }
__device__ __forceinline__ void launch_dependents() { asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory"); }

// Nibbles at bits 4i and 16 + 4i of w (after the caller's shift) as bf16x2 of q = u - 8, exactly.
__device__ __forceinline__ uint32_t nibble_pair_to_bf16x2(uint32_t w) {
  uint32_t biased;  // (w & 0x000F000F) | 0x43004300: bf16 128 + u in each half
  asm("lop3.b32 %0, %1, 0x000F000F, 0x43004300, 0xEA;\n" : "=r"(biased) : "r"(w));
  const __nv_bfloat162 v = *reinterpret_cast<const __nv_bfloat162*>(&biased);
  const __nv_bfloat162 q = __hsub2(v, __nv_bfloat162(__float2bfloat16(136.f), __float2bfloat16(136.f)));
  return *reinterpret_cast<const uint32_t*>(&q);
}

// The A fragments of one MMA step from one 32-bit word of the prepacked layout: rows g / g + 8, k slots 2t / 2t + 8
// (the layout of mma.m16n8k16's A, which is also one warp's share of wgmma.m64nNk16's A in registers).
__device__ __forceinline__ void dequant_word(uint32_t w, uint32_t (&a)[4]) {
  a[0] = nibble_pair_to_bf16x2(w);
  a[1] = nibble_pair_to_bf16x2(w >> 4);
  a[2] = nibble_pair_to_bf16x2(w >> 8);
  a[3] = nibble_pair_to_bf16x2(w >> 12);
}

// Where tile `tile`'s fragments of group `group` start, in 16-byte lane fragments (two 64-k chunks of 32 lanes
// follow), and its 16 scales, in bf16 elements. The tile layout ([N/16][K/64][32 lanes]) keeps one tile's K
// contiguous; the blocked layout ([N/128][K/128][8 tiles][2 chunks][32 lanes]) keeps one group of 8 consecutive tiles
// contiguous, so a CTA's stage is one 8 KB run of memory and its walk over K one contiguous range.
struct FragmentIndex {
  int groups;
  bool blocked;
  __device__ __forceinline__ int64_t weight(int tile, int group) const {
    return blocked ? ((int64_t(tile / kBlockTiles) * groups + group) * kBlockTiles + tile % kBlockTiles) * 64
                   : (int64_t(tile) * groups + group) * 64;
  }
  __device__ __forceinline__ int64_t scales(int tile, int group) const {
    return blocked ? ((int64_t(tile / kBlockTiles) * groups + group) * kBlockTiles + tile % kBlockTiles) * 16
                   : (int64_t(tile) * groups + group) * 16;
  }
};

}  // namespace frag
}  // namespace triforce
