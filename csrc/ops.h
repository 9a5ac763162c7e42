// ATen-level fused CPU inference ops (see mednext_fast/ops.py for the reference semantics).
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace mednext_fast {

// Depthwise conv3d (stride 1/2, or stride-2 transposed) with padding k/2, plus per-(n, c) fp32 sum and
// sum of squares of the output. x: (N, C, D, H, W) fp32 in any layout; weight (C, 1, k, k, k); bias (C)
// or none. Returns y (channels_last_3d), s1, s2 (N, C). With a plane range only output D-planes
// [plane_begin, plane_end) are computed: y is (N, C, plane_end - plane_begin, H', W') and s1, s2 sum
// over those planes (plane_end -1: to the last plane). out: a channels_last_3d buffer of y's shape to
// write y into instead of a new tensor (it must not overlap x). stats_only: only s1, s2 (y is returned
// undefined; no output memory is written).
std::tuple<at::Tensor, at::Tensor, at::Tensor> dwconv_stats(const at::Tensor& x, const at::Tensor& weight,
                                                            const std::optional<at::Tensor>& bias,
                                                            int64_t stride, bool transposed,
                                                            int64_t plane_begin = 0, int64_t plane_end = -1,
                                                            const std::optional<at::Tensor>& out = std::nullopt,
                                                            bool stats_only = false);

// GroupNorm(groups=C) from (s1, s2), 1x1x1 expansion, exact GELU, 1x1x1 compression, optional residual.
// Returns (N, C_out, D, H, W) fp32, channels_last_3d: a new tensor, or `out` (channels_last_3d-
// contiguous, the output's shape) written in place; out may be y or the residual itself. bf16_gemms
// runs the expansion and compression GEMMs of wide layers (those not on the fused fp32 MLP) in bf16.
at::Tensor norm_mlp(const at::Tensor& y, const at::Tensor& s1, const at::Tensor& s2, const at::Tensor& gamma,
                    const at::Tensor& beta, const at::Tensor& w_expand, const at::Tensor& b_expand,
                    const at::Tensor& w_compress, const at::Tensor& b_compress,
                    const std::optional<at::Tensor>& residual, double eps,
                    const std::optional<at::Tensor>& out = std::nullopt, bool bf16_gemms = false,
                    int64_t count = 0);

// norm_mlp uses the fused register-resident MLP for narrow layers when on (default); returns the old
// setting. Off forces ATen GEMM tiles everywhere (tests and benchmarks compare both).
bool set_mlp_fused(bool on);

// Measured fp32 multiply-add peak of torch.get_num_threads() threads running at once (GFLOP/s), with
// the ISA build the kernels use: the yardstick for the benchmarks' "% of peak".
double fma_peak_gflops();

// Voxels per norm_mlp tile for a hidden width of rc channels (fp32: the tile's hidden stays in L2;
// bf16 GEMMs: longer tiles).
int64_t norm_mlp_tile(int64_t rc, bool bf16 = false);

}  // namespace mednext_fast
