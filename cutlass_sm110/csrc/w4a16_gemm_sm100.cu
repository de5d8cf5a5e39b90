// W4A16 GEMM for Blackwell (sm_100a, sm_110a: tcgen05), derived from CUTLASS example 86 (mixed-input UMMA).
//
// As on Hopper the int4 weight is the transformed operand A' and the problem is swapped: out^T[N, M] = W[N, K] · x^T,
// so the token count M is N' and the output is stored column-major (= out row-major [M, N]). The int4 weight is the
// canonical K-major layout (no shuffle on this path); scales are [K/128, N], N contiguous.
// One SM per tile (Thor has 20 SMs: a 128-row weight tile spreads the Gemma MLP shapes over all of them).
#include <stdexcept>
#include <string>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/detail/sm100_mixed_dtype_blockwise_layout.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/util/packed_stride.hpp"

#include "triforce_gemm.h"

namespace triforce {
namespace {
using namespace cute;

using MmaType            = cutlass::bfloat16_t;
using ElementW           = cutlass::int4b_t;
using ElementScale       = cutlass::bfloat16_t;
using ElementOut         = cutlass::bfloat16_t;
using ElementAccumulator = float;

using LayoutW   = cutlass::layout::RowMajor;     // A' = W [N, K], K-major
using LayoutX   = cutlass::layout::ColumnMajor;  // B' = x [M, K] row-major
using LayoutOut = cutlass::layout::ColumnMajor;  // D' = out^T, i.e. out [M, N] row-major
constexpr int AlignmentW   = 128 / cutlass::sizeof_bits<ElementW>::value;
constexpr int AlignmentX   = 128 / cutlass::sizeof_bits<MmaType>::value;
constexpr int AlignmentOut = 128 / cutlass::sizeof_bits<ElementOut>::value;

using ArchTag          = cutlass::arch::Sm100;
using MmaTileShape     = Shape<_128, _64, _128>;  // (weight rows, tokens, K)
using ClusterShape     = Shape<_1, _1, _1>;
using MainloopSchedule = cutlass::gemm::KernelTmaWarpSpecialized1SmMixedInputSm100;
using EpilogueSchedule = cutlass::epilogue::TmaWarpSpecialized1Sm;

constexpr int GroupSize = 128;
using ScaleConfig = cutlass::detail::Sm100MixedInputBlockwiseScaleConfig</*granularity N*/ 1, GroupSize>;
using LayoutScale = decltype(ScaleConfig::deduce_layout_scale());

using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
    ArchTag, cutlass::arch::OpClassTensorOp, MmaTileShape, ClusterShape,
    cutlass::epilogue::collective::EpilogueTileAuto, ElementAccumulator, ElementAccumulator,
    void, LayoutOut, AlignmentOut,  // no C operand
    ElementOut, LayoutOut, AlignmentOut, EpilogueSchedule>::CollectiveOp;

using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
    ArchTag, cutlass::arch::OpClassTensorOp,
    cute::tuple<ElementW, ElementScale>, cute::tuple<LayoutW, LayoutScale>, AlignmentW,
    MmaType, LayoutX, AlignmentX, ElementAccumulator, MmaTileShape, ClusterShape,
    cutlass::gemm::collective::StageCountAutoCarveout<
        static_cast<int>(sizeof(typename CollectiveEpilogue::SharedStorage))>,
    MainloopSchedule>::CollectiveOp;

using GemmKernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, CollectiveMainloop,
                                                        CollectiveEpilogue>;
using Gemm      = cutlass::gemm::device::GemmUniversalAdapter<GemmKernel>;
using StrideW   = cutlass::detail::TagToStrideA_t<LayoutW>;
using StrideX   = cutlass::detail::TagToStrideB_t<LayoutX>;
using StrideOut = typename GemmKernel::StrideD;

typename Gemm::Arguments arguments(const W4A16Problem& p) {
  auto stride_w   = cutlass::make_cute_packed_stride(StrideW{}, make_shape(p.n, p.k, 1));
  auto stride_x   = cutlass::make_cute_packed_stride(StrideX{}, make_shape(p.m, p.k, 1));
  auto stride_out = cutlass::make_cute_packed_stride(StrideOut{}, make_shape(p.n, p.m, 1));
  auto layout_s   = ScaleConfig::tile_atom_to_shape_scale(make_shape(p.n, p.k, 1));
  typename Gemm::Arguments args{
      cutlass::gemm::GemmUniversalMode::kGemm,
      {p.n, p.m, p.k, 1},
      {static_cast<const ElementW*>(p.weight), stride_w, static_cast<const MmaType*>(p.x), stride_x,
       static_cast<const ElementScale*>(p.scales), layout_s},
      {{1.0f, 0.0f}, nullptr, stride_out, static_cast<ElementOut*>(p.out), stride_out}};
  args.hw_info.sm_count = p.sm_count;
  return args;
}
}  // namespace

size_t w4a16_sm100_workspace(const W4A16Problem& p) { return Gemm::get_workspace_size(arguments(p)); }

void w4a16_sm100_run(const W4A16Problem& p, void* ws, size_t ws_bytes, cudaStream_t stream) {
  const std::string name = "w4a16_gemm (sm100a/sm110a)";
  auto args = arguments(p);
  auto fail = [&](const char* what, cutlass::Status st) {
    throw std::runtime_error(name + ": " + what + " failed (" + cutlassGetStatusString(st) + ") for M=" +
                             std::to_string(p.m) + " N=" + std::to_string(p.n) + " K=" + std::to_string(p.k) +
                             "; N must be a multiple of 16 and K of 128");
  };
  size_t need = Gemm::get_workspace_size(args);
  if (ws_bytes < need)
    throw std::runtime_error(name + ": workspace has " + std::to_string(ws_bytes) + " bytes, needs " +
                             std::to_string(need) + "; size it with w4a16_workspace_size(M, N, K)");
  Gemm gemm;
  if (auto st = gemm.can_implement(args); st != cutlass::Status::kSuccess) fail("can_implement", st);
  if (auto st = gemm.initialize(args, ws, stream); st != cutlass::Status::kSuccess) fail("initialize", st);
  if (auto st = gemm.run(stream); st != cutlass::Status::kSuccess) fail("run", st);
}
}  // namespace triforce
