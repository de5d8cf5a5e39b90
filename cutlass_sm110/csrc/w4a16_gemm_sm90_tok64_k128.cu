// W4A16 GEMM, Hopper sm_90a, token tile 64 with K tiles of 128 (one scale group): see w4a16_gemm_sm90.cuh.
#include "w4a16_gemm_sm90.cuh"

namespace triforce {
using W4A16Sm90Tok64K128 = sm90::W4A16Sm90<64, 128>;  // tile 128 (weight rows) x 64 (tokens) x 128 (K), stream-K

size_t w4a16_sm90_tok64_k128_workspace(const W4A16Problem& p) { return W4A16Sm90Tok64K128::workspace(p); }

void w4a16_sm90_tok64_k128_run(const W4A16Problem& p, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  W4A16Sm90Tok64K128::run(p, workspace, workspace_bytes, stream, "w4a16_gemm (sm90a, token tile 64, K tile 128)");
}
}  // namespace triforce
