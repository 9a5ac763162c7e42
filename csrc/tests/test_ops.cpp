// ctest: the ATen-level ops (ops.cpp) against ATen's own convolution / group_norm / gelu, with 1 and 2
// threads, for every mode and a few awkward shapes (batch 2, odd sizes, channels 20 and 33).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstdio>

#include "ops.h"

static int failures = 0;

static double rel_err(const at::Tensor& a, const at::Tensor& b) {
  return ((a - b).abs().max() / b.abs().max().clamp_min(1e-6)).item<double>();
}

static void expect(bool ok, const char* what, double err) {
  if (!ok) {
    ++failures;
    std::printf("FAIL %s: rel err %g\n", what, err);
  }
}

static void test_dwconv(int threads) {
  at::set_num_threads(threads);
  for (int k : {3, 5, 7})
    for (int mode = 0; mode < 3; ++mode)
      for (int64_t c : {20, 33}) {
        const bool tr = mode == 2;
        const int64_t st = mode == 0 ? 1 : 2;
        at::Tensor x = at::randn({2, c, 5, 8, 11});
        at::Tensor w = at::randn({c, 1, k, k, k});
        at::Tensor b = at::randn({c});
        at::Tensor ref = tr ? at::conv_transpose3d(x, w, b, 2, k / 2, 0, c)
                            : at::conv3d(x, w, b, st, k / 2, 1, c);
        auto [y, s1, s2] = mednext_fast::dwconv_stats(x, w, b, st, tr);
        const double e = rel_err(y, ref);
        const double e1 = rel_err(s1, ref.sum({2, 3, 4}));
        const double e2 = rel_err(s2, (ref * ref).sum({2, 3, 4}));
        char what[128];
        std::snprintf(what, sizeof(what), "dwconv k=%d mode=%d c=%ld threads=%d", k, mode, (long)c, threads);
        expect(y.sizes() == ref.sizes() && e <= 1e-4 && e1 <= 1e-4 && e2 <= 1e-4, what, std::max({e, e1, e2}));
      }
}

static void test_norm_mlp(int threads) {
  at::set_num_threads(threads);
  for (int64_t c : {20, 32, 33})  // 32: the fused narrow-layer MLP; 20, 33: ATen GEMM tiles
    for (int64_t r : {2, 4}) {
      const int64_t rc = r * c;
      at::Tensor y = at::randn({2, c, 9, 14, 15});  // 1890 voxels: several tiles, the last partial
      at::Tensor gamma = at::randn({c}), beta = at::randn({c});
      at::Tensor we = at::randn({rc, c, 1, 1, 1}) / 4, be = at::randn({rc});
      at::Tensor wc = at::randn({c, rc, 1, 1, 1}) / 8, bc = at::randn({c});
      at::Tensor res = at::randn({2, c, 9, 14, 15});
      at::Tensor z = at::group_norm(y, c, gamma, beta, 1e-5);
      at::Tensor ref = at::conv3d(at::gelu(at::conv3d(z, we, be)), wc, bc) + res;
      at::Tensor s1 = y.sum({2, 3, 4}), s2 = (y * y).sum({2, 3, 4});
      at::Tensor out = mednext_fast::norm_mlp(y, s1, s2, gamma, beta, we, be, wc, bc, res, 1e-5);
      const double e = rel_err(out, ref);
      char what[128];
      std::snprintf(what, sizeof(what), "norm_mlp c=%ld r=%ld threads=%d", (long)c, (long)r, threads);
      expect(out.sizes() == ref.sizes() && e <= 1e-4, what, e);
    }
}

static void test_tile_size() {
  // The hidden tile (tile * rc values) stays around 512 KiB of fp32 / 4 MiB of bf16 and never degenerates.
  for (int64_t rc : {1, 64, 128, 1024, 4096, 1 << 20}) {
    const int64_t t = mednext_fast::norm_mlp_tile(rc);
    const bool ok = t >= 16 && t <= 4096 && t % 16 == 0 && (t == 16 || t * rc <= 128 * 1024);
    expect(ok, "norm_mlp_tile bounds", static_cast<double>(t));
    const int64_t tb = mednext_fast::norm_mlp_tile(rc, true);
    const bool ok_b = tb >= t && tb <= 65536 && tb % 16 == 0 && (tb == 16 || tb * rc <= (2 << 20));
    expect(ok_b, "norm_mlp_tile bounds (bf16)", static_cast<double>(tb));
  }
}

static void test_bad_input() {
  bool threw = false;
  try {
    mednext_fast::dwconv_stats(at::randn({1, 4, 5, 5, 5}, at::kDouble), at::randn({4, 1, 3, 3, 3}), {}, 1, false);
  } catch (const c10::Error&) {
    threw = true;
  }
  expect(threw, "float64 input must throw c10::Error", 0.0);
}

int main() {
  at::manual_seed(0);
  for (int threads : {1, 2}) {
    test_dwconv(threads);
    test_norm_mlp(threads);
  }
  test_tile_size();
  test_bad_input();
  if (failures) {
    std::printf("%d failure(s)\n", failures);
    return 1;
  }
  std::printf("all ops tests passed\n");
  return 0;
}
