// NVFP4 x NVFP4 -> bf16 block-scaled GEMM for Blackwell (sm_100a, sm_110a), derived from CUTLASS example 72a.
//
// out[M, N] = alpha * dequant(a)[M, K] @ dequant(b)[N, K]^T. Operands are E2M1 codes, two per byte, K-major; block
// scales are E4M3 per 16 elements along K in CUTLASS's swizzled SM100 layout; alpha (= 1 / (g_a * g_b)) is read
// from device memory so a captured CUDA graph picks up new global scales. Cluster 2x1x1 (not 72a's 2x4x1): it keeps
// the 2-SM MMA and still schedules on Thor's 20 SMs.
#include <stdexcept>
#include <string>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/detail/sm100_blockscaled_layout.hpp"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/util/packed_stride.hpp"

#include "triforce_gemm.h"

namespace triforce {
namespace {
using namespace cute;

using ElementA           = cutlass::nv_float4_t<cutlass::float_e2m1_t>;  // E2M1 data + E4M3 scale per 16
using ElementB           = cutlass::nv_float4_t<cutlass::float_e2m1_t>;
using LayoutA            = cutlass::layout::RowMajor;     // a [M, K], K-major
using LayoutB            = cutlass::layout::ColumnMajor;  // b [N, K], K-major
using ElementOut         = cutlass::bfloat16_t;
using LayoutOut          = cutlass::layout::RowMajor;
using ElementAccumulator = float;
constexpr int AlignmentA   = 32;
constexpr int AlignmentB   = 32;
constexpr int AlignmentOut = 128 / cutlass::sizeof_bits<ElementOut>::value;

using ArchTag       = cutlass::arch::Sm100;
using OperatorClass = cutlass::arch::OpClassBlockScaledTensorOp;
using MmaTileShape  = Shape<_256, _128, _256>;  // 2-SM MMA: 128 rows of M per SM
using ClusterShape  = Shape<_2, _1, _1>;

using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
    ArchTag, OperatorClass, MmaTileShape, ClusterShape, cutlass::epilogue::collective::EpilogueTileAuto,
    ElementAccumulator, ElementAccumulator,
    void, LayoutOut, AlignmentOut,  // no C operand: out = alpha * acc
    ElementOut, LayoutOut, AlignmentOut, cutlass::epilogue::collective::EpilogueScheduleAuto>::CollectiveOp;

using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
    ArchTag, OperatorClass, ElementA, LayoutA, AlignmentA, ElementB, LayoutB, AlignmentB, ElementAccumulator,
    MmaTileShape, ClusterShape,
    cutlass::gemm::collective::StageCountAutoCarveout<
        static_cast<int>(sizeof(typename CollectiveEpilogue::SharedStorage))>,
    cutlass::gemm::collective::KernelScheduleAuto>::CollectiveOp;

using GemmKernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, CollectiveMainloop,
                                                        CollectiveEpilogue, void>;
using Gemm          = cutlass::gemm::device::GemmUniversalAdapter<GemmKernel>;
using StrideA       = typename GemmKernel::StrideA;
using StrideB       = typename GemmKernel::StrideB;
using StrideOut     = typename GemmKernel::StrideD;
using BlkScaledCfg  = typename CollectiveMainloop::Sm1xxBlkScaledConfig;
using ElementData   = typename ElementA::DataType;
using ElementSF     = typename ElementA::ScaleFactorType;

typename Gemm::Arguments arguments(const Nvfp4Problem& p) {
  auto problem = make_shape(p.m, p.n, p.k, 1);
  auto stride_out = cutlass::make_cute_packed_stride(StrideOut{}, make_shape(p.m, p.n, 1));
  typename Gemm::Arguments args{
      cutlass::gemm::GemmUniversalMode::kGemm,
      {p.m, p.n, p.k, 1},
      {static_cast<const ElementData*>(p.a), cutlass::make_cute_packed_stride(StrideA{}, make_shape(p.m, p.k, 1)),
       static_cast<const ElementData*>(p.b), cutlass::make_cute_packed_stride(StrideB{}, make_shape(p.n, p.k, 1)),
       static_cast<const ElementSF*>(p.a_sf), BlkScaledCfg::tile_atom_to_shape_SFA(problem),
       static_cast<const ElementSF*>(p.b_sf), BlkScaledCfg::tile_atom_to_shape_SFB(problem)},
      {{}, nullptr, stride_out, static_cast<ElementOut*>(p.out), stride_out}};
  args.epilogue.thread.alpha_ptr = p.alpha;  // alpha lives on the device
  args.epilogue.thread.beta      = 0.0f;
  args.hw_info.sm_count          = p.sm_count;
  return args;
}
}  // namespace

size_t nvfp4_sm100_workspace(const Nvfp4Problem& p) { return Gemm::get_workspace_size(arguments(p)); }

void nvfp4_sm100_run(const Nvfp4Problem& p, void* ws, size_t ws_bytes, cudaStream_t stream) {
  const std::string name = "nvfp4_gemm (sm100a/sm110a)";
  auto args = arguments(p);
  auto fail = [&](const char* what, cutlass::Status st) {
    throw std::runtime_error(name + ": " + what + " failed (" + cutlassGetStatusString(st) + ") for M=" +
                             std::to_string(p.m) + " N=" + std::to_string(p.n) + " K=" + std::to_string(p.k) +
                             "; N must be a multiple of 8 and K of 128");
  };
  size_t need = Gemm::get_workspace_size(args);
  if (ws_bytes < need)
    throw std::runtime_error(name + ": workspace has " + std::to_string(ws_bytes) + " bytes, needs " +
                             std::to_string(need) + "; size it with nvfp4_workspace_size(M, N, K)");
  Gemm gemm;
  if (auto st = gemm.can_implement(args); st != cutlass::Status::kSuccess) fail("can_implement", st);
  if (auto st = gemm.initialize(args, ws, stream); st != cutlass::Status::kSuccess) fail("initialize", st);
  if (auto st = gemm.run(stream); st != cutlass::Status::kSuccess) fail("run", st);
}
}  // namespace triforce
