// One tensor-core MMA through CuTe's arch atoms: wgmma (HGMMA) for hopper, tcgen05 (UTCHMMA) for blackwell.
// Compiled for a plain arch (sm_90, sm_100) the atoms turn into CuTe's stub (printf + trap): the SASS gate's test.
#include <cstdint>
#include <cute/arch/mma_sm90_gmma.hpp>
#if defined(TRIFORCE_FAMILY_BLACKWELL)
#include <cute/arch/mma_sm100_umma.hpp>
#endif

__global__ void probe_gemm_kernel(const uint64_t* descs, float* out) {
#if defined(TRIFORCE_FAMILY_BLACKWELL)
  using Mma = cute::SM100_MMA_F16BF16_SS<cute::bfloat16_t, cute::bfloat16_t, float, 128, 64,
                                         cute::UMMA::Major::K, cute::UMMA::Major::K>;
  Mma::fma(descs[0], descs[1], static_cast<uint32_t>(descs[2]), 1u, descs[3]);
  out[threadIdx.x] = 0.f;
#else
  using Mma = cute::SM90::GMMA::MMA_64x8x16_F32BF16BF16_SS<cute::SM90::GMMA::Major::K, cute::SM90::GMMA::Major::K>;
  float d0 = 0.f, d1 = 0.f, d2 = 0.f, d3 = 0.f;
  Mma::fma(descs[0], descs[1], d0, d1, d2, d3);
  out[threadIdx.x] = d0 + d1 + d2 + d3;
#endif
}

__global__ void probe_scale_kernel(float* x, float s) { x[threadIdx.x] *= s; }
