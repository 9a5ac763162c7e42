// Shape arithmetic shared by all ISA builds, and the run-time choice of the ISA build.
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "cpu_kernels.h"

namespace mednext_fast {
namespace cpu {

int64_t out_size(int64_t n, int k, int stride, bool transposed) {
  const int pad = k / 2;
  if (transposed) return (n - 1) * 2 - 2 * pad + k;
  const int64_t span = n + 2 * pad - k;
  return span < 0 ? 0 : span / stride + 1;
}

bool plan_shape(DwConvShape& s) {
  if (s.k < 1 || s.k > kMaxK || s.k % 2 == 0) return false;
  if (!s.transposed && s.stride != 1 && s.stride != 2) return false;
  if (s.N < 0 || s.C < 1 || s.Di < 1 || s.Hi < 1 || s.Wi < 1) return false;
  s.Do = out_size(s.Di, s.k, s.stride, s.transposed);
  s.Ho = out_size(s.Hi, s.k, s.stride, s.transposed);
  s.Wo = out_size(s.Wi, s.k, s.stride, s.transposed);
  s.d_begin = 0;
  s.d_count = s.Do;
  return s.Do > 0 && s.Ho > 0 && s.Wo > 0;
}

int dim_taps(int64_t o, int64_t n_in, int k, int stride, bool transposed, int* taps, int64_t* idx) {
  const int pad = k / 2;
  int m = 0;
  for (int t = 0; t < k; ++t) {
    int64_t i;
    if (transposed) {
      // y[o] += x[i] * w[t] where o = 2 i - pad + t
      const int64_t num = o + pad - t;
      if (num % 2 != 0) continue;
      i = num / 2;
    } else {
      // y[o] += x[i] * w[t] where i = o * stride - pad + t
      i = o * stride - pad + t;
    }
    if (i < 0 || i >= n_in) continue;
    taps[m] = t;
    idx[m] = i;
    ++m;
  }
  return m;
}

namespace {

enum Isa { kDefault = 0, kAvx2 = 1, kAvx512 = 2 };

bool cpu_has(Isa isa) {
#if defined(__GNUC__) && defined(__x86_64__)
  __builtin_cpu_init();
  switch (isa) {
    case kAvx512:
      return isa_avx512::built() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
    case kAvx2:
      return isa_avx2::built() && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    default:
      return true;
  }
#else
  return isa == kDefault;
#endif
}

int best_isa() {
  // MEDNEXT_FAST_CPU_ISA=avx2 / default caps the choice (e.g. to test the other builds on one machine).
  int cap = kAvx512;
  if (const char* env = std::getenv("MEDNEXT_FAST_CPU_ISA")) {
    if (std::strcmp(env, "avx2") == 0) cap = kAvx2;
    if (std::strcmp(env, "default") == 0) cap = kDefault;
  }
  for (int i = cap; i > kDefault; --i)
    if (cpu_has(static_cast<Isa>(i))) return i;
  return kDefault;
}

std::atomic<int>& current() {
  static std::atomic<int> isa{best_isa()};
  return isa;
}

}  // namespace

const char* isa() {
  switch (current().load()) {
    case kAvx512: return "avx512";
    case kAvx2: return "avx2";
    default: return "default";
  }
}

bool set_isa(const char* name) {
  Isa want;
  if (std::strcmp(name, "avx512") == 0) want = kAvx512;
  else if (std::strcmp(name, "avx2") == 0) want = kAvx2;
  else if (std::strcmp(name, "default") == 0) want = kDefault;
  else return false;
  if (!cpu_has(want)) return false;
  current().store(want);
  return true;
}

void dwconv_planes(const DwConvShape& s, const float* x, const float* wt, const float* bias, float* y,
                 int64_t task_begin, int64_t task_end, double* s1, double* s2) {
  switch (current().load()) {
    case kAvx512: return isa_avx512::dwconv_planes(s, x, wt, bias, y, task_begin, task_end, s1, s2);
    case kAvx2: return isa_avx2::dwconv_planes(s, x, wt, bias, y, task_begin, task_end, s1, s2);
    default: return isa_default::dwconv_planes(s, x, wt, bias, y, task_begin, task_end, s1, s2);
  }
}

void gelu_inplace(float* x, int64_t n) {
  switch (current().load()) {
    case kAvx512: return isa_avx512::gelu_inplace(x, n);
    case kAvx2: return isa_avx2::gelu_inplace(x, n);
    default: return isa_default::gelu_inplace(x, n);
  }
}

bool mlp_fused(const float* y, int64_t nv, int64_t C, const float* we_t, const float* be, int64_t RC,
               const float* wc_t, const float* bc, const float* res, float* out, int64_t Cout) {
  switch (current().load()) {
    case kAvx512: return isa_avx512::mlp_fused(y, nv, C, we_t, be, RC, wc_t, bc, res, out, Cout);
    case kAvx2: return isa_avx2::mlp_fused(y, nv, C, we_t, be, RC, wc_t, bc, res, out, Cout);
    default: return isa_default::mlp_fused(y, nv, C, we_t, be, RC, wc_t, bc, res, out, Cout);
  }
}

double fma_peak_gflops(int64_t iters) {
  switch (current().load()) {
    case kAvx512: return isa_avx512::fma_peak_gflops(iters);
    case kAvx2: return isa_avx2::fma_peak_gflops(iters);
    default: return isa_default::fma_peak_gflops(iters);
  }
}

}  // namespace cpu
}  // namespace mednext_fast
