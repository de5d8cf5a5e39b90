// bf16 GEMM with a fused bias (+ GELU) epilogue for Hopper (sm_90a): SigLIP's linear layers at M = 256 per view.
//
// out[M, N] (bf16, row-major) = act(x[M, K] @ W[N, K]^T + bias[N]); x and W K-major, so no transposes. At M = 512
// a 128 x 128 tile grid has 36-108 tiles for 132 SMs (fc2 and o: 36), which is why cuBLAS reaches 240-450 TFLOP/s
// there (bench/results/vision_ops-*-s5.json): the stream-K scheduler splits the K loop of those few tiles over
// every SM. TMA loads, warp-specialized cooperative mainloop, the bias and GELU (tanh form, SigLIP's) in the TMA
// epilogue's fusion callbacks.
#pragma once

#include <stdexcept>
#include <string>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/operations.hpp"
#include "cutlass/epilogue/thread/activation.h"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/util/packed_stride.hpp"

#include "triforce_gemm.h"

namespace triforce::sm90 {
using namespace cute;

template <int TileN, template <class> class Act>
struct DenseSm90 {
  using Element            = cutlass::bfloat16_t;
  using ElementAccumulator = float;
  using LayoutX            = cutlass::layout::RowMajor;     // A = x [M, K]
  using LayoutW            = cutlass::layout::ColumnMajor;  // B = W^T [K, N] column-major == W [N, K] row-major
  using LayoutOut          = cutlass::layout::RowMajor;
  static constexpr int Alignment = 128 / cutlass::sizeof_bits<Element>::value;

  using TileShape      = Shape<_128, Int<TileN>, _64>;
  using ClusterShape   = Shape<_1, _1, _1>;
  using KernelSchedule = cutlass::gemm::KernelTmaWarpSpecializedCooperative;
  using EpiSchedule    = cutlass::epilogue::TmaWarpSpecializedCooperative;
  using TileScheduler  = cutlass::gemm::StreamKScheduler;
  using Fusion = cutlass::epilogue::fusion::LinCombPerColBiasEltAct<Act, Element, ElementAccumulator, Element>;

  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, ElementAccumulator, ElementAccumulator,
      void, LayoutOut, Alignment,  // no C operand
      Element, LayoutOut, Alignment, EpiSchedule, Fusion>::CollectiveOp;

  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Element, LayoutX, Alignment, Element, LayoutW, Alignment,
      ElementAccumulator, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<
          static_cast<int>(sizeof(typename CollectiveEpilogue::SharedStorage))>,
      KernelSchedule>::CollectiveOp;

  using GemmKernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, CollectiveMainloop,
                                                          CollectiveEpilogue, TileScheduler>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<GemmKernel>;

  using Decomposition = cutlass::gemm::kernel::detail::DecompositionMode;
  using Reduction     = cutlass::gemm::kernel::detail::ReductionMode;

  static Decomposition decomposition(W4A16Decomposition mode) {
    switch (mode) {
      case W4A16Decomposition::kDataParallel: return Decomposition::DataParallel;
      case W4A16Decomposition::kSplitK: return Decomposition::SplitK;
      case W4A16Decomposition::kStreamK: return Decomposition::StreamK;
      default: return Decomposition::Heuristic;
    }
  }

  static typename Gemm::Arguments arguments(const DenseProblem& p) {
    auto stride_x   = cutlass::make_cute_packed_stride(typename GemmKernel::StrideA{}, make_shape(p.m, p.k, 1));
    auto stride_w   = cutlass::make_cute_packed_stride(typename GemmKernel::StrideB{}, make_shape(p.n, p.k, 1));
    auto stride_out = cutlass::make_cute_packed_stride(typename GemmKernel::StrideD{}, make_shape(p.m, p.n, 1));
    typename Gemm::Arguments args{
        cutlass::gemm::GemmUniversalMode::kGemm,
        {p.m, p.n, p.k, 1},
        {static_cast<const Element*>(p.x), stride_x, static_cast<const Element*>(p.weight), stride_w},
        {{}, nullptr, stride_out, static_cast<Element*>(p.out), stride_out}};
    auto& fusion    = args.epilogue.thread;
    fusion.alpha    = 1.0f;
    fusion.beta     = 0.0f;
    fusion.bias_ptr = static_cast<const Element*>(p.bias);
    args.hw_info.sm_count = p.sm_count;
    args.scheduler.decomposition_mode = decomposition(p.schedule.mode);
    args.scheduler.splits             = p.schedule.splits;
    args.scheduler.reduction_mode     = p.schedule.nondeterministic ? Reduction::Nondeterministic
                                                                     : Reduction::Deterministic;
    return args;
  }

  static size_t workspace(const DenseProblem& p) { return Gemm::get_workspace_size(arguments(p)); }

  static void run(const DenseProblem& p, void* ws, size_t ws_bytes, cudaStream_t stream, const char* name) {
    auto args = arguments(p);
    Gemm gemm;
    auto fail = [&](const char* what, cutlass::Status st) {
      throw std::runtime_error(std::string(name) + ": " + what + " failed (" + cutlassGetStatusString(st) +
                               ") for M=" + std::to_string(p.m) + " N=" + std::to_string(p.n) + " K=" +
                               std::to_string(p.k) + "; N and K must be multiples of 8");
    };
    size_t need = Gemm::get_workspace_size(args);
    if (ws_bytes < need)
      throw std::runtime_error(std::string(name) + ": workspace has " + std::to_string(ws_bytes) + " bytes, needs " +
                               std::to_string(need) + "; size it with dense_workspace_size(...)");
    if (auto st = gemm.can_implement(args); st != cutlass::Status::kSuccess) fail("can_implement", st);
    if (auto st = gemm.initialize(args, ws, stream); st != cutlass::Status::kSuccess) fail("initialize", st);
    if (auto st = gemm.run(stream); st != cutlass::Status::kSuccess) fail("run", st);
  }
};

// One translation unit per epilogue; each holds both tiles (TileN 128 and 64).
template <template <class> class Act>
size_t dense_workspace(const DenseProblem& p) {
  return p.tile_n == 64 ? DenseSm90<64, Act>::workspace(p) : DenseSm90<128, Act>::workspace(p);
}
template <template <class> class Act>
void dense_run(const DenseProblem& p, void* ws, size_t bytes, cudaStream_t stream, const char* name) {
  if (p.tile_n == 64) return DenseSm90<64, Act>::run(p, ws, bytes, stream, name);
  DenseSm90<128, Act>::run(p, ws, bytes, stream, name);
}

}  // namespace triforce::sm90
