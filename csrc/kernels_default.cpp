// baseline x86-64 (SSE2) or any non-x86 CPU build of the CPU kernels; the bodies are dwconv_impl.inc, gelu_impl.inc and mlp_impl.inc (same in all kernels_*.cpp).
#include <algorithm>
#include <cstring>
#include <cstdint>
#include <vector>

#include "cpu_kernels.h"

#define MNF_ISA_ENABLED 1
#define MNF_ISA_NS isa_default
#define MNF_SLIDING 0  // stride-1 sliding-window blocks (need ~16 vector registers)
#define MNF_WB 2  // outputs per register block: 2 x 16 channels fill half the vector registers

#ifdef MNF_ISA_ENABLED
#include "dwconv_impl.inc"
#include "gelu_impl.inc"
#include "mlp_impl.inc"
namespace mednext_fast { namespace cpu { namespace isa_default { bool built() { return true; } } } }
#else
// This compiler cannot target the ISA: a stub that dispatch.cpp never selects.
namespace mednext_fast { namespace cpu { namespace isa_default {
bool built() { return false; }
void dwconv_planes(const DwConvShape&, const float*, const float*, const float*, float*, int64_t, int64_t,
                   double*, double*) {}
void gelu_inplace(float*, int64_t) {}
bool mlp_fused(const float*, int64_t, int64_t, const float*, const float*, int64_t, const float*, const float*,
               const float*, float*, int64_t) { return false; }
} } }
#endif
