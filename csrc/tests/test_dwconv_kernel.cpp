// ctest unit tests of the torch-free depthwise conv kernel: output sizes, tap/index arithmetic and edge
// tiles, checked against a naive scatter-form reference for every ISA build this CPU can run.
// `test_dwconv_kernel bench [C [size]]` times 1xCxsize^3 instead (default 32, 64; single thread, rough)
// beside the measured FMA peak.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "../cpu_kernels.h"

using namespace mednext_fast::cpu;

static int failures = 0;
#define CHECK(cond, ...)                                   \
  do {                                                     \
    if (!(cond)) {                                         \
      ++failures;                                          \
      std::printf("FAIL %s:%d: ", __FILE__, __LINE__);     \
      std::printf(__VA_ARGS__);                            \
      std::printf("\n");                                   \
    }                                                      \
  } while (0)

// Reference in scatter form: every (input, tap) pair adds to the output it lands on, so it shares no
// index formula with the gather-form kernel.
static void naive(const DwConvShape& s, const std::vector<float>& x, const std::vector<float>& wt,
                  const std::vector<float>& bias, std::vector<float>& y) {
  const int k = s.k, p = k / 2;
  const int64_t C = s.C;
  y.assign(s.N * s.Do * s.Ho * s.Wo * C, 0.f);
  auto yat = [&](int64_t n, int64_t d, int64_t h, int64_t w, int64_t c) -> float& {
    return y[(((n * s.Do + d) * s.Ho + h) * s.Wo + w) * C + c];
  };
  for (int64_t n = 0; n < s.N; ++n)
    for (int64_t d = 0; d < s.Do; ++d)
      for (int64_t h = 0; h < s.Ho; ++h)
        for (int64_t w = 0; w < s.Wo; ++w)
          for (int64_t c = 0; c < C; ++c) yat(n, d, h, w, c) = bias[c];
  for (int64_t n = 0; n < s.N; ++n)
    for (int64_t d = 0; d < s.Di; ++d)
      for (int64_t h = 0; h < s.Hi; ++h)
        for (int64_t w = 0; w < s.Wi; ++w)
          for (int a = 0; a < k; ++a)
            for (int b = 0; b < k; ++b)
              for (int e = 0; e < k; ++e) {
                int64_t od, oh, ow;
                if (s.transposed) {
                  od = 2 * d - p + a; oh = 2 * h - p + b; ow = 2 * w - p + e;
                } else {  // input i = o*s - p + t  <=>  o = (i + p - t) / s when divisible
                  const int64_t nd = d + p - a, nh = h + p - b, nw = w + p - e;
                  if (nd % s.stride || nh % s.stride || nw % s.stride) continue;
                  od = nd / s.stride; oh = nh / s.stride; ow = nw / s.stride;
                }
                if (od < 0 || oh < 0 || ow < 0 || od >= s.Do || oh >= s.Ho || ow >= s.Wo) continue;
                for (int64_t c = 0; c < C; ++c)
                  yat(n, od, oh, ow, c) += x[(((n * s.Di + d) * s.Hi + h) * s.Wi + w) * C + c] *
                                           wt[((a * k + b) * k + e) * C + c];
              }
}

// Largest error of the per-(n, c) sums s1 / s2 against double sums of the kernel's own output y (N
// samples, channels-last), relative to sum |y| and sum y^2: the accumulation alone, apart from the
// conv's rounding, which is checked against the reference separately.
static double stats_error(const std::vector<float>& y, int64_t N, int64_t C, const double* s1, const double* s2) {
  std::vector<double> q1(N * C, 0.0), q2(N * C, 0.0), m1(N * C, 0.0);
  const int64_t per_sample = static_cast<int64_t>(y.size()) / N;
  for (int64_t i = 0; i < static_cast<int64_t>(y.size()); ++i) {
    const int64_t nc = i / per_sample * C + i % C;
    q1[nc] += y[i];
    q2[nc] += double(y[i]) * y[i];
    m1[nc] += std::fabs(y[i]);
  }
  double worst = 0.0;
  for (int64_t i = 0; i < N * C; ++i) {
    worst = std::fmax(worst, std::fabs(s1[i] - q1[i]) / (1.0 + m1[i]));
    worst = std::fmax(worst, std::fabs(s2[i] - q2[i]) / (1.0 + q2[i]));
  }
  return worst;
}

static void test_out_size() {
  for (int k = 1; k <= kMaxK; k += 2)
    for (int64_t n = 1; n <= 20; ++n) {
      if (n + 2 * (k / 2) >= k) {
        CHECK(out_size(n, k, 1, false) == n, "stride 1 k=%d n=%ld", k, (long)n);
        CHECK(out_size(n, k, 2, false) == (n + 1) / 2, "stride 2 k=%d n=%ld", k, (long)n);
      }
      CHECK(out_size(n, k, 2, true) == 2 * n - 1, "transposed k=%d n=%ld", k, (long)n);
    }
  DwConvShape bad;
  bad.N = 1; bad.C = 4; bad.Di = bad.Hi = bad.Wi = 5;
  bad.k = 4;
  CHECK(!plan_shape(bad), "even k accepted");
  bad.k = 9;
  CHECK(!plan_shape(bad), "k=9 accepted");
  bad.k = 3; bad.stride = 3;
  CHECK(!plan_shape(bad), "stride 3 accepted");
}

static void test_dim_taps() {
  // Every (tap, index) pair dim_taps lists must be exactly those of the scatter definition.
  for (int k = 1; k <= kMaxK; k += 2)
    for (int mode = 0; mode < 3; ++mode)
      for (int64_t n = 1; n <= 9; ++n) {
        const bool tr = mode == 2;
        const int st = mode == 0 ? 1 : 2;
        const int64_t no = out_size(n, k, st, tr);
        for (int64_t o = 0; o < no; ++o) {
          int taps[kMaxK];
          int64_t idx[kMaxK];
          const int m = dim_taps(o, n, k, st, tr, taps, idx);
          int expect = 0;
          for (int64_t i = 0; i < n; ++i)
            for (int t = 0; t < k; ++t) {
              const int64_t lands = tr ? 2 * i - k / 2 + t : -1;
              const bool hit = tr ? lands == o : (o * st - k / 2 + t == i);
              if (!hit) continue;
              bool listed = false;
              for (int q = 0; q < m; ++q) listed |= taps[q] == t && idx[q] == i;
              CHECK(listed, "k=%d mode=%d n=%ld o=%ld misses (t=%d,i=%ld)", k, mode, (long)n, (long)o, t, (long)i);
              ++expect;
            }
          CHECK(m == expect, "k=%d mode=%d n=%ld o=%ld: %d taps, want %d", k, mode, (long)n, (long)o, m, expect);
        }
      }
}

static void run_case(const char* isa_name, int64_t N, int64_t C, int64_t D, int64_t H, int64_t W, int k, int stride,
                     bool transposed, bool with_bias, std::mt19937& rng, int64_t band = 0) {
  DwConvShape s;
  s.N = N; s.C = C; s.Di = D; s.Hi = H; s.Wi = W; s.k = k; s.stride = stride; s.transposed = transposed;
  const bool planned = plan_shape(s);
  s.band_rows = band;
  if (!planned) {
    CHECK(false, "plan_shape rejected a valid case");
    return;
  }
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> x(N * D * H * W * C), wt(k * k * k * C), bias(C, 0.f);
  for (auto& v : x) v = u(rng);
  for (auto& v : wt) v = u(rng);
  if (with_bias)
    for (auto& v : bias) v = u(rng);
  std::vector<float> ref;
  naive(s, x, wt, bias, ref);
  // Split the rows in three uneven chunks with separate statistics, as threads would.
  const int64_t rows = N * s.Do;  // tasks = output D-planes
  std::vector<float> y(ref.size(), NAN);
  std::vector<double> a1(N * C, 0.0), a2(N * C, 0.0), b1(N * C, 0.0), b2(N * C, 0.0);
  const int64_t cut1 = rows / 3, cut2 = rows - rows / 5;
  dwconv_planes(s, x.data(), wt.data(), with_bias ? bias.data() : nullptr, y.data(), 0, cut1, a1.data(), a2.data());
  dwconv_planes(s, x.data(), wt.data(), with_bias ? bias.data() : nullptr, y.data(), cut1, cut2, b1.data(), b2.data());
  dwconv_planes(s, x.data(), wt.data(), with_bias ? bias.data() : nullptr, y.data(), cut2, rows, a1.data(), a2.data());
  double err = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) err = std::isnan(y[i]) ? INFINITY : std::fmax(err, std::fabs(y[i] - ref[i]));
  for (int64_t i = 0; i < N * C; ++i) {
    a1[i] += b1[i];
    a2[i] += b2[i];
  }
  const double serr = err < INFINITY ? stats_error(y, N, C, a1.data(), a2.data()) : INFINITY;
  CHECK(err < 1e-4 && serr < 1e-5,
        "%s N=%ld C=%ld %ldx%ldx%ld k=%d stride=%d transposed=%d bias=%d band=%ld: max err %g, stats %g", isa_name,
        (long)N, (long)C, (long)D, (long)H, (long)W, k, stride, transposed, with_bias, (long)band, err, serr);

  // A plane range [d0, d0 + cnt) of every sample: y holds only those planes, task = n * cnt + (od - d0).
  DwConvShape part = s;
  part.d_begin = s.Do / 2;
  part.d_count = s.Do - part.d_begin;
  const int64_t plane = s.Ho * s.Wo * C;
  std::vector<float> yp(N * part.d_count * plane, NAN);
  std::vector<double> p1(N * C, 0.0), p2(N * C, 0.0);
  dwconv_planes(part, x.data(), wt.data(), with_bias ? bias.data() : nullptr, yp.data(), 0, N * part.d_count,
                p1.data(), p2.data());
  double perr = 0.0;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < part.d_count; ++j)
      for (int64_t i = 0; i < plane; ++i) {
        const float got = yp[(n * part.d_count + j) * plane + i];
        const float want = ref[(n * s.Do + part.d_begin + j) * plane + i];
        perr = std::isnan(got) ? INFINITY : std::fmax(perr, std::fabs(got - want));
      }
  const double pserr = perr < INFINITY ? stats_error(yp, N, C, p1.data(), p2.data()) : INFINITY;
  CHECK(perr < 1e-4 && pserr < 1e-5, "%s planes [%ld, %ld) of N=%ld C=%ld k=%d stride=%d transposed=%d: err %g, stats %g",
        isa_name, (long)part.d_begin, (long)s.Do, (long)N, (long)C, k, stride, transposed, perr, pserr);

  // Statistics only (y null): the same sums, no output written.
  std::vector<double> q1(N * C, 0.0), q2(N * C, 0.0);
  dwconv_planes(part, x.data(), wt.data(), with_bias ? bias.data() : nullptr, nullptr, 0, N * part.d_count,
                q1.data(), q2.data());
  double qerr = 0.0;
  for (int64_t i = 0; i < N * C; ++i)
    qerr = std::fmax(qerr, std::fmax(std::fabs(q1[i] - p1[i]), std::fabs(q2[i] - p2[i])) / (1.0 + std::fabs(p2[i])));
  CHECK(qerr < 1e-12, "%s stats only, planes [%ld, %ld) of N=%ld C=%ld k=%d stride=%d transposed=%d: differs by %g",
        isa_name, (long)part.d_begin, (long)s.Do, (long)N, (long)C, k, stride, transposed, qerr);
}

static void test_kernel() {
  std::mt19937 rng(0);
  for (const char* name : {"default", "avx2", "avx512"}) {
    if (!set_isa(name)) {
      std::printf("skip ISA %s (not supported here)\n", name);
      continue;
    }
    int cases = 0;
    for (int k = 1; k <= kMaxK; k += 2)
      for (int mode = 0; mode < 3; ++mode) {
        const bool tr = mode == 2;
        const int st = mode == 0 ? 1 : 2;
        // channels: vector tails (1, 3, 20 = 16 + 4, 33 = 2 x 16 + 1); W: narrower than the kernel, odd,
        // and wide enough for full register blocks with edge outputs on both sides.
        run_case(name, 2, 20, 3, 4, 19, k, st, tr, true, rng);
        run_case(name, 1, 33, 5, 2, 9, k, st, tr, false, rng);
        run_case(name, 1, 1, 2, 3, 2, k, st, tr, true, rng);
        run_case(name, 1, 3, 1, 1, 1, k, st, tr, true, rng);
        run_case(name, 1, 16, 4, 3, 37, k, st, tr, true, rng);
        run_case(name, 1, 1024, 2, 1, 3, k, st, tr, true, rng);  // row pitch a multiple of 4 KiB
        run_case(name, 2, 72, 3, 5, 37, k, st, tr, true, rng);  // transposed: 4 channel blocks per output block + 8
        // Bands of output rows (one row, an odd band, an even band not dividing H) with full row-pair
        // register blocks and every remainder block (W = 31: 12 + 12 + 4 + 2 + 1, 10 x 3 + 1, 8 x 3 + 4 + 2 + 1).
        run_case(name, 2, 32, 4, 11, 31, k, st, tr, true, rng, 1);
        run_case(name, 1, 20, 6, 13, 23, k, st, tr, true, rng, 3);
        run_case(name, 1, 48, 5, 9, 31, k, st, tr, false, rng, 4);
        cases += 10;
      }
    std::printf("ISA %s: %d kernel cases\n", name, cases);
  }
}

static void test_gelu() {
  // Against the double-precision definition over [-12, 12], large magnitudes, tiny values, n not a
  // multiple of any vector width; every ISA build.
  std::vector<float> xs;
  for (int i = -120000; i <= 120000; ++i) xs.push_back(i * 1e-4f);
  for (float v : {0.f, -0.f, 1e-30f, -1e-30f, 30.f, -30.f, 1e4f, -1e4f, 3e38f, -3e38f}) xs.push_back(v);
  for (const char* name : {"default", "avx2", "avx512"}) {
    if (!set_isa(name)) continue;
    std::vector<float> y = xs;
    gelu_inplace(y.data(), static_cast<int64_t>(y.size()));
    double worst = 0.0;
    for (size_t i = 0; i < xs.size(); ++i) {
      const double x = xs[i];
      const double ref = 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
      worst = std::fmax(worst, std::fabs(y[i] - ref) / std::fmax(1.0, std::fabs(x)));
    }
    CHECK(worst <= 4e-7, "gelu %s: max error %g (relative to max(1, |x|))", name, worst);
    std::vector<float> nan(3, NAN);
    gelu_inplace(nan.data(), 3);
    CHECK(std::isnan(nan[0]) && std::isnan(nan[2]), "gelu %s must propagate NaN", name);
    // Far negative inputs: x Phi(x) underflows, so exactly 0 (not a tiny multiple of x).
    float tail[3] = {-30.f, -1e4f, -3e38f};
    gelu_inplace(tail, 3);
    CHECK(tail[0] == 0.f && tail[1] == 0.f && tail[2] == 0.f, "gelu %s: far negative inputs give %g %g %g, not 0",
          name, tail[0], tail[1], tail[2]);
    std::printf("gelu %s: max error %.3g\n", name, worst);
  }
}

static void test_mlp() {
  // Fused MLP against a double-precision loop: every supported Cout, voxel counts with a tail block,
  // with and without residual, every ISA build; unsupported shapes must be refused.
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (const char* name : {"default", "avx2", "avx512"}) {
    if (!set_isa(name)) continue;
    for (int64_t cout : {16, 32, 64})
      for (int64_t C : {7, 32})
        for (int64_t RC : {32, 96})
          for (int with_res = 0; with_res < 2; ++with_res) {
            const int64_t nv = 11;
            std::vector<float> y(nv * C), we(C * RC), be(RC), wc(RC * cout), bc(cout), res(nv * cout), out(nv * cout);
            for (auto* v : {&y, &we, &be, &wc, &bc, &res})
              for (auto& e : *v) e = u(rng);
            CHECK(mlp_fused(y.data(), nv, C, we.data(), be.data(), RC, wc.data(), bc.data(),
                            with_res ? res.data() : nullptr, out.data(), cout),
                  "mlp_fused refused Cout=%ld RC=%ld", (long)cout, (long)RC);
            double worst = 0.0, scale = 0.0;
            for (int64_t v = 0; v < nv; ++v)
              for (int64_t o = 0; o < cout; ++o) {
                double acc = bc[o] + (with_res ? res[v * cout + o] : 0.0);
                for (int64_t r = 0; r < RC; ++r) {
                  double h = be[r];
                  for (int64_t c = 0; c < C; ++c) h += double(y[v * C + c]) * we[c * RC + r];
                  acc += 0.5 * h * (1.0 + std::erf(h / std::sqrt(2.0))) * wc[r * cout + o];
                }
                worst = std::fmax(worst, std::fabs(out[v * cout + o] - acc));
                scale = std::fmax(scale, std::fabs(acc));
              }
            CHECK(worst <= 1e-5 * std::fmax(1.0, scale), "mlp %s Cout=%ld C=%ld RC=%ld res=%d: err %g (scale %g)",
                  name, (long)cout, (long)C, (long)RC, with_res, worst, scale);
          }
    float dummy[64] = {};
    CHECK(!mlp_fused(dummy, 1, 1, dummy, dummy, 48, dummy, dummy, nullptr, dummy, 16), "RC=48 accepted");
    CHECK(!mlp_fused(dummy, 1, 1, dummy, dummy, 32, dummy, dummy, nullptr, dummy, 24), "Cout=24 accepted");
  }
}

static void bench(int64_t C, int64_t size) {
  fma_peak_gflops(1 << 20);  // warm up the clock
  std::printf("fp32 FMA peak, one thread, %s: %.1f GFLOP/s\n", isa(), fma_peak_gflops(1 << 26));
  std::mt19937 rng(1);
  for (int k : {3, 5, 7}) {
    DwConvShape s;
    s.N = 1; s.C = C; s.Di = s.Hi = s.Wi = size; s.k = k;
    plan_shape(s);
    std::vector<float> x(s.N * size * size * size * s.C, 0.5f), wt(k * k * k * s.C, 0.1f), b(s.C, 0.f), y(x.size());
    std::vector<double> s1(s.C), s2(s.C);
    const int64_t rows = s.Do;
    dwconv_planes(s, x.data(), wt.data(), b.data(), y.data(), 0, rows, s1.data(), s2.data());
    auto t0 = std::chrono::steady_clock::now();
    const int reps = 3;
    for (int i = 0; i < reps; ++i) dwconv_planes(s, x.data(), wt.data(), b.data(), y.data(), 0, rows, s1.data(), s2.data());
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / reps;
    // Useful FLOPs only: taps that fall on the zero padding are not counted.
    int64_t taps_1d = 0;
    for (int64_t o = 0; o < size; ++o) taps_1d += std::min<int64_t>(o, k / 2) + 1 + std::min<int64_t>(size - 1 - o, k / 2);
    const double gf = 2.0 * s.N * s.C * double(taps_1d) * taps_1d * taps_1d / ms / 1e6;
    std::printf("isa=%s k=%d 1x%ldx%ld^3 single thread: %.1f ms, %.1f GFLOP/s\n", isa(), k, (long)C, (long)size, ms, gf);
  }
}

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "bench") {  // bench [C [size]]
    bench(argc > 2 ? std::atol(argv[2]) : 32, argc > 3 ? std::atol(argv[3]) : 64);
    return 0;
  }
  test_out_size();
  test_dim_taps();
  test_kernel();
  test_gelu();
  test_mlp();
  if (failures) {
    std::printf("%d failure(s)\n", failures);
    return 1;
  }
  std::printf("all kernel tests passed\n");
  return 0;
}
