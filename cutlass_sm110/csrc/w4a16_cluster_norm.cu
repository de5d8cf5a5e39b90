// A few-row W4A16 projection added into the fp32 residual, then the next adaRMS norm, in one launch (the denoise
// step's o, and down, followed by the norm the next GEMM reads):
//   residual[M, N] += gate ⊙ (x[M, K] @ dequant(W)^T);   h[M, N] = bf16(residual / rms(residual) ⊙ scale + shift)
//
// Why: in the denoise chain every launch costs ~2 us whatever it does, and the norm needs every column of a row, so
// it has had its own launch after the split-K projection (whose CTAs add into the residual by atomics). Here the
// columns of a row are spread over the CTAs of one thread-block cluster (64 columns a CTA: 16 CTAs for N = 1024; or
// 128 a CTA where the GPU schedules no such cluster), each CTA walks all of K for its columns, and the row's sum of squares is
// the one thing they exchange: each CTA pushes its partial sums (st.async into the others' shared memory, counted
// by their mbarriers, as in mqa_cluster_attention.cu). The token rows are cut into groups of 8 (one MMA n tile), a
// cluster each, so no MMA work is spent on padding tokens beyond a multiple of 8.
//
// Every CTA's weights and scales are one contiguous range of the fragment layout (pack_int4_fragments: a tile's
// chunks are contiguous, and a CTA owns consecutive tiles), copied into shared memory (cp.async by every thread)
// before griddepcontrol.wait: under programmatic dependent launch they arrive while the kernel before runs. The x
// rows arrive after it in up to four pieces along K, each counted by its own mbarrier, so the MMAs start on the
// first piece.
// The gate, scale and shift (the step's constants) are read before the wait too; the residual after it.
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>

#include "triforce_gemm.h"

namespace cg = cooperative_groups;

namespace triforce {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kTokens = 8;       // token rows a cluster: one MMA n tile
constexpr int kChunk = 64;       // k per prepacked 16-byte lane fragment (four MMAs)
constexpr int kGroup = 128;      // k per scale
constexpr int kMaxPieces = 4;    // the x rows arrive in up to four pieces along K, one mbarrier each
constexpr int kMaxCluster = 16;

// Pieces of x along K: four where the chunks divide by four, else two (a K of whole groups has an even chunk count).
__host__ __device__ inline int pieces_of(int k) { return (k / kChunk) % 4 == 0 ? 4 : 2; }

struct Args {
  const __nv_bfloat16* x;
  const uint4* weight;          // [N/16][K/64][32 lanes] x 16 bytes
  const __nv_bfloat16* scales;  // [N/16][K/128][16]
  const float* gate;            // [N]
  const float* scale;           // [N]
  const float* shift;           // [N] or null
  float* residual;              // fp32 [M, N], updated
  __nv_bfloat16* h;             // bf16 [M, N], written
  int m, n, k;
  int64_t ldx, ldr, ldh;
  float eps;
  unsigned long long* trace;    // null, or [CTAs][8] %globaltimer stamps (bench/norm_fold.py)
};

// Shared-memory layout (byte offsets, 16-byte aligned) for TILES 16-row tiles a CTA and K.
struct Layout {
  int w, s, x, red, sq, recv, bar, bytes, x_stride;
  __host__ __device__ Layout(int tiles, int k) {
    const int parts = kWarps / tiles;
    x_stride = 2 * k + 16;                              // a row's 16-byte shift spreads 8 tokens over all banks
    w = 0;
    s = w + tiles * (k / kChunk) * 512;
    x = s + tiles * (k / kGroup) * 32;
    red = x + kTokens * x_stride;                       // partial accumulators of K parts 1.. (fp32 x 4 a lane)
    sq = red + (parts - 1) * tiles * 32 * 16;
    recv = sq + tiles * kTokens * 4;                    // [source CTA][8 tokens] partial sums of squares
    bar = recv + kMaxCluster * kTokens * 4;             // weights, x pieces, the cluster's sums
    bytes = bar + (2 + kMaxPieces) * 8;
  }
};

__device__ __forceinline__ void stamp(unsigned long long* trace, int i) {
  if (trace == nullptr || threadIdx.x != 0) return;
  unsigned long long now;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
  trace[(blockIdx.y * gridDim.x + blockIdx.x) * 8 + i] = now;
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void grid_dependency_wait() { asm volatile("griddepcontrol.wait;\n" ::: "memory"); }
__device__ __forceinline__ void launch_dependents() { asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory"); }
__device__ __forceinline__ void expect_bytes(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src) : "memory");
}
// bar counts this thread's arrival once all its cp.async copies so far have landed
__device__ __forceinline__ void arrive_on_copies(uint32_t bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
// bytes (a multiple of 16) from src into shared memory at dst, spread over the CTA's threads
__device__ __forceinline__ void copy_spread(uint32_t dst, const void* src, int bytes) {
  for (int i = threadIdx.x; i < bytes / 16; i += kThreads)
    cp_async16(dst + i * 16, static_cast<const unsigned char*>(src) + int64_t(i) * 16);
}
__device__ __forceinline__ void wait_parity0(uint32_t bar) {
  asm volatile(
      "{\n.reg .pred done;\nwait:\n"
      "mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 done, [%0], 0;\n"
      "@!done bra wait;\n}\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ uint32_t cluster_addr(uint32_t local, int rank) {
  uint32_t remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(local), "r"(rank));
  return remote;
}
__device__ __forceinline__ void push2(uint32_t remote, float a, float b, uint32_t remote_bar) {
  asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.v2.f32 [%0], {%1, %2}, [%3];\n"
               ::"r"(remote), "f"(a), "f"(b), "r"(remote_bar) : "memory");
}

// Nibbles at bits 4i and 16 + 4i of w (after the caller's shift) as bf16x2 of q = u - 8, exactly (0x4300 | u is
// bf16 128 + u), as in w4a16_skinny.cu.
__device__ __forceinline__ uint32_t nibble_pair_to_bf16x2(uint32_t w) {
  uint32_t biased;
  asm("lop3.b32 %0, %1, 0x000F000F, 0x43004300, 0xEA;\n" : "=r"(biased) : "r"(w));
  const __nv_bfloat162 v = *reinterpret_cast<const __nv_bfloat162*>(&biased);
  const __nv_bfloat162 q = __hsub2(v, __nv_bfloat162(__float2bfloat16(136.f), __float2bfloat16(136.f)));
  return *reinterpret_cast<const uint32_t*>(&q);
}
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

// TILES 16-row tiles a CTA (4: 64 columns, 8: 128); the 8 warps are TILES tiles x (8 / TILES) parts of K, whose
// partial sums meet in shared memory.
template <int TILES>
__global__ void __launch_bounds__(kThreads) w4a16_cluster_norm_kernel(Args a) {
  constexpr int kParts = kWarps / TILES;
  extern __shared__ __align__(128) unsigned char smem[];
  cg::cluster_group cluster = cg::this_cluster();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int rank = int(cluster.block_rank()), ranks = int(cluster.num_blocks());
  const int chunks = a.k / kChunk, groups = a.k / kGroup;
  const int r = warp % TILES, part = warp / TILES;
  const int tile = rank * TILES + r;
  const int tok0 = blockIdx.y * kTokens, tokens = min(kTokens, a.m - tok0);
  const Layout L(TILES, a.k);
  stamp(a.trace, 0);
  const int pieces = pieces_of(a.k);
  const uint32_t bar_w = smem_addr(smem + L.bar), bar_sum = bar_w + 8, bar_x = bar_w + 16;

  if (threadIdx.x == 0) {  // the copies' barriers count every thread's arrival, the sums' barrier bytes
    for (int i = 0; i < 2 + pieces; ++i)
      asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar_w + 8 * i), "r"(i == 1 ? 1 : kThreads)
                   : "memory");
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    expect_bytes(bar_sum, uint32_t(ranks) * kTokens * 4);
  }
  __syncthreads();
  // every mbarrier initialized before any CTA pushes (waited on just before the pushes)
  asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");
  copy_spread(smem_addr(smem + L.w), a.weight + int64_t(rank) * TILES * chunks * 32, TILES * chunks * 512);
  copy_spread(smem_addr(smem + L.s), a.scales + int64_t(rank) * TILES * groups * 16, TILES * groups * 32);
  arrive_on_copies(bar_w);

  // the epilogue's operands (part-0 warps): features f, f + 8 of this warp's tile, tokens 2t, 2t + 1 of the group
  const int f = tile * 16 + g;
  const int ta = tok0 + 2 * t, tb = ta + 1;
  float res[4] = {0.f, 0.f, 0.f, 0.f}, gate[2] = {0.f, 0.f}, scale[2] = {0.f, 0.f}, shift[2] = {0.f, 0.f};
  if (part == 0) {
    for (int e = 0; e < 2; ++e) {
      gate[e] = a.gate[f + 8 * e];
      scale[e] = a.scale[f + 8 * e];
      shift[e] = a.shift ? a.shift[f + 8 * e] : 0.f;
    }
  }

  grid_dependency_wait();  // x and the residual belong to the kernels before
  launch_dependents();
  stamp(a.trace, 1);
  if (part == 0) {  // requested now, used after the MMAs: their latency hides behind the K loop
    if (2 * t < tokens) res[0] = a.residual[ta * a.ldr + f], res[2] = a.residual[ta * a.ldr + f + 8];
    if (2 * t + 1 < tokens) res[1] = a.residual[tb * a.ldr + f], res[3] = a.residual[tb * a.ldr + f + 8];
  }
  {
    const int piece_k = a.k / pieces, segments = piece_k / 8;   // 16-byte segments of a row's piece
    for (int piece = 0; piece < pieces; ++piece) {
      for (int i = threadIdx.x; i < tokens * segments; i += kThreads) {
        const int row = i / segments, seg = i % segments;
        cp_async16(smem_addr(smem + L.x + row * L.x_stride + (piece * piece_k + seg * 8) * 2),
                   a.x + (tok0 + row) * a.ldx + piece * piece_k + seg * 8);
      }
      arrive_on_copies(bar_x + 8 * piece);
    }
  }
  wait_parity0(bar_w);
  stamp(a.trace, 2);

  // this warp's part of K: whole groups, whole pieces
  const int c_begin = part * chunks / kParts, c_end = (part + 1) * chunks / kParts;
  const int chunks_per_piece = chunks / pieces;
  const uint4* ws = reinterpret_cast<const uint4*>(smem + L.w);
  const __nv_bfloat16* ss = reinterpret_cast<const __nv_bfloat16*>(smem + L.s);
  const unsigned char* xrow = smem + L.x + g * L.x_stride;
  const bool token_in = g < tokens;
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  int ready = -1;
  for (int c = c_begin; c < c_end; c += 2) {  // one group (two chunks) an iteration
    float part_acc[2][2][4];                   // [chunk][k-step pair]: independent MMA chains
#pragma unroll
    for (int cc = 0; cc < 2; ++cc) {
      const int piece = (c + cc) / chunks_per_piece;
      if (piece != ready) {
        wait_parity0(bar_x + 8 * piece);
        ready = piece;
      }
      const uint4 wq = ws[(r * chunks + c + cc) * 32 + lane];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        uint32_t af[2][4];
        dequant_word(h == 0 ? wq.x : wq.z, af[0]);
        dequant_word(h == 0 ? wq.y : wq.w, af[1]);
        uint4 xv = make_uint4(0u, 0u, 0u, 0u);
        if (token_in) xv = *reinterpret_cast<const uint4*>(xrow + (c + cc) * kChunk * 2 + (2 * t + h) * 16);
        float* d = part_acc[cc][h];
        d[0] = d[1] = d[2] = d[3] = 0.f;
        mma_bf16(part_acc[cc][h], af[0], xv.x, xv.y);
        mma_bf16(part_acc[cc][h], af[1], xv.z, xv.w);
      }
    }
    const int grp = c / 2;
    const float s_lo = __bfloat162float(ss[(r * groups + grp) * 16 + g]);
    const float s_hi = __bfloat162float(ss[(r * groups + grp) * 16 + g + 8]);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float sum = part_acc[0][0][e] + part_acc[0][1][e] + part_acc[1][0][e] + part_acc[1][1][e];
      acc[e] += (e < 2 ? s_lo : s_hi) * sum;
    }
  }

  stamp(a.trace, 3);
  // the K parts meet: parts 1.. leave their sums in shared memory, part 0 adds them
  float4* red = reinterpret_cast<float4*>(smem + L.red);
  if (part > 0) red[((part - 1) * TILES + r) * 32 + lane] = make_float4(acc[0], acc[1], acc[2], acc[3]);
  __syncthreads();
  float* sq = reinterpret_cast<float*>(smem + L.sq);
  if (part == 0) {
#pragma unroll
    for (int p = 1; p < kParts; ++p) {
      const float4 v = red[((p - 1) * TILES + r) * 32 + lane];
      acc[0] += v.x, acc[1] += v.y, acc[2] += v.z, acc[3] += v.w;
    }
    // c0, c1: feature f, tokens 2t, 2t + 1; c2, c3: feature f + 8
    res[0] += gate[0] * acc[0];
    res[1] += gate[0] * acc[1];
    res[2] += gate[1] * acc[2];
    res[3] += gate[1] * acc[3];
    float sa = res[0] * res[0] + res[2] * res[2], sb = res[1] * res[1] + res[3] * res[3];
#pragma unroll
    for (int o = 4; o < 32; o <<= 1) {  // over the 8 g of the warp's 16 features
      sa += __shfl_xor_sync(0xffffffffu, sa, o);
      sb += __shfl_xor_sync(0xffffffffu, sb, o);
    }
    if (g == 0) {
      sq[r * kTokens + 2 * t] = sa;
      sq[r * kTokens + 2 * t + 1] = sb;
    }
  }
  __syncthreads();
  stamp(a.trace, 4);

  // this CTA's sums of squares (its columns) to every CTA of the cluster
  asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory");
  const uint32_t recv = smem_addr(smem + L.recv);
  if (threadIdx.x < kTokens / 2) {
    float s0 = 0.f, s1 = 0.f;
    for (int i = 0; i < TILES; ++i) s0 += sq[i * kTokens + 2 * threadIdx.x], s1 += sq[i * kTokens + 2 * threadIdx.x + 1];
    for (int dest = 0; dest < ranks; ++dest)
      push2(cluster_addr(recv + (rank * kTokens + 2 * threadIdx.x) * 4, dest), s0, s1, cluster_addr(bar_sum, dest));
  }
  wait_parity0(bar_sum);
  stamp(a.trace, 5);

  if (part == 0) {
    const float* rv = reinterpret_cast<const float*>(smem + L.recv);
    float ssa = 0.f, ssb = 0.f;
    for (int i = 0; i < ranks; ++i) ssa += rv[i * kTokens + 2 * t], ssb += rv[i * kTokens + 2 * t + 1];
    const float inv_a = rsqrtf(ssa / float(a.n) + a.eps), inv_b = rsqrtf(ssb / float(a.n) + a.eps);
    if (2 * t < tokens) {
      a.residual[ta * a.ldr + f] = res[0];
      a.residual[ta * a.ldr + f + 8] = res[2];
      a.h[ta * a.ldh + f] = __float2bfloat16(res[0] * inv_a * scale[0] + shift[0]);
      a.h[ta * a.ldh + f + 8] = __float2bfloat16(res[2] * inv_a * scale[1] + shift[1]);
    }
    if (2 * t + 1 < tokens) {
      a.residual[tb * a.ldr + f] = res[1];
      a.residual[tb * a.ldr + f + 8] = res[3];
      a.h[tb * a.ldh + f] = __float2bfloat16(res[1] * inv_b * scale[0] + shift[0]);
      a.h[tb * a.ldh + f + 8] = __float2bfloat16(res[3] * inv_b * scale[1] + shift[1]);
    }
  }
  stamp(a.trace, 6);
}

int optin_smem() {
  int optin = 0, device = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  return optin;
}

// The kernel with its attributes set (once): non-portable clusters allowed, the GPU's opt-in shared memory.
template <int TILES>
auto prepared_kernel(int k) {
  auto kernel = w4a16_cluster_norm_kernel<TILES>;
  static const cudaError_t attr = [&] {
    const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
    return e != cudaSuccess ? e : cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                       optin_smem());
  }();
  if (attr != cudaSuccess)
    throw std::runtime_error(std::string("w4a16_cluster_norm: cannot allow non-portable clusters and the opt-in "
                                         "shared memory: ") + cudaGetErrorString(attr));
  return kernel;
}

template <int TILES>
cudaLaunchConfig_t config_of(const W4A16ClusterNormProblem& p, cudaLaunchAttribute* attribute) {
  const int ranks = p.n / (16 * TILES);
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(unsigned(ranks), unsigned((p.m + kTokens - 1) / kTokens));
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = Layout(TILES, p.k).bytes;
  attribute[0].id = cudaLaunchAttributeClusterDimension;
  attribute[0].val.clusterDim.x = unsigned(ranks);
  attribute[0].val.clusterDim.y = 1;
  attribute[0].val.clusterDim.z = 1;
  config.attrs = attribute;
  config.numAttrs = 1;
  return config;
}

// Whether TILES tiles a CTA fit (N / 16 TILES CTAs, at most 16; K's groups split over the warps' K parts) and the
// GPU co-schedules such a cluster with this shared memory (asked once per N and K).
template <int TILES>
bool schedulable(const W4A16ClusterNormProblem& p) {
  const int ranks = p.n / (16 * TILES);
  if (p.n % (16 * TILES) || ranks > kMaxCluster || (p.k / kGroup) % (kWarps / TILES)) return false;
  static std::map<std::pair<int, int>, bool> known;
  const auto key = std::make_pair(p.n, p.k);
  const auto it = known.find(key);
  if (it != known.end()) return it->second;
  bool ok = Layout(TILES, p.k).bytes <= optin_smem();
  if (ok) {
    cudaLaunchAttribute attribute[1];
    cudaLaunchConfig_t config = config_of<TILES>(p, attribute);
    int clusters = 0;
    ok = cudaOccupancyMaxActiveClusters(&clusters, prepared_kernel<TILES>(p.k), &config) == cudaSuccess &&
         clusters > 0;
    cudaGetLastError();  // a refused cluster shape is an answer, not an error to keep
  }
  return known[key] = ok;
}

template <int TILES>
void run(const W4A16ClusterNormProblem& p, cudaStream_t stream) {
  auto kernel = prepared_kernel<TILES>(p.k);
  cudaLaunchAttribute attribute[3];
  cudaLaunchConfig_t config = config_of<TILES>(p, attribute);
  config.stream = stream;
  attribute[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[1].val.programmaticStreamSerializationAllowed = 1;
  attribute[2].id = cudaLaunchAttributePreferredSharedMemoryCarveout;
  attribute[2].val.sharedMemCarveout = unsigned(chain_carveout());
  config.numAttrs = p.dependent ? (chain_carveout() >= 0 ? 3 : 2) : 1;
  Args a{static_cast<const __nv_bfloat16*>(p.x), static_cast<const uint4*>(p.weight),
         static_cast<const __nv_bfloat16*>(p.scales), p.gate, p.scale, p.shift, p.residual,
         static_cast<__nv_bfloat16*>(p.h), p.m, p.n, p.k, p.ldx, p.ldr, p.ldh, p.eps, p.trace};
  if (auto err = cudaLaunchKernelEx(&config, kernel, a); err != cudaSuccess)
    throw std::runtime_error(std::string("w4a16_cluster_norm: launch of ") + std::to_string(p.n / (16 * TILES)) +
                             "-CTA clusters failed: " + cudaGetErrorString(err));
}

}  // namespace

// 64 columns a CTA where that cluster (N / 64 CTAs) fits and is scheduled, else 128 (N / 128 CTAs); `cluster`
// asks for one of the two sizes.
int w4a16_cluster_norm_size(const W4A16ClusterNormProblem& p) {
  const bool any = p.cluster == 0;
  if (p.n % 64 == 0 && (any || p.cluster == p.n / 64) && schedulable<4>(p)) return p.n / 64;
  if (p.n % 128 == 0 && (any || p.cluster == p.n / 128) && schedulable<8>(p)) return p.n / 128;
  return 0;
}

void w4a16_cluster_norm_run(const W4A16ClusterNormProblem& p, cudaStream_t stream) {
  if (p.m < 1 || p.m > 64 || p.k < kGroup || p.k % kGroup || p.n % 64 || p.cluster < 0)
    throw std::runtime_error("w4a16_cluster_norm: needs 1 <= M <= 64, K % 128 == 0, N % 64 == 0, cluster >= 0 (got M=" +
                             std::to_string(p.m) + " N=" + std::to_string(p.n) + " K=" + std::to_string(p.k) +
                             " cluster=" + std::to_string(p.cluster) + ")");
  const int size = w4a16_cluster_norm_size(p);
  if (size > 0 && size == p.n / 64) return run<4>(p, stream);
  if (size > 0) return run<8>(p, stream);
  throw std::runtime_error("w4a16_cluster_norm: this GPU schedules no cluster of " +
                           (p.cluster ? std::to_string(p.cluster) : std::to_string(p.n / 64) + " or " +
                                                                        std::to_string(p.n / 128)) +
                           " CTAs (64 or 128 columns each, at most " + std::to_string(kMaxCluster) + ") for N=" +
                           std::to_string(p.n) + " K=" + std::to_string(p.k));
}

}  // namespace triforce
