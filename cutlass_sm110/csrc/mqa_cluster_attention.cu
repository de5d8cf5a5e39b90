// Split-KV attention for few query rows in one launch (the denoise step: horizon x heads rows over one kv head):
// out[R, D] = softmax(q k^T / sqrt(D) + bias) v, q [R, D], k/v [T, D], additive key bias [T] (0 or -inf), bf16.
//
// Why: the Triton form needs two launches (key-block partials, then a combine), and in the denoise chain a launch
// costs ~1.6 us whatever it does. Here the key blocks of one group of 16 rows are the CTAs of one thread-block
// cluster: each pushes its block's (row max, row sum, unnormalized p v) into the shared memory of the CTAs that
// combine them (st.async into distributed shared memory, counted by the receiver's mbarrier), and every CTA
// combines a slice of the output dims: no partials in global memory, no second launch. (A first version published
// the partials with a cluster barrier, whose release is a GPU-scope MEMBAR on sm_90, and read them remotely:
// 6.8 vs 5.2 us for the Triton pair under dependent launch, decode_attention-*-s11-v2.json.)
//
// The keys below `static_keys` (the prefix's, written long before the denoise chain) are requested before
// griddepcontrol.wait, so under programmatic dependent launch their reads overlap the kernel before; the query rows
// and the keys from static_keys on (the step's own, written by the QKV kernel just before) are read after it.
//
// Per CTA (4 warps, 16 query rows, a block of kb <= 128 keys): warps split the keys for q k^T (m16n8k16 bf16 MMA,
// fp32), the softmax runs per row over the block, and warps split the head dimension for p v. Tiles of k, v and q
// sit in shared memory with their 16-byte chunks XOR-swizzled by row, so ldmatrix reads hit distinct banks.
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "triforce_gemm.h"

namespace cg = cooperative_groups;

namespace triforce {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kRows = 16;            // query rows a CTA: one MMA row tile
constexpr int kMaxSplits = 16;       // CTAs a cluster: above 8 (the portable size) a non-portable cluster
constexpr int kMaxKeyBlock = 128;    // keys a CTA
constexpr float kLog2e = 1.4426950408889634f;

// Shared-memory layout for head dim D and kb keys a CTA (byte offsets; every part 16-byte aligned).
struct Layout {
  int q, k, v, s, p, bias, ml, recv, recv_ml, bar, bytes;
  __host__ __device__ Layout(int d, int kb) {
    q = 0;
    k = q + kRows * d * 2;
    v = k + kb * d * 2;
    s = v + kb * d * 2;
    p = s + kRows * (kb + 4) * 4;     // scores fp32 [16, kb + 4]
    bias = p + kRows * (kb + 8) * 2;  // probabilities bf16 [16, kb + 8] (padded rows: conflict-free ldmatrix)
    ml = bias + kb * 4;               // this block's row max and row sum
    recv = ml + 2 * kRows * 4;        // pushed to this CTA: [block][its dim tile][16 rows][8] fp32 partial outputs
    recv_ml = recv + (d / 8 + kMaxSplits) * kRows * 8 * 4;  // ... and [block][16 rows] (row max, row sum)
    bar = recv_ml + kMaxSplits * kRows * 8;
    bytes = bar + 16;
  }
};

__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
  const auto d = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }
__device__ __forceinline__ void grid_dependency_wait() { asm volatile("griddepcontrol.wait;\n" ::: "memory"); }
__device__ __forceinline__ void launch_dependents() { asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory"); }

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
// The same shared-memory offset in CTA `rank` of the cluster (a shared::cluster address).
__device__ __forceinline__ uint32_t cluster_addr(uint32_t local, int rank) {
  uint32_t remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(local), "r"(rank));
  return remote;
}
// Two floats into another CTA's shared memory; the write completes 8 bytes of its mbarrier's transaction count.
__device__ __forceinline__ void push2(uint32_t remote, float a, float b, uint32_t remote_bar) {
  asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.v2.f32 [%0], {%1, %2}, [%3];\n"
               ::"r"(remote), "f"(a), "f"(b), "r"(remote_bar) : "memory");
}
__device__ __forceinline__ void wait_parity0(uint32_t bar) {
  asm volatile(
      "{\n.reg .pred done;\nwait:\n"
      "mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 done, [%0], 0;\n"
      "@!done bra wait;\n}\n" ::"r"(bar) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  const auto a = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  const auto a = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
               "{%0,%1,%2,%3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Element offset of (row, 16-byte chunk) in a [rows, D] bf16 tile whose chunks are XOR-swizzled by row (D >= 64).
template <int D>
__device__ __forceinline__ int swizzled(int row, int chunk) {
  return row * D + ((chunk ^ (row & 7)) << 3);
}

// Rows [from, to) of a [n, D] tile from global rows base + r (rows >= limit zero-filled: no NaN from stale memory).
template <int D>
__device__ __forceinline__ void load_rows(__nv_bfloat16* tile, const __nv_bfloat16* src, int64_t ld, int from, int to,
                                          int limit) {
  constexpr int kChunks = D / 8;
  for (int idx = from * kChunks + threadIdx.x; idx < to * kChunks; idx += kThreads) {
    const int r = idx / kChunks, c = idx % kChunks;
    const bool in = r < limit;
    cp_async16(tile + swizzled<D>(r, c), in ? src + r * ld + c * 8 : src, in ? 16 : 0);
  }
}

template <int D>
__global__ void __launch_bounds__(kThreads) mqa_cluster_attention_kernel(MqaClusterProblem a, int kb) {
  extern __shared__ __align__(16) unsigned char smem[];
  cg::cluster_group cluster = cg::this_cluster();
  const Layout L(D, kb);
  auto* qs = reinterpret_cast<__nv_bfloat16*>(smem + L.q);
  auto* ks = reinterpret_cast<__nv_bfloat16*>(smem + L.k);
  auto* vs = reinterpret_cast<__nv_bfloat16*>(smem + L.v);
  auto* ss = reinterpret_cast<float*>(smem + L.s);
  auto* ps = reinterpret_cast<__nv_bfloat16*>(smem + L.p);
  auto* bias_s = reinterpret_cast<float*>(smem + L.bias);
  auto* m_s = reinterpret_cast<float*>(smem + L.ml);
  auto* l_s = m_s + kRows;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int key0 = blockIdx.x * kb, row0 = blockIdx.y * kRows;
  const int key_limit = min(kb, a.keys - key0);           // keys of this block
  const int pre = max(0, min(key_limit, a.static_keys - key0));  // of them, readable before the wait

  // The combine: block j pushes (st.async) the partial outputs of dim tile n to CTA n % splits, and every block's
  // row max and sum to all, each write completing bytes of the receiver's mbarrier; a CTA combines its dim tiles
  // once all have landed. No fence, no remote reads, no barrier at the end (a CTA leaves once it has all it needs).
  const int splits = int(cluster.num_blocks()), rank = int(cluster.block_rank());
  const int tiles_per_rank = (D / 8 + splits - 1) / splits;             // receive-buffer stride per block
  const int my_tiles = (D / 8 - rank + splits - 1) / splits;            // dim tiles rank, rank + splits, ...
  const uint32_t bar = smem_addr(smem + L.bar);
  if (threadIdx.x == 0) {
    const uint32_t bytes = uint32_t(splits) * (my_tiles * kRows * 8 * 4 + kRows * 8);
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(bar) : "memory");
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  // every mbarrier initialized before any block pushes (waited on just before the pushes)
  asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");

  const auto* kg = static_cast<const __nv_bfloat16*>(a.k) + int64_t(key0) * a.ldk;
  const auto* vg = static_cast<const __nv_bfloat16*>(a.v) + int64_t(key0) * a.ldv;
  load_rows<D>(ks, kg, a.ldk, 0, pre, key_limit);
  load_rows<D>(vs, vg, a.ldv, 0, pre, key_limit);
  cp_async_commit();
  grid_dependency_wait();  // q and the step's own keys belong to the kernels before
  launch_dependents();
  load_rows<D>(ks, kg, a.ldk, pre, kb, key_limit);
  load_rows<D>(vs, vg, a.ldv, pre, kb, key_limit);
  const auto* qg = static_cast<const __nv_bfloat16*>(a.q) + int64_t(row0) * a.ldq;
  load_rows<D>(qs, qg, a.ldq, 0, kRows, a.rows - row0);
  cp_async_commit();
  for (int j = threadIdx.x; j < kb; j += kThreads)
    bias_s[j] = j < key_limit ? __bfloat162float(static_cast<const __nv_bfloat16*>(a.bias)[key0 + j]) * kLog2e : -INFINITY;
  cp_async_wait_all();
  __syncthreads();

  // scores: warp w takes the 8-key tiles w, w + 4, ... (independent accumulators, interleaved so the MMAs
  // pipeline; a warp with fewer tiles repeats its last one and does not store it); q's A fragments stay in registers
  constexpr int kTilesPerWarp = kMaxKeyBlock / 8 / kWarps;
  const int key_tiles = kb / 8;
  uint32_t qa[D / 16][4];
#pragma unroll
  for (int kstep = 0; kstep < D / 16; ++kstep)
    ldmatrix_x4(qa[kstep], qs + swizzled<D>((lane & 7) + ((lane >> 3) & 1) * 8, 2 * kstep + (lane >> 4)));
  float s[kTilesPerWarp][4];
#pragma unroll
  for (int i = 0; i < kTilesPerWarp; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
  for (int kk = 0; kk < D / 32; ++kk) {  // ldmatrix x4: b0, b1 of k steps 2 kk and 2 kk + 1
#pragma unroll
    for (int i = 0; i < kTilesPerWarp; ++i) {
      const int nt = min(warp + i * kWarps, key_tiles - 1);
      uint32_t b[4];
      ldmatrix_x4(b, ks + swizzled<D>(nt * 8 + (lane & 7), 4 * kk + (lane >> 3)));
      mma_bf16(s[i], qa[2 * kk], b[0], b[1]);
      mma_bf16(s[i], qa[2 * kk + 1], b[2], b[3]);
    }
  }
#pragma unroll
  for (int i = 0; i < kTilesPerWarp; ++i) {
    const int nt = warp + i * kWarps;
    if (nt >= key_tiles) continue;
    const int col = nt * 8 + 2 * t;
    ss[g * (kb + 4) + col] = s[i][0] * a.qk_scale + bias_s[col];
    ss[g * (kb + 4) + col + 1] = s[i][1] * a.qk_scale + bias_s[col + 1];
    ss[(g + 8) * (kb + 4) + col] = s[i][2] * a.qk_scale + bias_s[col];
    ss[(g + 8) * (kb + 4) + col + 1] = s[i][3] * a.qk_scale + bias_s[col + 1];
  }
  __syncthreads();

  // the block's softmax: 8 lanes a row, all 16 rows at once (warp w: rows 4w .. 4w + 3)
  {
    static_assert(kRows == 4 * kWarps, "a warp's 32 lanes are 4 rows of 8");
    const int r = warp * 4 + (lane >> 3), part = lane & 7;
    float m = -1.0e30f;  // finite: a fully masked block contributes exactly 0
    for (int j = part; j < kb; j += 8) m = fmaxf(m, ss[r * (kb + 4) + j]);
#pragma unroll
    for (int o = 4; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    float l = 0.f;
    for (int j = part; j < kb; j += 8) {
      const float p = exp2f(ss[r * (kb + 4) + j] - m);
      l += p;
      ps[r * (kb + 8) + j] = __float2bfloat16(p);
    }
#pragma unroll
    for (int o = 4; o > 0; o >>= 1) l += __shfl_xor_sync(0xffffffffu, l, o);
    if (part == 0) {
      m_s[r] = m;
      l_s[r] = l;
    }
  }
  __syncthreads();

  // p v: warp w takes head dims [w D/4, (w + 1) D/4)
  constexpr int kTiles = D / 32;  // 8-dim tiles a warp
  float o[kTiles][4];
#pragma unroll
  for (int j = 0; j < kTiles; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
  const int dim0 = warp * (D / 4);
  for (int kk = 0; kk < kb / 16; ++kk) {
    uint32_t pa[4];
    ldmatrix_x4(pa, ps + ((lane & 7) + ((lane >> 3) & 1) * 8) * (kb + 8) + kk * 16 + (lane >> 4) * 8);
#pragma unroll
    for (int j = 0; j < kTiles; j += 2) {  // ldmatrix x4 trans: b0, b1 of dim tiles j and j + 1
      uint32_t b[4];
      ldmatrix_x4_trans(b, vs + swizzled<D>(kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8,
                                            (dim0 + j * 8) / 8 + (lane >> 4)));
      mma_bf16(o[j], pa, b[0], b[1]);
      mma_bf16(o[j + 1], pa, b[2], b[3]);
    }
  }
  asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory");
  const uint32_t recv = smem_addr(smem + L.recv), recv_ml = smem_addr(smem + L.recv_ml);
#pragma unroll
  for (int j = 0; j < kTiles; ++j) {
    const int tile = dim0 / 8 + j, dest = tile % splits;
    const uint32_t base = cluster_addr(recv + (((rank * tiles_per_rank + tile / splits) * kRows + g) * 8 + 2 * t) * 4,
                                       dest);
    const uint32_t dest_bar = cluster_addr(bar, dest);
    push2(base, o[j][0], o[j][1], dest_bar);
    push2(base + 8 * 8 * 4, o[j][2], o[j][3], dest_bar);  // row g + 8
  }
  if (threadIdx.x < kRows) {
    const int r = threadIdx.x;
    for (int dest = 0; dest < splits; ++dest)
      push2(cluster_addr(recv_ml + (rank * kRows + r) * 8, dest), m_s[r], l_s[r], cluster_addr(bar, dest));
  }
  wait_parity0(bar);

  // this CTA's dim tiles: out = sum_j exp2(m_j - max m) p v_j / sum_j exp2(m_j - max m) l_j, 4 dims an item
  const float* rv = reinterpret_cast<const float*>(smem + L.recv);
  const float2* rml = reinterpret_cast<const float2*>(smem + L.recv_ml);
  for (int i = threadIdx.x; i < my_tiles * kRows * 2; i += kThreads) {
    const int half = i & 1, r = (i >> 1) % kRows, local = (i >> 1) / kRows;
    if (row0 + r >= a.rows) continue;
    float mx = -1.0e30f;
    for (int j = 0; j < splits; ++j) mx = fmaxf(mx, rml[j * kRows + r].x);
    float total = 0.f;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int j = 0; j < splits; ++j) {
      const float w = exp2f(rml[j * kRows + r].x - mx);
      total += w * rml[j * kRows + r].y;
      const float4 x = *reinterpret_cast<const float4*>(rv + ((j * tiles_per_rank + local) * kRows + r) * 8 + 4 * half);
      acc.x += w * x.x;
      acc.y += w * x.y;
      acc.z += w * x.z;
      acc.w += w * x.w;
    }
    const float inv = total > 0.f ? 1.f / total : 0.f;
    __nv_bfloat162 lo = __floats2bfloat162_rn(acc.x * inv, acc.y * inv);
    __nv_bfloat162 hi = __floats2bfloat162_rn(acc.z * inv, acc.w * inv);
    uint2 packed;
    packed.x = *reinterpret_cast<uint32_t*>(&lo);
    packed.y = *reinterpret_cast<uint32_t*>(&hi);
    const int col = (local * splits + rank) * 8 + 4 * half;
    *reinterpret_cast<uint2*>(static_cast<__nv_bfloat16*>(a.out) + int64_t(row0 + r) * a.ldo + col) = packed;
  }
}

// Keys a CTA takes (a multiple of 16, at most kMaxKeyBlock) when the keys are cut into at most max_splits blocks.
int mqa_cluster_key_block(int keys, int max_splits) {
  if (max_splits < 1 || max_splits > kMaxSplits)
    throw std::runtime_error("mqa_cluster_attention: max_splits must be 1.." + std::to_string(kMaxSplits) +
                             ", got " + std::to_string(max_splits));
  const int per = (keys + max_splits - 1) / max_splits;
  const int kb = ((per + 15) / 16) * 16;
  if (keys < 1 || kb > kMaxKeyBlock)
    throw std::runtime_error("mqa_cluster_attention: " + std::to_string(keys) + " keys do not fit " +
                             std::to_string(max_splits) + " blocks of at most " + std::to_string(kMaxKeyBlock));
  return kb;
}

// The kernel with its attributes set (once): non-portable clusters allowed, the largest key block's shared memory.
template <int D>
auto prepared_kernel() {
  auto kernel = mqa_cluster_attention_kernel<D>;
  static const cudaError_t attr = [&] {
    const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
    return e != cudaSuccess ? e : cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                       Layout(D, kMaxKeyBlock).bytes);
  }();
  if (attr != cudaSuccess)
    throw std::runtime_error(std::string("mqa_cluster_attention: cannot allow non-portable clusters and ") +
                             std::to_string(Layout(D, kMaxKeyBlock).bytes) +
                             " bytes of shared memory: " + cudaGetErrorString(attr));
  return kernel;
}

// The largest cluster this GPU co-schedules for the kernel (at most kMaxSplits): 16 on an H100; a GPU without
// non-portable clusters gives 8 (or less), and max_splits 0 then stays within it instead of failing to launch.
template <int D>
int schedulable_splits() {
  static const int splits = [] {
    cudaLaunchConfig_t config = {};
    config.gridDim = dim3(kMaxSplits);
    config.blockDim = dim3(kThreads);
    config.dynamicSmemBytes = Layout(D, kMaxKeyBlock).bytes;
    int size = 0;
    if (auto err = cudaOccupancyMaxPotentialClusterSize(&size, prepared_kernel<D>(), &config); err != cudaSuccess)
      throw std::runtime_error(std::string("mqa_cluster_attention: cannot query the cluster size: ") +
                               cudaGetErrorString(err));
    if (size < 1) throw std::runtime_error("mqa_cluster_attention: this GPU schedules no cluster of this kernel");
    return size < kMaxSplits ? size : kMaxSplits;
  }();
  return splits;
}

template <int D>
void run(const MqaClusterProblem& p, cudaStream_t stream) {
  auto kernel = prepared_kernel<D>();
  const int kb = mqa_cluster_key_block(p.keys, p.max_splits > 0 ? p.max_splits : schedulable_splits<D>());
  const int splits = (p.keys + kb - 1) / kb;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(unsigned(splits), unsigned((p.rows + kRows - 1) / kRows));
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = Layout(D, kb).bytes;
  config.stream = stream;
  cudaLaunchAttribute attribute[3];
  attribute[0].id = cudaLaunchAttributeClusterDimension;
  attribute[0].val.clusterDim.x = unsigned(splits);
  attribute[0].val.clusterDim.y = 1;
  attribute[0].val.clusterDim.z = 1;
  attribute[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[1].val.programmaticStreamSerializationAllowed = 1;
  attribute[2].id = cudaLaunchAttributePreferredSharedMemoryCarveout;
  attribute[2].val.sharedMemCarveout = unsigned(chain_carveout());
  config.attrs = attribute;
  config.numAttrs = p.dependent ? (chain_carveout() >= 0 ? 3 : 2) : 1;
  if (auto err = cudaLaunchKernelEx(&config, kernel, p, kb); err != cudaSuccess)
    throw std::runtime_error(std::string("mqa_cluster_attention: launch of ") + std::to_string(splits) +
                             "-CTA clusters failed: " + cudaGetErrorString(err) + " (max_splits 0 takes the largest "
                             "cluster this GPU schedules)");
}

}  // namespace

void mqa_cluster_attention_run(const MqaClusterProblem& p, cudaStream_t stream) {
  if (p.rows < 1 || p.static_keys < 0 || p.static_keys > p.keys || p.max_splits < 0)
    throw std::runtime_error("mqa_cluster_attention: needs rows >= 1, 0 <= static_keys <= keys and max_splits >= 0 "
                             "(got rows=" + std::to_string(p.rows) + " keys=" + std::to_string(p.keys) +
                             " static_keys=" + std::to_string(p.static_keys) +
                             " max_splits=" + std::to_string(p.max_splits) + ")");
  switch (p.head_dim) {
    case 64: return run<64>(p, stream);
    case 128: return run<128>(p, stream);
    case 256: return run<256>(p, stream);
    default:
      throw std::runtime_error("mqa_cluster_attention: head dim must be 64, 128 or 256, got " +
                               std::to_string(p.head_dim));
  }
}

}  // namespace triforce
