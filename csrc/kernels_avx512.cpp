// AVX-512 build of the CPU kernels; the bodies are dwconv_impl.inc, gelu_impl.inc and mlp_impl.inc (shared through isa_build.inc).
#include <algorithm>
#include <chrono>
#include <cstring>
#include <cstdint>
#include <utility>
#include <vector>

#include "cpu_kernels.h"

// GCC only: the pragma switches the ISA for the code below (auto-vectorised, plus AVX-512 intrinsics in
// the row-pair conv kernel).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,bmi2,prefer-vector-width=512")
#define MNF_ISA_ENABLED 1
#include <immintrin.h>
#endif
#define MNF_ISA_NS isa_avx512
#define MNF_VEC_BYTES 64  // widest float vector of the ISA (fma_peak)
#define MNF_AVX512 1  // AVX-512 intrinsics (fused MLP block, GELU on 16 lanes)
#define MNF_SLIDING 1  // stride-1 sliding-window blocks (need ~16 vector registers)
#define MNF_WB 8  // outputs per register block: 8 x 16 channels fill half the vector registers
#define MNF_SLIDE_WB 16  // sliding blocks: 16 accumulators + K <= 7 weights + 1 input <= 24 of 32 zmm

#include "isa_build.inc"
