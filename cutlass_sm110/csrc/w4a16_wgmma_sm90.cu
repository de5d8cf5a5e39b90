// W4A16 for few rows on warpgroup MMA (sm_90a): out[M, N] (fp32) += [gate ⊙] x[M, K] @ dequant(W)^T, the split-K
// form of w4a16_skinny.cu on the same prepacked operands. Why a second kernel: at M = 64 the warp-level form issues
// one mma.m16n8k16 per 16 features x 8 tokens and reads every token's x from shared memory once per 16-row tile; it
// is bound by mma.sync issue and shared-memory reads there (25% of copy bandwidth, bench/results/w4a16_sweep-*-s9).
// wgmma.m64nNk16 takes the four warps' dequantized tiles (64 features) as A in registers, each warp's share in the
// layout of mma.m16n8k16's A (so the fragments dequantize exactly as in the warp form), and all N tokens as B from
// shared memory, read once per 64 features by the tensor cores.
//
// B is x in the canonical no-swizzle K-major layout: per 16-k step, 8-token core matrices of 8 rows x 16 bytes
// (offsets padded against bank conflicts: step_bytes). The fragment layout permutes
// k inside a 64-k chunk (lane t of a quad owns k in [16t, 16t + 16), formats.pack_int4_fragments), so x is copied in
// 4-byte k pairs (cp.async) to where that permutation puts them. Each (tile, 128-k group) is summed exactly in fp32 by
// the MMA (integer codes) and scaled in fp32, as in the warp form. Tokens are zero-padded to N = 8, 16, 32 or 64.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "triforce_gemm.h"
#include "w4a16_fragments.cuh"

namespace triforce {
namespace {
using namespace frag;

constexpr int kWarps = 8;   // two warpgroups; warp w's tile of slot r is tile (block * RT + r) * 8 + w
constexpr int kStages = 4;

struct WgArgs {
  const __nv_bfloat16* x;
  const uint4* weight;
  const __nv_bfloat16* scales;
  const float* gate;
  float* out;
  int m, n, k, splits;
  int64_t ldx, ldo;
  bool blocked;
};

template <int N>
struct Wgmma;
template <>
struct Wgmma<8> {
  __device__ __forceinline__ static void run(float (&d)[4], const uint32_t (&a)[4], uint64_t desc, int scale_d) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %9, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n8k16.f32.bf16.bf16 {%0,%1,%2,%3}, {%4,%5,%6,%7}, %8, p, 1, 1, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(scale_d));
  }
};
template <>
struct Wgmma<16> {
  __device__ __forceinline__ static void run(float (&d)[8], const uint32_t (&a)[4], uint64_t desc, int scale_d) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %13, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {%0,%1,%2,%3,%4,%5,%6,%7}, {%8,%9,%10,%11}, %12, p, 1, 1, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(scale_d));
  }
};
template <>
struct Wgmma<32> {
  __device__ __forceinline__ static void run(float (&d)[16], const uint32_t (&a)[4], uint64_t desc, int scale_d) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15}, {%16,%17,%18,%19}, %20, p, 1, 1, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(scale_d));
  }
};
template <>
struct Wgmma<64> {
  __device__ __forceinline__ static void run(float (&d)[32], const uint32_t (&a)[4], uint64_t desc, int scale_d) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, {%32,%33,%34,%35}, %36, p, 1, 1, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(scale_d));
  }
};

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait_all() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
template <int R>
__device__ __forceinline__ void fence_operands(float (&d)[R]) {  // keep reads of d after the wait
#pragma unroll
  for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// x's 16-k steps in shared memory, padded so that the 4-byte copies of one warp (32 consecutive k pairs of one
// token: lane quad q, step s, half h) hit 32 distinct banks: the second core matrix along k sits 192 bytes after
// the first (+16 banks), a step starts 16 bytes (4 banks) past a multiple of 128, 8-token groups 320 bytes apart.
constexpr int kLeadBytes = 192, kGroupBytes = 320;
constexpr int step_bytes(int n) { return (n / 8 * kGroupBytes + 111) / 128 * 128 + 16; }

// A no-swizzle K-major shared-memory matrix descriptor: start, leading byte offset (the second core matrix along
// k), stride byte offset (the next 8 tokens), all in 16-byte units.
__device__ __forceinline__ uint64_t b_descriptor(const void* p) {
  const auto addr = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  return uint64_t((addr >> 4) & 0x3FFF) | (uint64_t(kLeadBytes >> 4) << 16) | (uint64_t(kGroupBytes >> 4) << 32);
}

template <int NT, int RT>
struct WgSmem {
  static constexpr int kN = 8 * NT;
  static constexpr int kWeightBytes = kWarps * RT * 2 * 32 * 16;  // two 64-k chunks of every tile
  static constexpr int kScaleBytes = kWarps * RT * 16 * 2;
  static constexpr int kStepBytes = step_bytes(kN);                // one 16-k step of x (padded, step_bytes)
  static constexpr int kXBytes = 8 * kStepBytes;
  static constexpr int kStageBytes = kWeightBytes + kScaleBytes + kXBytes;
  static constexpr int kBytes = kStages * kStageBytes;
};

template <int NT, int RT>
__global__ void __launch_bounds__(kWarps * 32) w4a16_wgmma_kernel(WgArgs a) {
  using S = WgSmem<NT, RT>;
  constexpr int kN = S::kN, kThreads = kWarps * 32, kD = kN / 2;
  extern __shared__ __align__(128) unsigned char smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int tiles = a.n / 16, groups = a.k / kGroup;
  const FragmentIndex index{groups, a.blocked};
  const int gbeg = int(int64_t(blockIdx.y) * groups / a.splits);
  const int ng = int(int64_t(blockIdx.y + 1) * groups / a.splits) - gbeg;
  int tile[RT];
  bool valid[RT];
#pragma unroll
  for (int r = 0; r < RT; ++r) {
    tile[r] = (blockIdx.x * RT + r) * kWarps + warp;
    valid[r] = tile[r] < tiles;
  }

  auto issue_weights = [&](int i) {
    unsigned char* base = smem + (i % kStages) * S::kStageBytes;
#pragma unroll
    for (int r = 0; r < RT; ++r) {
      if (!valid[r]) continue;
      const uint4* src = a.weight + index.weight(tile[r], gbeg + i) + lane;
      unsigned char* dst = base + ((warp * RT + r) * 2 * 32 + lane) * 16;
      cp_async16(dst, src, 16);
      cp_async16(dst + 32 * 16, src + 32, 16);
      if (lane < 2)
        cp_async16(base + S::kWeightBytes + (warp * RT + r) * 32 + lane * 16,
                   a.scales + index.scales(tile[r], gbeg + i) + lane * 8, 16);
    }
  };
  // x's k pair (2u, 2u + 1) of the group, k = 64c + 16q + 4s + 2h + {0, 1} (q: the lane-quad index that owns it),
  // is B's k slots 2q (h = 0) or 8 + 2q (h = 1) of step 4c + s; rows >= M zero-filled.
  auto issue_x = [&](int i) {
    unsigned char* xs = smem + (i % kStages) * S::kStageBytes + S::kWeightBytes + S::kScaleBytes;
    const int64_t k0 = int64_t(gbeg + i) * kGroup;
    for (int idx = threadIdx.x; idx < kN * 64; idx += kThreads) {
      const int u = idx & 63, tok = idx >> 6;
      const int c = u >> 5, q = (u >> 3) & 3, s = (u >> 1) & 3, h = u & 1;
      const bool in = tok < a.m;
      const __nv_bfloat16* src = in ? a.x + tok * a.ldx + k0 + 2 * u : a.x;
      cp_async4(xs + (4 * c + s) * S::kStepBytes + (tok >> 3) * kGroupBytes + h * kLeadBytes + (tok & 7) * 16 + q * 4, src,
                in ? 4 : 0);
    }
  };

  for (int i = 0; i < kStages - 1; ++i)
    if (i < ng) issue_weights(i);
  cp_async_commit();
  grid_dependency_wait();  // x, gate and out belong to the kernels before
  launch_dependents();
  for (int i = 0; i < kStages - 1; ++i) {
    if (i < ng) issue_x(i);
    cp_async_commit();
  }

  float acc[RT][kD];
#pragma unroll
  for (int r = 0; r < RT; ++r)
#pragma unroll
    for (int e = 0; e < kD; ++e) acc[r][e] = 0.f;
  float part[kD];
#pragma unroll
  for (int e = 0; e < kD; ++e) part[e] = 0.f;

  for (int i = 0; i < ng; ++i) {
    cp_async_wait<kStages - 2>();                              // stage i has landed (this thread's copies) ...
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // ... and is visible to wgmma's reads ...
    __syncthreads();                                           // ... for every thread; stage i - 1's slot is free
    if (i + kStages - 1 < ng) {
      issue_weights(i + kStages - 1);
      issue_x(i + kStages - 1);
    }
    cp_async_commit();

    const unsigned char* base = smem + (i % kStages) * S::kStageBytes;
    const unsigned char* xs = base + S::kWeightBytes + S::kScaleBytes;
    const __nv_bfloat16* sc = reinterpret_cast<const __nv_bfloat16*>(base + S::kWeightBytes);
#pragma unroll
    for (int r = 0; r < RT; ++r) {
      uint32_t af[8][4];
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const uint4 w = valid[r] ? reinterpret_cast<const uint4*>(base)[((warp * RT + r) * 2 + c) * 32 + lane]
                                 : make_uint4(0x88888888u, 0x88888888u, 0x88888888u, 0x88888888u);  // q = 0
        dequant_word(w.x, af[4 * c + 0]);
        dequant_word(w.y, af[4 * c + 1]);
        dequant_word(w.z, af[4 * c + 2]);
        dequant_word(w.w, af[4 * c + 3]);
      }
      fence_operands(part);
      wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < 8; ++ks) Wgmma<kN>::run(part, af[ks], b_descriptor(xs + ks * S::kStepBytes), ks > 0);
      wgmma_commit();
      wgmma_wait_all();
      fence_operands(part);
      const float s_lo = __bfloat162float(sc[(warp * RT + r) * 16 + g]);
      const float s_hi = __bfloat162float(sc[(warp * RT + r) * 16 + g + 8]);
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        acc[r][4 * j + 0] += s_lo * part[4 * j + 0];
        acc[r][4 * j + 1] += s_lo * part[4 * j + 1];
        acc[r][4 * j + 2] += s_hi * part[4 * j + 2];
        acc[r][4 * j + 3] += s_hi * part[4 * j + 3];
      }
    }
  }
  cp_async_wait<0>();

  // d[4j + 0/1]: feature g, tokens 8j + 2t / + 1; d[4j + 2/3]: feature g + 8 (wgmma's accumulator layout, per warp)
#pragma unroll
  for (int r = 0; r < RT; ++r) {
    if (!valid[r]) continue;
    const int row = tile[r] * 16 + g;
    const float gate_lo = a.gate ? a.gate[row] : 1.f, gate_hi = a.gate ? a.gate[row + 8] : 1.f;
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      const int tok = j * 8 + 2 * t;
      if (tok < a.m) {
        atomicAdd(a.out + tok * a.ldo + row, gate_lo * acc[r][4 * j + 0]);
        atomicAdd(a.out + tok * a.ldo + row + 8, gate_hi * acc[r][4 * j + 2]);
      }
      if (tok + 1 < a.m) {
        atomicAdd(a.out + (tok + 1) * a.ldo + row, gate_lo * acc[r][4 * j + 1]);
        atomicAdd(a.out + (tok + 1) * a.ldo + row + 8, gate_hi * acc[r][4 * j + 3]);
      }
    }
  }
}

template <int NT, int RT>
void launch(const WgArgs& args, const W4A16SkinnyProblem& p, cudaStream_t stream) {
  using S = WgSmem<NT, RT>;
  auto kernel = w4a16_wgmma_kernel<NT, RT>;
  static const cudaError_t attr =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, S::kBytes);
  if (attr != cudaSuccess)
    throw std::runtime_error(std::string("w4a16_skinny (warpgroup): cannot allow ") + std::to_string(S::kBytes) +
                             " bytes of shared memory: " + cudaGetErrorString(attr));
  const int tiles = p.n / 16;
  const int row_blocks = (tiles + kWarps * RT - 1) / (kWarps * RT);
  int splits = p.splits;
  if (splits <= 0) {  // fill every resident CTA slot once
    int per_sm = 0;
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kWarps * 32, S::kBytes);
    splits = (p.sm_count * (per_sm > 0 ? per_sm : 1) + row_blocks - 1) / row_blocks;
  }
  WgArgs a = args;
  a.splits = splits < p.k / kGroup ? splits : p.k / kGroup;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(unsigned(row_blocks), unsigned(a.splits));
  config.blockDim = dim3(kWarps * 32);
  config.dynamicSmemBytes = S::kBytes;
  config.stream = stream;
  cudaLaunchAttribute attribute[2];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = 1;
  attribute[1].id = cudaLaunchAttributePreferredSharedMemoryCarveout;
  attribute[1].val.sharedMemCarveout = unsigned(chain_carveout());
  config.attrs = attribute;
  config.numAttrs = p.dependent ? (chain_carveout() >= 0 ? 2 : 1) : 0;
  if (auto err = cudaLaunchKernelEx(&config, kernel, a); err != cudaSuccess)
    throw std::runtime_error(std::string("w4a16_skinny (warpgroup): launch failed: ") + cudaGetErrorString(err));
}

template <int NT>
void launch_tiles(const WgArgs& a, const W4A16SkinnyProblem& p, cudaStream_t stream) {
  if (p.tiles_per_warp == 1) return launch<NT, 1>(a, p, stream);
  if (p.tiles_per_warp == 2) return launch<NT, 2>(a, p, stream);
  throw std::runtime_error("w4a16_skinny (warpgroup): tiles_per_warp must be 1 or 2, got " +
                           std::to_string(p.tiles_per_warp));
}

}  // namespace

void w4a16_wgmma_run(const W4A16SkinnyProblem& p, cudaStream_t stream) {
  if (p.m < 1 || p.m > 64 || p.n % 16 || p.k % kGroup)
    throw std::runtime_error("w4a16_skinny (warpgroup): needs 1 <= M <= 64, N % 16 == 0, K % 128 == 0 (got M=" +
                             std::to_string(p.m) + " N=" + std::to_string(p.n) + " K=" + std::to_string(p.k) + ")");
  if (p.out == nullptr || p.act != nullptr)
    throw std::runtime_error("w4a16_skinny (warpgroup): only the fp32-add form (no GeGLU)");
  const WgArgs a{static_cast<const __nv_bfloat16*>(p.x), static_cast<const uint4*>(p.weight),
                 static_cast<const __nv_bfloat16*>(p.scales), p.gate, p.out, p.m, p.n, p.k, 1, p.ldx, p.ldo,
                 p.blocked};
  if (p.m <= 8) return launch_tiles<1>(a, p, stream);
  if (p.m <= 16) return launch_tiles<2>(a, p, stream);
  if (p.m <= 32) return launch_tiles<4>(a, p, stream);
  return launch_tiles<8>(a, p, stream);
}

}  // namespace triforce
