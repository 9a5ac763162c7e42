// AVX-512 build of the CPU kernels; the bodies are dwconv_impl.inc, gelu_impl.inc and mlp_impl.inc (same in all kernels_*.cpp).
#include <algorithm>
#include <cstring>
#include <cstdint>
#include <vector>

#include "cpu_kernels.h"

// GCC only: the pragma switches the ISA for the code below (intrinsics-free, auto-vectorised).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,bmi2,prefer-vector-width=512")
#define MNF_ISA_ENABLED 1
#endif
#define MNF_ISA_NS isa_avx512
#define MNF_SLIDING 1  // stride-1 sliding-window blocks (need ~16 vector registers)
#define MNF_WB 8  // outputs per register block: 8 x 16 channels fill half the vector registers

#ifdef MNF_ISA_ENABLED
#include "dwconv_impl.inc"
#include "gelu_impl.inc"
#include "mlp_impl.inc"
namespace mednext_fast { namespace cpu { namespace isa_avx512 { bool built() { return true; } } } }
#else
// This compiler cannot target the ISA: a stub that dispatch.cpp never selects.
namespace mednext_fast { namespace cpu { namespace isa_avx512 {
bool built() { return false; }
void dwconv_planes(const DwConvShape&, const float*, const float*, const float*, float*, int64_t, int64_t,
                   double*, double*) {}
void gelu_inplace(float*, int64_t) {}
bool mlp_fused(const float*, int64_t, int64_t, const float*, const float*, int64_t, const float*, const float*,
               const float*, float*, int64_t) { return false; }
} } }
#endif
