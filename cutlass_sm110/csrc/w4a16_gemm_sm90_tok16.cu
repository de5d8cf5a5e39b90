// W4A16 GEMM, Hopper sm_90a, token tile 16 (the N of the swapped problem out^T = W x^T): see w4a16_gemm_sm90.cuh.
#include "w4a16_gemm_sm90.cuh"

namespace triforce {
using W4A16Sm90Tok16 = sm90::W4A16Sm90<16>;  // tile 128 (weight rows) x 16 (tokens) x 64 (K), cluster 1x1x1, stream-K

size_t w4a16_sm90_tok16_workspace(const W4A16Problem& p) { return W4A16Sm90Tok16::workspace(p); }

void w4a16_sm90_tok16_run(const W4A16Problem& p, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  W4A16Sm90Tok16::run(p, workspace, workspace_bytes, stream, "w4a16_gemm (sm90a, token tile 16)");
}
}  // namespace triforce
