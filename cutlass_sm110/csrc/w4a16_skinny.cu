// W4A16 for few rows (M <= 64, the denoise step and decode-like calls): out[M, N] (fp32) += [gate ⊙] x[M, K] @
// dequant(W)^T, weight-streaming. Warp-level bf16 MMA (m16n8k16, every family: sm_90a, sm_100a, sm_110a) with the
// weights as the A operand (16 output features x 16 k) and the few tokens as B (n = 8 tokens a tile), so no token
// padding beyond a multiple of 8 is computed.
//
// The weights are prepacked (triforce/quant/formats.py pack_int4_fragments) so that one 16-byte load per lane is
// exactly its A fragments of four MMAs (a 16 x 64 chunk): no shuffles, no shared-memory transposes. The k order
// inside a chunk is permuted (lane t of a quad owns k in [16t, 16t + 16)), and x is read with the same permutation,
// so each lane's tokens are 32 contiguous bytes. Nibbles become bf16 by their bit pattern (0x4300 | u is 128 + u,
// exact) minus 136: the integers q in [-8, 7] enter the MMA exactly, and each group's sum is scaled in fp32.
//
// Pipeline: a CTA of 8 warps owns 8 * RT row tiles of 16 features and a range of whole groups (128 k); every stage
// (one group) brings each warp's weights, the tiles' scales and the x slice of all tokens into shared memory with
// cp.async, STAGES deep (4; the GeGLU form, whose CTA walks all of K, optionally 8). The weights and scales of the
// first stages are requested before griddepcontrol.wait (they do not depend on the kernel before; under
// programmatic dependent launch their reads overlap it). Splits of K across CTAs add their partial sums with fp32
// reductions into `out`, which the caller zeroes (or is the residual).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "triforce_gemm.h"

namespace triforce {
namespace {

constexpr int kStages = 4;   // pipeline depth of the split-K forms, and the GeGLU form's default

// The preferred shared-memory carveout (percent of the SM's unified L1 / shared memory; -1: the driver's choice) of
// the dependent launches (set_chain_carveout): kernels of one dependent-launch chain that ask the SM for
// different splits may not share it, so the engine can give the whole chain one split. A launch attribute, so a
// graph's kernel node keeps it and plain launches (denoise step 0 beside the prefix) are left to the driver.
int g_carveout = -1;
constexpr int kChunk = 64;   // k per prepacked 16-byte lane fragment (four MMAs)
constexpr int kGroup = 128;  // k per scale (one pipeline stage)

__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
  const auto d = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(src_bytes) : "memory");
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

// The A fragments of one MMA from one 32-bit word of the prepacked layout: rows g / g + 8, k slots 2t / 2t + 8.
__device__ __forceinline__ void dequant_word(uint32_t w, uint32_t (&a)[4]) {
  a[0] = nibble_pair_to_bf16x2(w);
  a[1] = nibble_pair_to_bf16x2(w >> 4);
  a[2] = nibble_pair_to_bf16x2(w >> 8);
  a[3] = nibble_pair_to_bf16x2(w >> 12);
}

__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

struct SkinnyArgs {
  const __nv_bfloat16* x;
  const uint4* weight;          // [N/16][K/64][32 lanes] x 16 bytes
  const __nv_bfloat16* scales;  // [N/16][K/128][16]
  const float* gate;            // [N] or null
  float* out;                   // fp32 [M, N] added to (or null with GEGLU)
  __nv_bfloat16* act;           // GEGLU: bf16 [M, N/2] written
  int m, n, k, splits;
  int64_t ldx, ldo;
};

template <int NT, int RT, int WARPS, int STAGES>
struct SkinnySmem {
  static constexpr int kWeightBytes = WARPS * RT * 2 * 32 * 16;  // two chunks a stage
  static constexpr int kScaleBytes = WARPS * RT * 16 * 2;
  static constexpr int kXBytes = 2 * NT * 8 * kChunk * 2;         // two chunks x (8 NT tokens) x 64 k, bf16
  static constexpr int kStageBytes = kWeightBytes + kScaleBytes + kXBytes;
  static constexpr int kBytes = STAGES * kStageBytes;
};

template <int RT, int NT>
__device__ __forceinline__ void zero(float (&v)[RT][NT][4]) {
#pragma unroll
  for (int r = 0; r < RT; ++r)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) v[r][j][e] = 0.f;
}

__device__ __forceinline__ float gelu_tanh(float v) {
  return 0.5f * v * (1.f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
}

// A group's exact integer-code sums into the accumulators, scaled by the tile's rows' group scales (rows g: s_lo,
// rows g + 8: s_hi).
template <int NT>
__device__ __forceinline__ void add_scaled_group(float (&acc)[NT][4], const float (&part)[NT][4], float s_lo,
                                                 float s_hi) {
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    acc[j][0] += s_lo * part[j][0];
    acc[j][1] += s_lo * part[j][1];
    acc[j][2] += s_hi * part[j][2];
    acc[j][3] += s_hi * part[j][3];
  }
}

// The add form's epilogue of one 16-row tile (rows `row` and `row` + 8 of lane (g, t)): [gate ⊙] acc added into
// the fp32 out with reductions (the splits along K meet there).
template <int NT>
__device__ __forceinline__ void add_tile_into_out(const SkinnyArgs& a, const float (&acc)[NT][4], int row, int t) {
  const float gate_lo = a.gate ? a.gate[row] : 1.f, gate_hi = a.gate ? a.gate[row + 8] : 1.f;
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    const int tok = j * 8 + 2 * t;
    if (tok < a.m) {
      atomicAdd(a.out + tok * a.ldo + row, gate_lo * acc[j][0]);
      atomicAdd(a.out + tok * a.ldo + row + 8, gate_hi * acc[j][2]);
    }
    if (tok + 1 < a.m) {
      atomicAdd(a.out + (tok + 1) * a.ldo + row, gate_lo * acc[j][1]);
      atomicAdd(a.out + (tok + 1) * a.ldo + row + 8, gate_hi * acc[j][3]);
    }
  }
}

// A CTA's place in both forms: its lane fragment coordinates, the 16-row tiles and K groups of the problem, and
// the groups [gbeg, gbeg + ng) of its split along K (blockIdx.y of a.splits).
struct CtaSlice {
  int lane, warp, g, t, tiles, chunks, groups, gbeg, ng;
  __device__ explicit CtaSlice(const SkinnyArgs& a)
      : lane(threadIdx.x & 31), warp(threadIdx.x >> 5), g(lane >> 2), t(lane & 3), tiles(a.n / 16),
        chunks(a.k / kChunk), groups(a.k / kGroup), gbeg(int(int64_t(blockIdx.y) * groups / a.splits)),
        ng(int(int64_t(blockIdx.y + 1) * groups / a.splits) - gbeg) {}
};

// NT: token tiles of 8 (M <= 8 NT); RT: row tiles of 16 features per warp; WARPS per CTA. GEGLU: the weights are
// gate/up interleaved in 8-row blocks (formats.interleave_gate_up), so a tile's rows g and g + 8 are gate and up of
// one feature and the epilogue writes gelu_tanh(gate) * up as bf16 (the CTA covers all of K: splits = 1).
template <int NT, int RT, int WARPS, bool GEGLU, int STAGES>
__global__ void __launch_bounds__(WARPS * 32) w4a16_skinny_kernel(SkinnyArgs a) {
  using S = SkinnySmem<NT, RT, WARPS, STAGES>;
  constexpr int kThreads = WARPS * 32;
  extern __shared__ __align__(16) unsigned char smem[];
  const CtaSlice cs(a);
  const int lane = cs.lane, warp = cs.warp, g = cs.g, t = cs.t, tiles = cs.tiles, chunks = cs.chunks;
  const int groups = cs.groups, gbeg = cs.gbeg, ng = cs.ng;
  int tile[RT];
  bool valid[RT];
#pragma unroll
  for (int r = 0; r < RT; ++r) {
    tile[r] = (blockIdx.x * WARPS + warp) * RT + r;
    valid[r] = tile[r] < tiles;
  }

  auto issue_weights = [&](int i) {  // stage i's weights and scales (this warp's tiles)
    unsigned char* base = smem + (i % STAGES) * S::kStageBytes;
#pragma unroll
    for (int r = 0; r < RT; ++r) {
      if (!valid[r]) continue;
      const uint4* src = a.weight + (int64_t(tile[r]) * chunks + 2 * (gbeg + i)) * 32 + lane;
      unsigned char* dst = base + ((warp * RT + r) * 2 * 32 + lane) * 16;
      cp_async16(dst, src, 16);
      cp_async16(dst + 32 * 16, src + 32, 16);
      if (lane < 2)
        cp_async16(base + S::kWeightBytes + (warp * RT + r) * 32 + lane * 16,
                   a.scales + (int64_t(tile[r]) * groups + gbeg + i) * 16 + lane * 8, 16);
    }
  };
  // Stage i's x slice, all 8 NT token rows (rows >= M zero-filled); 16-byte segments XOR-swizzled by token so the
  // MMA-order reads of a quarter warp hit distinct banks.
  auto issue_x = [&](int i) {
    unsigned char* xs = smem + (i % STAGES) * S::kStageBytes + S::kWeightBytes + S::kScaleBytes;
    const int64_t k0 = int64_t(gbeg + i) * kGroup;
    for (int idx = threadIdx.x; idx < 2 * NT * 8 * 8; idx += kThreads) {
      const int seg = idx & 7, tok = (idx >> 3) % (NT * 8), c = idx / (NT * 64);
      const bool in = tok < a.m;
      const __nv_bfloat16* src = in ? a.x + tok * a.ldx + k0 + c * kChunk + seg * 8 : a.x;
      cp_async16(xs + ((c * NT * 8 + tok) * 8 + (seg ^ (tok & 7))) * 16, src, in ? 16 : 0);
    }
  };

  for (int i = 0; i < STAGES - 1; ++i)
    if (i < ng) issue_weights(i);
  cp_async_commit();
  grid_dependency_wait();  // x, gate and out belong to the kernels before
  launch_dependents();
  for (int i = 0; i < STAGES - 1; ++i) {
    if (i < ng) issue_x(i);
    cp_async_commit();
  }

  float acc[RT][NT][4];
  zero(acc);

  for (int i = 0; i < ng; ++i) {
    cp_async_wait<STAGES - 2>();  // stage i has landed (for this thread) ...
    __syncthreads();               // ... for every thread, and stage i - 1's slot is free
    if (i + STAGES - 1 < ng) {
      issue_weights(i + STAGES - 1);
      issue_x(i + STAGES - 1);
    }
    cp_async_commit();

    const unsigned char* base = smem + (i % STAGES) * S::kStageBytes;
    const uint4* xs = reinterpret_cast<const uint4*>(base + S::kWeightBytes + S::kScaleBytes);
    float part[RT][NT][4];
    zero(part);
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      uint4 wq[RT];
#pragma unroll
      for (int r = 0; r < RT; ++r)
        wq[r] = reinterpret_cast<const uint4*>(base)[((warp * RT + r) * 2 + c) * 32 + lane];
#pragma unroll
      for (int h = 0; h < 2; ++h) {  // k steps 2h and 2h + 1: one 16-byte x read per token tile
        uint32_t af[RT][2][4];
#pragma unroll
        for (int r = 0; r < RT; ++r) {
          dequant_word(h == 0 ? wq[r].x : wq[r].z, af[r][0]);
          dequant_word(h == 0 ? wq[r].y : wq[r].w, af[r][1]);
        }
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          const uint4 xv = xs[(c * NT * 8 + j * 8 + g) * 8 + ((2 * t + h) ^ g)];
#pragma unroll
          for (int r = 0; r < RT; ++r) {
            mma_bf16(part[r][j], af[r][0], xv.x, xv.y);
            mma_bf16(part[r][j], af[r][1], xv.z, xv.w);
          }
        }
      }
    }
    const __nv_bfloat16* sc = reinterpret_cast<const __nv_bfloat16*>(base + S::kWeightBytes);
#pragma unroll
    for (int r = 0; r < RT; ++r) {
      const float s_lo = __bfloat162float(sc[(warp * RT + r) * 16 + g]);
      const float s_hi = __bfloat162float(sc[(warp * RT + r) * 16 + g + 8]);
      add_scaled_group(acc[r], part[r], s_lo, s_hi);
    }
  }
  cp_async_wait<0>();

  // c0, c1: feature g, tokens 2t, 2t + 1; c2, c3: feature g + 8.
#pragma unroll
  for (int r = 0; r < RT; ++r) {
    if (!valid[r]) continue;
    if constexpr (GEGLU) {
      const int feature = tile[r] * 8 + g;
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        const int tok = j * 8 + 2 * t;
        if (tok < a.m) a.act[tok * a.ldo + feature] = __float2bfloat16(gelu_tanh(acc[r][j][0]) * acc[r][j][2]);
        if (tok + 1 < a.m)
          a.act[(tok + 1) * a.ldo + feature] = __float2bfloat16(gelu_tanh(acc[r][j][1]) * acc[r][j][3]);
      }
    } else {
      add_tile_into_out(a, acc[r], tile[r] * 16 + g, t);
    }
  }
}

// The register-streamed form (the add form, any M <= 64; `depth` > 0): no shared-memory weight pipeline and no CTA
// barrier a group. Each warp owns RT 16-row tiles and streams its groups' weights straight into a ring of DEPTH
// groups of registers (ld.global.nc, the first DEPTH groups before griddepcontrol.wait); each warp advances on its
// own. The CTA's scales (before the wait) and its whole x slice (after it) come into shared memory once, behind one
// barrier, so the x of a group is shared by the CTA's WARPS * RT tiles. A CTA reads its x slice from L2 once for
// all its tiles: at M = 10 with 8 tiles a CTA that is 31% of the weight bytes again (M / (4 * tiles a CTA)); RT 2
// halves it and serves two tiles' MMAs from each shared-memory x load (parts 111-113: up to 5% faster at M >= 10).
__device__ __forceinline__ uint4 load_stream(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

template <int NT>
__host__ __device__ constexpr int streamed_x_bytes_a_group() { return 2 * NT * 8 * kChunk * 2; }

template <int NT, int WARPS, int DEPTH, int RT>
__global__ void __launch_bounds__(WARPS * 32) w4a16_streamed_kernel(SkinnyArgs a) {
  constexpr int kThreads = WARPS * 32, kTilesCta = WARPS * RT;
  extern __shared__ __align__(16) unsigned char smem[];
  const CtaSlice cs(a);
  const int lane = cs.lane, warp = cs.warp, g = cs.g, t = cs.t, tiles = cs.tiles, chunks = cs.chunks;
  const int groups = cs.groups, gbeg = cs.gbeg, ng = cs.ng;
  const int tile0 = (blockIdx.x * WARPS + warp) * RT;  // the warp's tiles: tile0 .. tile0 + RT - 1
  bool valid[RT];
#pragma unroll
  for (int r = 0; r < RT; ++r) valid[r] = tile0 + r < tiles;
  unsigned char* xs_bytes = smem;
  __nv_bfloat16* sc = reinterpret_cast<__nv_bfloat16*>(smem + ng * streamed_x_bytes_a_group<NT>());

  const uint4* wsrc[RT];
  uint4 w[DEPTH][RT][2];
#pragma unroll
  for (int r = 0; r < RT; ++r) {
    wsrc[r] = a.weight + (int64_t(valid[r] ? tile0 + r : 0) * chunks + 2 * gbeg) * 32 + lane;
#pragma unroll
    for (int d = 0; d < DEPTH; ++d)
      if (valid[r] && d < ng) {
        w[d][r][0] = load_stream(wsrc[r] + d * 64);
        w[d][r][1] = load_stream(wsrc[r] + d * 64 + 32);
      }
  }
  for (int idx = threadIdx.x; idx < kTilesCta * ng * 2; idx += kThreads) {  // scales: [CTA tile][group][16]
    const int ti = idx / (2 * ng), i = (idx >> 1) % ng, half = idx & 1;
    const int tl = blockIdx.x * kTilesCta + ti;
    const bool in = tl < tiles;
    cp_async16(sc + (ti * ng + i) * 16 + half * 8,
               in ? a.scales + (int64_t(tl) * groups + gbeg + i) * 16 + half * 8 : a.scales, in ? 16 : 0);
  }
  cp_async_commit();
  grid_dependency_wait();  // x, gate and out belong to the kernels before
  launch_dependents();
  const int64_t k0 = int64_t(gbeg) * kGroup;
  for (int idx = threadIdx.x; idx < 2 * ng * NT * 8 * 8; idx += kThreads) {  // x: [chunk][token][16-byte segment]
    const int seg = idx & 7, tok = (idx >> 3) % (NT * 8), c = idx / (NT * 64);
    const bool in = tok < a.m;
    const __nv_bfloat16* src = in ? a.x + tok * a.ldx + k0 + c * kChunk + seg * 8 : a.x;
    cp_async16(xs_bytes + ((c * NT * 8 + tok) * 8 + (seg ^ (tok & 7))) * 16, src, in ? 16 : 0);
  }
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
  if (!valid[0]) return;

  const uint4* xs = reinterpret_cast<const uint4*>(xs_bytes);
  float acc[RT][NT][4];
  zero(acc);
  for (int i0 = 0; i0 < ng; i0 += DEPTH) {
#pragma unroll
    for (int d = 0; d < DEPTH; ++d) {
      const int i = i0 + d;
      if (i >= ng) break;
      float part[RT][NT][4];
      zero(part);
#pragma unroll
      for (int cc = 0; cc < 2; ++cc) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          uint32_t af[RT][2][4];
#pragma unroll
          for (int r = 0; r < RT; ++r) {
            const uint4 wq = w[d][r][cc];
            dequant_word(h == 0 ? wq.x : wq.z, af[r][0]);
            dequant_word(h == 0 ? wq.y : wq.w, af[r][1]);
          }
#pragma unroll
          for (int j = 0; j < NT; ++j) {
            const uint4 xv = xs[((2 * i + cc) * NT * 8 + j * 8 + g) * 8 + ((2 * t + h) ^ g)];
#pragma unroll
            for (int r = 0; r < RT; ++r) {
              mma_bf16(part[r][j], af[r][0], xv.x, xv.y);
              mma_bf16(part[r][j], af[r][1], xv.z, xv.w);
            }
          }
        }
      }
#pragma unroll
      for (int r = 0; r < RT; ++r) {
        if (i + DEPTH < ng && valid[r]) {  // the slot is consumed: ask for the group DEPTH ahead
          w[d][r][0] = load_stream(wsrc[r] + (i + DEPTH) * 64);
          w[d][r][1] = load_stream(wsrc[r] + (i + DEPTH) * 64 + 32);
        }
        const float s_lo = __bfloat162float(sc[((warp * RT + r) * ng + i) * 16 + g]);
        const float s_hi = __bfloat162float(sc[((warp * RT + r) * ng + i) * 16 + g + 8]);
        add_scaled_group(acc[r], part[r], s_lo, s_hi);
      }
    }
  }

#pragma unroll
  for (int r = 0; r < RT; ++r) {
    if (!valid[r]) break;
    add_tile_into_out(a, acc[r], (tile0 + r) * 16 + g, t);
  }
}

// Launches either form: a programmatic dependent launch when `dependent`, with the chain's carveout when set; a
// failed launch names the form.
template <typename Kernel>
void launch_chained(Kernel kernel, const SkinnyArgs& a, dim3 grid, int warps, int smem_bytes, bool dependent,
                    cudaStream_t stream, const char* form) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = dim3(unsigned(warps * 32));
  config.dynamicSmemBytes = unsigned(smem_bytes);
  config.stream = stream;
  cudaLaunchAttribute attribute[2];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = 1;
  attribute[1].id = cudaLaunchAttributePreferredSharedMemoryCarveout;
  attribute[1].val.sharedMemCarveout = unsigned(g_carveout);
  config.attrs = attribute;
  config.numAttrs = dependent ? (g_carveout >= 0 ? 2 : 1) : 0;
  if (auto err = cudaLaunchKernelEx(&config, kernel, a); err != cudaSuccess)
    throw std::runtime_error(std::string(form) + ": launch failed: " + cudaGetErrorString(err));
}

constexpr int kStreamedMaxSmem = 96 * 1024;

template <int NT, int WARPS, int DEPTH, int RT>
void launch_streamed(const SkinnyArgs& args, const W4A16SkinnyProblem& p, cudaStream_t stream) {
  auto kernel = w4a16_streamed_kernel<NT, WARPS, DEPTH, RT>;
  static const cudaError_t attr =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kStreamedMaxSmem);
  if (attr != cudaSuccess)
    throw std::runtime_error(std::string("w4a16_skinny(depth): cannot allow ") + std::to_string(kStreamedMaxSmem) +
                             " bytes of shared memory: " + cudaGetErrorString(attr));
  const int groups = p.k / kGroup, row_blocks = (p.n / 16 + WARPS * RT - 1) / (WARPS * RT);
  const int group_bytes = streamed_x_bytes_a_group<NT>() + WARPS * RT * 32;  // x slice and scales
  // default: at most 8 groups a CTA (its x slice in shared memory, fewer where they do not fit), and at least two
  // CTAs a SM
  const int ng_default = std::min(8, kStreamedMaxSmem / group_bytes);
  int splits = p.splits > 0 ? p.splits
                            : std::max((groups + ng_default - 1) / ng_default,
                                       (2 * p.sm_count + row_blocks - 1) / row_blocks);
  splits = std::min(splits, groups);
  const int ng_max = (groups + splits - 1) / splits;
  const int bytes = ng_max * group_bytes;
  if (bytes > kStreamedMaxSmem)
    throw std::runtime_error("w4a16_skinny(depth): " + std::to_string(ng_max) + " groups a CTA need " +
                             std::to_string(bytes) + " bytes of shared memory (at most " +
                             std::to_string(kStreamedMaxSmem) + "): raise splits");
  SkinnyArgs a = args;
  a.splits = splits;
  launch_chained(kernel, a, dim3(unsigned(row_blocks), unsigned(splits)), WARPS, bytes, p.dependent, stream,
                 "w4a16_skinny(depth)");
}

// The compiled (depth, warps a CTA, tiles a warp) shapes: the wheel's W4A16_STREAMED_SHAPES
template <int NT>
void launch_streamed_shape(const SkinnyArgs& args, const W4A16SkinnyProblem& p, cudaStream_t stream) {
  // (depth 4, 4 warps of one tile and 16 warps lost at every point of parts 109 / 111: removed)
  const int warps = p.cta_warps ? p.cta_warps : 8, rt = p.tiles_per_warp;
  if (p.depth == 2 && warps == 8 && rt == 1) return launch_streamed<NT, 8, 2, 1>(args, p, stream);
  if (p.depth == 2 && warps == 4 && rt == 2) return launch_streamed<NT, 4, 2, 2>(args, p, stream);
  if (p.depth == 2 && warps == 8 && rt == 2) return launch_streamed<NT, 8, 2, 2>(args, p, stream);
  throw std::runtime_error("w4a16_skinny(depth): (depth, cta_warps, tiles_per_warp) must be one of (2, 8, 1), "
                           "(2, 4, 2), (2, 8, 2); got (" + std::to_string(p.depth) + ", " + std::to_string(warps) +
                           ", " + std::to_string(rt) + ")");
}

template <int NT, int RT, int WARPS, bool GEGLU, int STAGES = kStages>
void launch(const SkinnyArgs& args, const W4A16SkinnyProblem& p, cudaStream_t stream) {
  using S = SkinnySmem<NT, RT, WARPS, STAGES>;
  auto kernel = w4a16_skinny_kernel<NT, RT, WARPS, GEGLU, STAGES>;
  static const cudaError_t attr =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, S::kBytes);
  if (attr != cudaSuccess)
    throw std::runtime_error(std::string("w4a16_skinny: cannot allow ") + std::to_string(S::kBytes) +
                             " bytes of shared memory: " + cudaGetErrorString(attr));
  const int tiles = p.n / 16;
  int splits = GEGLU ? 1 : p.splits;
  const int row_blocks = (tiles + WARPS * RT - 1) / (WARPS * RT);
  if (splits <= 0) {  // fill every resident CTA slot once
    int per_sm = 0;
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, WARPS * 32, S::kBytes);
    splits = (p.sm_count * (per_sm > 0 ? per_sm : 1) + row_blocks - 1) / row_blocks;
  }
  SkinnyArgs a = args;
  a.splits = splits < p.k / kGroup ? splits : p.k / kGroup;
  launch_chained(kernel, a, dim3(unsigned(row_blocks), unsigned(a.splits)), WARPS, S::kBytes, p.dependent, stream,
                 "w4a16_skinny");
}

template <int NT>
void launch_rows(const SkinnyArgs& args, const W4A16SkinnyProblem& p, cudaStream_t stream) {
  // GeGLU: the CTA needs all of K, so fewer warps a CTA (more CTAs) stand in for the split along K; 8 stages put
  // 7 of the expert's 8 groups in flight (their weights requested before griddepcontrol.wait)
  if (p.act != nullptr) {
    if (p.stages == 8) return launch<NT, 1, 4, true, 8>(args, p, stream);
    if (p.stages == 0 || p.stages == kStages) return launch<NT, 1, 4, true>(args, p, stream);
    throw std::runtime_error("w4a16_skinny_geglu: stages must be 0 (default, 4), 4 or 8, got " +
                             std::to_string(p.stages));
  }
  if (p.tiles_per_warp == 1) return launch<NT, 1, 8, false>(args, p, stream);
  if (p.tiles_per_warp == 2) return launch<NT, 2, 8, false>(args, p, stream);
  throw std::runtime_error("w4a16_skinny: tiles_per_warp must be 1 or 2, got " + std::to_string(p.tiles_per_warp));
}

}  // namespace

int w4a16_skinny_default_tiles_per_warp(int m, int depth) { return depth == 0 && m > 16 ? 2 : 1; }

void set_chain_carveout(int percent) {
  if (percent != -1 && (percent < 0 || percent > 100))
    throw std::runtime_error("set_chain_carveout: a percent 0..100 or -1 (the driver's choice), got " +
                             std::to_string(percent));
  g_carveout = percent;
}

int chain_carveout() { return g_carveout; }

void w4a16_skinny_run(const W4A16SkinnyProblem& p, cudaStream_t stream) {
  if (p.m < 1 || p.m > 64 || p.n % 16 || p.k % kGroup)
    throw std::runtime_error("w4a16_skinny: needs 1 <= M <= 64, N % 16 == 0, K % 128 == 0 (got M=" +
                             std::to_string(p.m) + " N=" + std::to_string(p.n) + " K=" + std::to_string(p.k) + ")");
  if ((p.act != nullptr) == (p.out != nullptr))
    throw std::runtime_error("w4a16_skinny: exactly one of out (fp32 add) and act (GeGLU) must be given");
  SkinnyArgs a{static_cast<const __nv_bfloat16*>(p.x), static_cast<const uint4*>(p.weight),
               static_cast<const __nv_bfloat16*>(p.scales), p.gate, p.out,
               static_cast<__nv_bfloat16*>(p.act), p.m, p.n, p.k, 1, p.ldx, p.ldo};
  if (p.depth != 0) {
    if (p.act != nullptr) throw std::runtime_error("w4a16_skinny(depth): the register-streamed form is the add form");
    if (p.m <= 8) return launch_streamed_shape<1>(a, p, stream);
    if (p.m <= 16) return launch_streamed_shape<2>(a, p, stream);
    if (p.m <= 32) return launch_streamed_shape<4>(a, p, stream);
    return launch_streamed_shape<8>(a, p, stream);
  }
  if (p.m <= 8) return launch_rows<1>(a, p, stream);
  if (p.m <= 16) return launch_rows<2>(a, p, stream);
  if (p.m <= 32) return launch_rows<4>(a, p, stream);
  return launch_rows<8>(a, p, stream);
}

}  // namespace triforce
