// ATen glue for the fused CPU ops: argument checks, layout, threading (at::parallel_for follows
// torch.get_num_threads()), and the norm_mlp tiles built on ATen's GEMM.
#include "ops.h"

#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <vector>

#include "cpu_kernels.h"

namespace mednext_fast {
namespace {

void check_cpu_f32(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.defined(), "mednext_fast cpp ops: ", name, " is undefined");
  TORCH_CHECK(t.device().is_cpu(), "mednext_fast cpp ops: ", name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat, "mednext_fast cpp ops: ", name, " must be float32, got ",
              t.scalar_type());
}

// (N, C, D, H, W) channels_last_3d-contiguous tensor viewed as (N, D*H*W, C) without a copy.
at::Tensor voxels_by_channel(const at::Tensor& t) {
  return t.permute({0, 2, 3, 4, 1}).reshape({t.size(0), -1, t.size(1)});
}

// Fresh outputs are plain ATen allocations, channels-last. No huge-page request (madvise): a process's
// first huge-page touches are slow enough that model forwards lost more than later touches won back
// (docs/performance.md).
at::Tensor empty_cl3d(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return at::empty(sizes, options.memory_format(at::MemoryFormat::ChannelsLast3d));
}

std::atomic<bool> g_mlp_fused{true};

}  // namespace

bool set_mlp_fused(bool on) { return g_mlp_fused.exchange(on); }

double fma_peak_gflops() {
  const int64_t threads = at::get_num_threads();
  std::vector<double> rate(threads, 0.0);
  // One chunk per thread, all running at once (a second round, after the clocks have settled, counts).
  for (int round = 0; round < 2; ++round)
    at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) rate[t] = cpu::fma_peak_gflops(round == 0 ? (1 << 22) : (1 << 25));
    });
  double total = 0.0;
  for (double r : rate) total += r;
  return total;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dwconv_stats(const at::Tensor& x, const at::Tensor& weight,
                                                            const std::optional<at::Tensor>& bias,
                                                            int64_t stride, bool transposed,
                                                            int64_t plane_begin, int64_t plane_end,
                                                            const std::optional<at::Tensor>& out_buffer,
                                                            bool stats_only) {
  check_cpu_f32(x, "x");
  check_cpu_f32(weight, "weight");
  TORCH_CHECK(x.dim() == 5, "dwconv_stats: x must be (N, C, D, H, W), got shape ", x.sizes());
  const int64_t N = x.size(0), C = x.size(1);
  TORCH_CHECK(N > 0 && C > 0 && x.numel() > 0, "dwconv_stats: x must not be empty, got shape ", x.sizes());
  TORCH_CHECK(weight.dim() == 5 && weight.size(0) == C && weight.size(1) == 1 && weight.size(2) == weight.size(3) &&
                  weight.size(3) == weight.size(4),
              "dwconv_stats: weight must be (C, 1, k, k, k) with C = ", C, ", got ", weight.sizes());
  const int64_t k = weight.size(2);
  TORCH_CHECK(k % 2 == 1 && k <= cpu::kMaxK, "dwconv_stats: kernel size must be odd and <= ", cpu::kMaxK,
              ", got ", k);
  TORCH_CHECK(transposed || stride == 1 || stride == 2, "dwconv_stats: stride must be 1 or 2, got ", stride);
  at::Tensor b;
  if (bias.has_value() && bias->defined()) {
    check_cpu_f32(*bias, "bias");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == C, "dwconv_stats: bias must be (", C, "), got ", bias->sizes());
    b = bias->contiguous();
  }
  cpu::DwConvShape s;
  s.N = N; s.C = C;
  s.Di = x.size(2); s.Hi = x.size(3); s.Wi = x.size(4);
  s.k = static_cast<int>(k);
  s.stride = transposed ? 2 : static_cast<int>(stride);
  s.transposed = transposed;
  TORCH_CHECK(cpu::plan_shape(s), "dwconv_stats: invalid configuration for input ", x.sizes(), " k=", k);
  if (plane_end < 0) plane_end = s.Do;
  TORCH_CHECK(0 <= plane_begin && plane_begin < plane_end && plane_end <= s.Do, "dwconv_stats: output planes [",
              plane_begin, ", ", plane_end, ") are not a non-empty range within the ", s.Do, " output D-planes");
  s.d_begin = plane_begin;
  s.d_count = plane_end - plane_begin;

  at::NoGradGuard no_grad;
  const at::Tensor xc = x.contiguous(at::MemoryFormat::ChannelsLast3d);
  const at::Tensor wt = weight.reshape({C, k * k * k}).t().contiguous();  // (kd, kh, kw, C)
  at::Tensor y;  // stays undefined with stats_only
  if (out_buffer.has_value() && out_buffer->defined()) {
    TORCH_CHECK(!stats_only, "dwconv_stats: stats_only computes no output, so out must not be given");
    // The caller's buffer (a dead activation of this shape): saves a fresh allocation and its page faults.
    y = *out_buffer;
    check_cpu_f32(y, "out");
    TORCH_CHECK(y.sizes() == at::IntArrayRef({N, C, s.d_count, s.Ho, s.Wo}), "dwconv_stats: out must be (", N,
                ", ", C, ", ", s.d_count, ", ", s.Ho, ", ", s.Wo, "), got ", y.sizes());
    TORCH_CHECK(y.is_contiguous(at::MemoryFormat::ChannelsLast3d),
                "dwconv_stats: out must be channels_last_3d-contiguous");
    for (const at::Tensor* other : {&xc, &weight})
      TORCH_CHECK(at::get_overlap_status(y, *other) == at::MemOverlapStatus::No,
                  "dwconv_stats: out must not overlap the input or the weight");
  } else if (!stats_only) {
    y = empty_cl3d({N, C, s.d_count, s.Ho, s.Wo}, x.options());
  }

  std::vector<double> t1(N * C, 0.0), t2(N * C, 0.0);
  std::mutex mu;
  const float* xp = xc.data_ptr<float>();
  const float* wp = wt.data_ptr<float>();
  const float* bp = b.defined() ? b.data_ptr<float>() : nullptr;
  float* yp = y.defined() ? y.data_ptr<float>() : nullptr;
  at::parallel_for(0, N * s.d_count, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> l1(N * C, 0.0), l2(N * C, 0.0);
    cpu::dwconv_planes(s, xp, wp, bp, yp, begin, end, l1.data(), l2.data());
    std::lock_guard<std::mutex> lock(mu);
    for (int64_t i = 0; i < N * C; ++i) {
      t1[i] += l1[i];
      t2[i] += l2[i];
    }
  });
  at::Tensor s1 = at::empty({N, C}, x.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor s2 = at::empty({N, C}, s1.options());
  float* p1 = s1.data_ptr<float>();
  float* p2 = s2.data_ptr<float>();
  for (int64_t i = 0; i < N * C; ++i) {
    p1[i] = static_cast<float>(t1[i]);
    p2[i] = static_cast<float>(t2[i]);
  }
  return {y, s1, s2};
}

int64_t norm_mlp_tile(int64_t rc, bool bf16) {
  // fp32: ~128K floats (512 KiB) of hidden per tile, in a 1-2 MiB L2 next to the input/output tiles.
  // bf16 (oneDNN GEMMs): 2M values (4 MiB); oneDNN repacks the weights on every call, so its GEMMs need
  // long tiles to amortise the repacking.
  const int64_t budget = bf16 ? (int64_t(2) << 20) : (128 * 1024);
  const int64_t t = (budget / std::max<int64_t>(rc, 1)) / 16 * 16;
  return std::clamp<int64_t>(t, 16, bf16 ? 65536 : 4096);
}

at::Tensor norm_mlp(const at::Tensor& y, const at::Tensor& s1, const at::Tensor& s2, const at::Tensor& gamma,
                    const at::Tensor& beta, const at::Tensor& w_expand, const at::Tensor& b_expand,
                    const at::Tensor& w_compress, const at::Tensor& b_compress,
                    const std::optional<at::Tensor>& residual, double eps,
                    const std::optional<at::Tensor>& out_buffer, bool bf16_gemms, int64_t count) {
  const char* names[] = {"y", "s1", "s2", "gamma", "beta", "w_expand", "b_expand", "w_compress", "b_compress"};
  const at::Tensor* ts[] = {&y, &s1, &s2, &gamma, &beta, &w_expand, &b_expand, &w_compress, &b_compress};
  for (int i = 0; i < 9; ++i) check_cpu_f32(*ts[i], names[i]);
  TORCH_CHECK(y.dim() == 5 && y.numel() > 0, "norm_mlp: y must be a non-empty (N, C, D, H, W), got ", y.sizes());
  const int64_t N = y.size(0), C = y.size(1);
  const int64_t S = y.size(2) * y.size(3) * y.size(4);
  const int64_t RC = w_expand.size(0);
  const int64_t Cout = w_compress.dim() > 0 ? w_compress.size(0) : 0;
  TORCH_CHECK(s1.sizes() == at::IntArrayRef({N, C}) && s2.sizes() == at::IntArrayRef({N, C}),
              "norm_mlp: s1 and s2 must be (", N, ", ", C, "), got ", s1.sizes(), " and ", s2.sizes());
  TORCH_CHECK(gamma.numel() == C && beta.numel() == C && gamma.dim() == 1 && beta.dim() == 1,
              "norm_mlp: gamma and beta must be (", C, "), got ", gamma.sizes(), " and ", beta.sizes());
  TORCH_CHECK((w_expand.dim() == 2 || w_expand.dim() == 5) && w_expand.numel() == RC * C && w_expand.size(1) == C,
              "norm_mlp: w_expand must be (R*C, ", C, "[, 1, 1, 1]), got ", w_expand.sizes());
  TORCH_CHECK(b_expand.dim() == 1 && b_expand.size(0) == RC, "norm_mlp: b_expand must be (", RC, "), got ",
              b_expand.sizes());
  TORCH_CHECK((w_compress.dim() == 2 || w_compress.dim() == 5) && w_compress.size(1) == RC &&
                  w_compress.numel() == Cout * RC,
              "norm_mlp: w_compress must be (C_out, ", RC, "[, 1, 1, 1]), got ", w_compress.sizes());
  TORCH_CHECK(b_compress.dim() == 1 && b_compress.size(0) == Cout, "norm_mlp: b_compress must be (", Cout,
              "), got ", b_compress.sizes());
  at::Tensor res;
  if (residual.has_value() && residual->defined()) {
    check_cpu_f32(*residual, "residual");
    TORCH_CHECK(residual->dim() == 5 && residual->size(0) == N && residual->size(1) == Cout &&
                    residual->size(2) == y.size(2) && residual->size(3) == y.size(3) && residual->size(4) == y.size(4),
                "norm_mlp: residual must be (", N, ", ", Cout, ", ", y.size(2), ", ", y.size(3), ", ", y.size(4),
                "), got ", residual->sizes());
    res = voxels_by_channel(residual->contiguous(at::MemoryFormat::ChannelsLast3d));
  }

  TORCH_CHECK(count >= 0, "norm_mlp: count must be > 0 (or 0 for the voxels of y), got ", count);
  // s1 and s2 sum over `count` voxels: those of y, or of a whole output that y is one chunk of.
  const double voxels = static_cast<double>(count > 0 ? count : S);

  at::NoGradGuard no_grad;
  const at::Tensor mean = s1 / voxels;
  const at::Tensor var = (s2 / voxels - mean * mean).clamp_min(0);
  const at::Tensor rstd = at::rsqrt(var + eps);
  const at::Tensor scale = rstd * gamma.unsqueeze(0);         // (N, C)
  const at::Tensor shift = beta.unsqueeze(0) - mean * scale;  // (N, C)
  const at::Tensor we = w_expand.reshape({RC, C});
  const at::Tensor wc_t = w_compress.reshape({Cout, RC}).t();  // a view: the GEMM reads it transposed
  const at::Tensor be = b_expand.contiguous();
  const at::Tensor bc = b_compress.contiguous();
  // GroupNorm with groups == C is a per-(n, c) affine map. With many voxels it folds into the expansion
  // (per sample W_e' = W_e * scale column-wise, b_e' = b_e + W_e @ shift: no norm pass over the tiles);
  // with fewer voxels than hidden channels (deep levels) normalising the y tile is cheaper.
  const bool fold = S >= RC;
  at::Tensor we_n, be_n;
  if (fold) {
    we_n = we.unsqueeze(0) * scale.unsqueeze(1);                 // (N, RC, C)
    be_n = at::addmm(be.unsqueeze(0), shift, we.t());            // (N, RC)
  }

  const at::Tensor yv = voxels_by_channel(y.contiguous(at::MemoryFormat::ChannelsLast3d));  // (N, S, C)
  at::Tensor out;
  if (out_buffer.has_value() && out_buffer->defined()) {
    // The caller's buffer, which may be y itself or the residual: every tile reads its voxels' y and
    // residual before it writes their output.
    out = *out_buffer;
    check_cpu_f32(out, "out");
    TORCH_CHECK(out.dim() == 5 && out.size(0) == N && out.size(1) == Cout && out.size(2) == y.size(2) &&
                    out.size(3) == y.size(3) && out.size(4) == y.size(4),
                "norm_mlp: out must be (", N, ", ", Cout, ", ", y.size(2), ", ", y.size(3), ", ", y.size(4), "), got ",
                out.sizes());
    TORCH_CHECK(out.is_contiguous(at::MemoryFormat::ChannelsLast3d),
                "norm_mlp: out must be channels_last_3d-contiguous");
    const at::Tensor none;
    for (const at::Tensor* other : {&y, residual.has_value() ? &*residual : &none}) {
      const bool same_view = other->defined() && other->data_ptr() == out.data_ptr() &&
                             other->sizes() == out.sizes() && other->strides() == out.strides();
      TORCH_CHECK(!other->defined() || same_view || at::get_overlap_status(out, *other) == at::MemOverlapStatus::No,
                  "norm_mlp: out may be y or the residual itself, but must not otherwise overlap them");
    }
  } else {
    out = empty_cl3d({N, Cout, y.size(2), y.size(3), y.size(4)}, y.options());
  }
  const at::Tensor ov = voxels_by_channel(out);  // (N, S, Cout), a view of out
  TORCH_INTERNAL_ASSERT(ov.is_alias_of(out) && ov.is_contiguous(), "norm_mlp: output view must alias the output");

  // Narrow layers (Cout <= 64, the full-resolution levels): the register-resident fused MLP beats
  // ATen's GEMM on these thin matrices. Wider layers: ATen GEMM tiles below. With bf16 GEMMs the tiles
  // also beat the fused fp32 MLP at Cout = 64; at 16/32 they do not (their elementwise passes dominate).
  const bool fused_wins = Cout == 16 || Cout == 32 || (Cout == 64 && !bf16_gemms);
  if (fold && g_mlp_fused.load() && fused_wins && RC % 32 == 0 && C <= 128 && RC <= 512) {
    const at::Tensor yc = yv.contiguous();
    const at::Tensor we_c = we_n.transpose(1, 2).contiguous();  // (N, C, RC)
    const at::Tensor wc_c = wc_t.contiguous();                  // (RC, Cout)
    const at::Tensor rc = res.defined() ? res.contiguous() : at::Tensor();
    const float* yp = yc.data_ptr<float>();
    const float* wep = we_c.data_ptr<float>();
    const float* bep = be_n.data_ptr<float>();
    const float* wcp = wc_c.data_ptr<float>();
    const float* bcp = bc.data_ptr<float>();
    const float* rp = rc.defined() ? rc.data_ptr<float>() : nullptr;
    float* op = ov.data_ptr<float>();
    constexpr int64_t kBlock = 512;  // voxels per task
    const int64_t blocks = (S + kBlock - 1) / kBlock;
    at::parallel_for(0, N * blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t n = t / blocks, v0 = (t % blocks) * kBlock, len = std::min(kBlock, S - v0);
        const int64_t row = n * S + v0;
        cpu::mlp_fused(yp + row * C, len, C, wep + n * C * RC, bep + n * RC, RC, wcp, bcp,
                       rp ? rp + row * Cout : nullptr, op + row * Cout, Cout);
      }
    });
    return out;
  }

  int64_t T = norm_mlp_tile(RC, bf16_gemms);
  // Deep levels have few voxels: shorten the tiles so that every thread gets one.
  const int64_t threads = at::get_num_threads();
  if (N * ((S + T - 1) / T) < threads) {
    const int64_t per_sample = (threads + N - 1) / N;
    T = std::max<int64_t>(16, ((S + per_sample - 1) / per_sample + 15) / 16 * 16);
  }
  const int64_t tiles_per_sample = (S + T - 1) / T;
  // bf16 GEMMs (oneDNN: AMX / AVX512-BF16 where the CPU has them): the tile's normalised input and the
  // hidden are rounded to bf16 and the compression's result is added to the fp32 residual and bias.
  const auto bf16 = at::kBFloat16;
  const at::Tensor we_b = bf16_gemms ? (fold ? we_n : we).to(bf16) : at::Tensor();
  const at::Tensor be_b = bf16_gemms ? (fold ? be_n : be).to(bf16) : at::Tensor();
  const at::Tensor wc_b = bf16_gemms ? wc_t.to(bf16) : at::Tensor();
  // Worker threads do not inherit the caller's grad / inference mode; the ATen calls below must run
  // under it (in-place updates of inference tensors are refused outside inference mode).
  const at::ThreadLocalState caller_state;
  at::parallel_for(0, N * tiles_per_sample, 1, [&](int64_t begin, int64_t end) {
    at::ThreadLocalStateGuard state_guard(caller_state);
    const auto opts = y.options().memory_format(at::MemoryFormat::Contiguous);
    const int64_t rows = std::min(T, S);
    at::Tensor hidden = at::empty({rows, RC}, bf16_gemms ? opts.dtype(bf16) : opts);
    at::Tensor normed = fold ? at::Tensor() : at::empty({rows, C}, opts);
    at::Tensor in_b = bf16_gemms ? at::empty({rows, C}, opts.dtype(bf16)) : at::Tensor();
    at::Tensor out_b = bf16_gemms ? at::empty({rows, Cout}, opts.dtype(bf16)) : at::Tensor();
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / tiles_per_sample;
      const int64_t v0 = (t % tiles_per_sample) * T;
      const int64_t len = std::min(T, S - v0);
      at::Tensor h = hidden.narrow(0, 0, len);
      const at::Tensor yt = yv[n].narrow(0, v0, len);
      at::Tensor z = yt;
      if (!fold) {
        z = normed.narrow(0, 0, len);
        at::addcmul_out(z, shift[n], yt, scale[n]);
      }
      if (bf16_gemms) {
        at::Tensor zb = in_b.narrow(0, 0, len);
        zb.copy_(z);
        at::addmm_out(h, fold ? be_b[n] : be_b, zb, (fold ? we_b[n] : we_b).t());
        at::gelu_(h);  // exact (erf) GELU on bf16
      } else {
        at::addmm_out(h, fold ? be_n[n] : be, z, (fold ? we_n[n] : we).t());
        cpu::gelu_inplace(h.data_ptr<float>(), h.numel());  // erf GELU, the fused MLP's vectorised fit
      }
      at::Tensor o = ov[n].narrow(0, v0, len);
      if (res.defined()) {
        at::add_out(o, res[n].narrow(0, v0, len), bc);
      } else {
        o.copy_(bc.expand({len, Cout}));
      }
      if (bf16_gemms) {
        at::Tensor ob = out_b.narrow(0, 0, len);
        at::mm_out(ob, h, wc_b);
        o.add_(ob);
      } else {
        o.addmm_(h, wc_t);
      }
    }
  });
  return out;
}

}  // namespace mednext_fast
