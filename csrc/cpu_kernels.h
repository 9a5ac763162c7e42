// Torch-free CPU kernel interface: depthwise 3-D convolution + GroupNorm statistics, GELU, and the
// fused narrow-layer MLP.
//
// Depthwise conv layouts (all fp32, channels-last so the channel dimension is contiguous and vectorises):
//   x : (N, Di, Hi, Wi, C)      input
//   wt: (k, k, k, C)            weight, transposed from PyTorch's (C, 1, k, k, k)
//   y : (N, Do, Ho, Wo, C)      output
// Modes: stride 1 or 2 convolution with padding k/2 (PyTorch Conv3d), or stride-2 transposed
// convolution with padding k/2 and no output padding (PyTorch ConvTranspose3d, output 2n-1 for odd k).
//
// The kernels are compiled several times with different target ISAs (kernels_*.cpp) and picked at run
// time (dispatch.cpp), so a wheel built on any x86-64 machine runs on any other.
#pragma once
#include <cstdint>

namespace mednext_fast {
namespace cpu {

struct DwConvShape {
  int64_t N = 0, C = 0;
  int64_t Di = 0, Hi = 0, Wi = 0;  // input spatial size
  int64_t Do = 0, Ho = 0, Wo = 0;  // output spatial size (see out_size)
  int k = 3;                       // odd kernel size, 1..7
  int stride = 1;                  // 1 or 2 (ignored when transposed: always 2)
  bool transposed = false;
  // Output D-planes [d_begin, d_begin + d_count) of each sample are computed and stored (y holds only
  // those, d_count planes per sample); plan_shape sets the whole range. Chunks of planes let a caller
  // compute a large output piece by piece.
  int64_t d_begin = 0, d_count = 0;
  // Output rows per band (the kernel sweeps the planes once per band of rows, see dwconv_impl.inc);
  // 0 = sized for L2. Tests set small bands to cover band edges on small volumes.
  int64_t band_rows = 0;
};

constexpr int kMaxK = 7;

// Output length along one dimension: conv: floor((n + 2p - k)/s) + 1; transposed: (n-1)*2 - 2p + k.
int64_t out_size(int64_t n, int k, int stride, bool transposed);

// Fills Do/Ho/Wo from the input size and mode and selects every output plane (d_begin = 0,
// d_count = Do); returns false for an impossible configuration.
bool plan_shape(DwConvShape& s);

// The (tap, input index) pairs that contribute to output coordinate `o` along one dimension.
// Returns how many (<= k); taps[i] indexes the weight, idx[i] the input.
int dim_taps(int64_t o, int64_t n_in, int k, int stride, bool transposed, int* taps, int64_t* idx);

// Computes tasks [task_begin, task_end), task = n * d_count + (od - d_begin) for the selected output
// D-planes od, each stored at y + task * Ho*Wo*C (y null: statistics only, the output is discarded
// row by row into a small scratch). Adds each
// plane's per-channel sum and sum of squares into s1/s2 (N*C doubles, caller-owned, not thread-safe:
// give each thread its own). bias may be null. Uses about k * Hi * (Wi + k) * C floats of scratch.
void dwconv_planes(const DwConvShape& s, const float* x, const float* wt, const float* bias, float* y,
                   int64_t task_begin, int64_t task_end, double* s1, double* s2);

// Exact-form GELU 0.5 x (1 + erf(x / sqrt 2)) in place; |error| <= 2.3e-7 * max(1, |x|) (rational erf fit).
void gelu_inplace(float* x, int64_t n);

// Fused MLP over nv voxels (channels-last rows): out[v, :] = bc + res[v, :] (res may be null)
//   + gelu(y[v, :] @ we_t + be) @ wc_t, with we_t (C, RC) and wc_t (RC, Cout) row-major. The hidden
// stays in registers. Returns false (computing nothing) unless Cout is 16, 32 or 64 and RC % 32 == 0.
bool mlp_fused(const float* y, int64_t nv, int64_t C, const float* we_t, const float* be, int64_t RC,
               const float* wc_t, const float* bc, const float* res, float* out, int64_t Cout);

// Measured fp32 multiply-add peak of one thread with the current ISA build's widest vectors (GFLOP/s,
// registers only; iters ~ 1e7-1e8 for a stable clock): what the benchmarks compare kernels against.
double fma_peak_gflops(int64_t iters);

// Which ISA build the kernels use: "avx512", "avx2" or "default". set_isa forces one (for tests and
// benchmarks; returns false if the CPU lacks it or the name is unknown). Reads MEDNEXT_FAST_CPU_ISA once.
const char* isa();
bool set_isa(const char* name);

// Per-ISA entry points (defined in kernels_*.cpp through isa_build.inc); built() is false where the
// compiler could not target that ISA.
#define MNF_ISA_ENTRY_POINTS                                                                              \
    bool built();                                                                                         \
    void dwconv_planes(const DwConvShape&, const float*, const float*, const float*, float*, int64_t,     \
                       int64_t, double*, double*);                                                        \
    void gelu_inplace(float*, int64_t);                                                                   \
    bool mlp_fused(const float*, int64_t, int64_t, const float*, const float*, int64_t, const float*,     \
                   const float*, const float*, float*, int64_t);                                          \
    double fma_peak_gflops(int64_t);
namespace isa_avx512 { MNF_ISA_ENTRY_POINTS }
namespace isa_avx2 { MNF_ISA_ENTRY_POINTS }
namespace isa_default { MNF_ISA_ENTRY_POINTS }
#undef MNF_ISA_ENTRY_POINTS

}  // namespace cpu
}  // namespace mednext_fast
