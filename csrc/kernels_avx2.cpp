// AVX2 + FMA build of the CPU kernels; the bodies are dwconv_impl.inc, gelu_impl.inc and mlp_impl.inc (shared through isa_build.inc).
#include <algorithm>
#include <chrono>
#include <cstring>
#include <cstdint>
#include <utility>
#include <vector>

#include "cpu_kernels.h"

// GCC only: the pragma switches the ISA for the code below (auto-vectorised).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#pragma GCC target("avx2,fma,bmi2")
#define MNF_ISA_ENABLED 1
#endif
#define MNF_ISA_NS isa_avx2
#define MNF_VEC_BYTES 32  // widest float vector of the ISA (fma_peak)
#define MNF_AVX512 0  // AVX-512 intrinsics (fused MLP block, GELU on 16 lanes)
#define MNF_SLIDING 0  // stride-1 sliding-window blocks (need ~16 vector registers)
#define MNF_WB 4  // outputs per register block: 4 x 16 channels fill half the vector registers

#include "isa_build.inc"
