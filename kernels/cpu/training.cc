// CPU training kernels with backward passes, loaded by pangu_ms/kernels/cpu_training.py as
// MindSpore `ops.Custom(func_type="aot")` operators: bias + activation, residual add + LayerNorm,
// attention from document ids (online softmax), tied head + cross-entropy, and the AdamW update.
//
// One library, two code paths: every kernel is compiled once for AVX2 + FMA + F16C (the build's
// base flags) and once for AVX-512 (`#pragma GCC target` below), and exported as <Name>_avx2 and
// <Name>_avx512. The loader picks the suffix at run time from the CPU's flags (or the
// PANGU_MS_CPU_ISA override), so one build runs on both kinds of machine.
//
// Signature of every kernel (MindSpore's aot convention): params holds the inputs then the
// outputs, shapes[i] / ndims[i] / dtypes[i] describe params[i]; all tensors are contiguous.
// A nonzero return (see KernelError in train_args.h) makes MindSpore stop with that code.
#include <immintrin.h>
#include <sys/mman.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include "train_args.h"
#include "train_pool.h"

#define PANGU_EXPORT extern "C" __attribute__((visibility("default")))

#define PANGU_VEC_WIDTH 8
namespace avx2 {
#include "train_simd.h"
#include "train_norm_act.h"
#include "train_gemm_small.h"
#include "train_attention.h"
#include "train_gemm.h"
#include "train_head.h"
#include "train_adamw.h"
#include "train_entry.h"
}  // namespace avx2
#undef PANGU_VEC_WIDTH

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq")
#define PANGU_VEC_WIDTH 16
namespace avx512 {
#include "train_simd.h"
#include "train_norm_act.h"
#include "train_gemm_small.h"
#include "train_attention.h"
#include "train_gemm.h"
#include "train_head.h"
#include "train_adamw.h"
#include "train_entry.h"
}  // namespace avx512
#undef PANGU_VEC_WIDTH
#pragma GCC pop_options

#define PANGU_KERNEL(name)                                                                                   \
  PANGU_EXPORT int name##_avx2(int n, void** p, int* nd, int64_t** sh, const char** dt, void*, void*) {    \
    return avx2::name(pangu_args::Args{n, p, nd, sh, dt});                                                   \
  }                                                                                                          \
  PANGU_EXPORT int name##_avx512(int n, void** p, int* nd, int64_t** sh, const char** dt, void*, void*) {  \
    return avx512::name(pangu_args::Args{n, p, nd, sh, dt});                                                 \
  }

PANGU_KERNEL(BiasGeluFwd)
PANGU_KERNEL(BiasGeluBwd)
PANGU_KERNEL(BiasFastGeluFwd)
PANGU_KERNEL(BiasFastGeluBwd)
PANGU_KERNEL(AddLayerNormFwd)
PANGU_KERNEL(AddLayerNormBwd)
PANGU_KERNEL(FlashAttentionFwd)
PANGU_KERNEL(FlashAttentionBwd)
PANGU_KERNEL(TiedHeadCEFwd)
PANGU_KERNEL(TiedHeadCELoss)
PANGU_KERNEL(TiedHeadCEBwd)
PANGU_KERNEL(FusedAdamW)
PANGU_KERNEL(GradSquaredNorm)

// Threads the kernels use (the pool's size; see train_pool.h).
PANGU_EXPORT int PanguKernelThreads() { return pangu_pool::Pool::instance().threads(); }
