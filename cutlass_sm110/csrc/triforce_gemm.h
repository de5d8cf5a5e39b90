// Host entry points of the CUTLASS GEMM translation units. Plain C++ (no torch headers) so the CUTLASS TUs compile
// without torch; bindings.cpp checks the tensors and calls these with raw pointers on torch's current stream.
// Each function throws std::runtime_error with a one-line message when CUTLASS refuses the problem.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cuda_runtime_api.h>

namespace triforce {

// W4A16: out[M, N] (bf16, row-major) = x[M, K] (bf16) @ dequant(W)^T, W int4 [N, K] in the family's packed layout,
// scales bf16 [K/128, N] (N contiguous). `sm_count` sizes the persistent/stream-K grid (and so the workspace).
// How the output tiles are spread over the SMs (Hopper's stream-K scheduler; Blackwell takes only kHeuristic).
// At decode-like M a weight-bound problem has fewer output tiles than SMs, so K must be split to use them all.
enum class W4A16Decomposition : int { kHeuristic = 0, kDataParallel = 1, kSplitK = 2, kStreamK = 3 };
struct W4A16Schedule {
  W4A16Decomposition mode = W4A16Decomposition::kHeuristic;
  int splits = 1;                 // split-K only
  bool nondeterministic = false;  // stream-K/split-K partial sums reduced in arrival order (faster, not bitwise stable)
};

struct W4A16Problem {
  const void* x;
  const void* weight;
  const void* scales;
  void* out;
  int m, n, k;
  int sm_count;
  W4A16Schedule schedule;
};

// Few-row W4A16 (w4a16_skinny.cu, every family): out[M, N] (fp32, row stride ldo) += [gate ⊙] x[M, K] @
// dequant(W)^T for M <= 64, W in the MMA-fragment layout of formats.pack_int4_fragments ([N/16][K/64][512 bytes]),
// scales [N/16][K/128][16] bf16. splits: CTAs along K (0: fill the resident CTA slots once); tiles_per_warp: 16-row
// tiles per warp (1 or 2); dependent: programmatic dependent launch (waits on the GPU for the kernel before).
// With act instead of out: gelu_tanh(gate) * up of gate/up rows interleaved in 8-row blocks, each CTA all of K;
// stages: its cp.async pipeline depth (0: the default 4, or 8).
struct W4A16SkinnyProblem {
  const void* x;
  const void* weight;
  const void* scales;
  const float* gate;  // [N] or null
  float* out;         // fp32 [M, N] added to; null with act
  void* act;          // GeGLU (weights gate/up interleaved, formats.interleave_gate_up): bf16 [M, N/2] written
  int m, n, k;
  int64_t ldx, ldo;   // ldo: of out, or of act
  int splits;
  int tiles_per_warp;
  bool dependent;
  int sm_count;
  int stages = 0;     // GeGLU form only
  int depth = 0;      // > 0: the register-streamed add form (M <= 64) with this many groups in flight a warp
  int cta_warps = 0;  // its warps a CTA (0: 8)
};
// 16-row tiles a warp when not asked: the pipelined form by M, the register-streamed form (depth > 0) one
int w4a16_skinny_default_tiles_per_warp(int m, int depth);
// The preferred shared-memory carveout (percent; -1: the driver's choice) of the wheel's later dependent launches
// (the few-row W4A16 kernels and mqa_cluster_attention: one split for the whole denoise chain).
void set_chain_carveout(int percent);
int chain_carveout();
void w4a16_skinny_run(const W4A16SkinnyProblem& p, cudaStream_t stream);

// Split-KV attention of few query rows over one kv head in one launch (mqa_cluster_attention.cu, every family):
// out[rows, D] = softmax(q k^T / sqrt(D) + bias) v, q [rows, D], k/v [keys, D], bias [keys] (bf16, 0 or -inf), the
// key blocks of 16 rows being the CTAs of one cluster (at most max_splits <= 16, 0: the largest cluster the GPU
// schedules; blocks of <= 128 keys). Keys below
// static_keys are not written by the kernels before it and are read before griddepcontrol.wait.
struct MqaClusterProblem {
  const void* q;
  const void* k;
  const void* v;
  const void* bias;
  void* out;
  int rows, keys, head_dim, static_keys, max_splits;
  int64_t ldq, ldk, ldv, ldo;
  float qk_scale;  // softmax scale * log2 e
  bool dependent;
};
void mqa_cluster_attention_run(const MqaClusterProblem& p, cudaStream_t stream);

// cuBLASLt GEMM with a chosen algorithm (lt_matmul.cpp, every family): out[M, N] (row-major) = epilogue(scale_x *
// scale_w * x[M, K] @ w[N, K]^T + bias). x and w both bf16 or both E4M3 (then scale_x / scale_w are device
// scalars); out bf16, or E4M3 for E4M3 inputs (saturated). The algorithm is cuBLASLt's opaque 64-byte struct from
// lt_matmul_algos for the same problem (pointers declared 16-byte aligned). fast_accum: FP8 accumulation without
// the periodic promotion to fp32 (Hopper).
struct LtProblem {
  const void* x;
  const void* w;
  void* out;
  const float* scale_x;  // E4M3 inputs only
  const float* scale_w;
  const void* bias;      // bf16 [N] or null
  int m, n, k;
  bool e4m3_in, e4m3_out, gelu, fast_accum;
};
constexpr int kLtAlgoBytes = 64;
constexpr int kLtAlgoFields = 6;  // workspace bytes, algo id, tile id, split-K count, stages id, cluster shape id
// cuBLASLt's heuristic candidates for p (at most max_algos, each needing <= max_workspace bytes): their algorithm
// structs into algos [n][kLtAlgoBytes] and their fields into info [n][kLtAlgoFields]; returns n.
int lt_matmul_algos(const LtProblem& p, int max_algos, size_t max_workspace, uint8_t* algos, int64_t* info);
void lt_matmul_run(const LtProblem& p, const uint8_t* algo, void* workspace, size_t workspace_bytes,
                   cudaStream_t stream);

#if defined(TRIFORCE_FAMILY_HOPPER)
// One tile configuration per translation unit: the token tile (N of the swapped problem) is 16, 64 or 128.
size_t w4a16_sm90_tok16_workspace(const W4A16Problem& p);
void w4a16_sm90_tok16_run(const W4A16Problem& p, void* workspace, size_t workspace_bytes, cudaStream_t stream);
size_t w4a16_sm90_tok64_workspace(const W4A16Problem& p);
void w4a16_sm90_tok64_run(const W4A16Problem& p, void* workspace, size_t workspace_bytes, cudaStream_t stream);
size_t w4a16_sm90_tok128_workspace(const W4A16Problem& p);
void w4a16_sm90_tok128_run(const W4A16Problem& p, void* workspace, size_t workspace_bytes, cudaStream_t stream);
// Byte offset map of the Hopper shuffled int4 layout: offsets[n * K + k] = element index of (n, k) in the packed weight.
void w4a16_sm90_reorder_offsets(int64_t* offsets, int n, int k, cudaStream_t stream);
#endif

#if defined(TRIFORCE_FAMILY_BLACKWELL)
size_t w4a16_sm100_workspace(const W4A16Problem& p);
void w4a16_sm100_run(const W4A16Problem& p, void* workspace, size_t workspace_bytes, cudaStream_t stream);

// NVFP4: out[M, N] (bf16) = alpha * dequant(a)[M, K] @ dequant(b)[N, K]^T; scale factors in CUTLASS's swizzled layout.
struct Nvfp4Problem {
  const void* a;
  const void* a_sf;
  const void* b;
  const void* b_sf;
  const float* alpha;  // device pointer: alpha stays on the GPU (CUDA-graph safe)
  void* out;
  int m, n, k;
  int sm_count;
};
size_t nvfp4_sm100_workspace(const Nvfp4Problem& p);
void nvfp4_sm100_run(const Nvfp4Problem& p, void* workspace, size_t workspace_bytes, cudaStream_t stream);
#endif

}  // namespace triforce
