// Small fp32 matrix products from cache-resident tiles, for the attention kernels (included per
// ISA by training.cc; no include guard, see train_simd.h).
//
//   C[m][n] (+)= sum_k A(m, k) B[k][n],   A(m, k) = A[m * a_m + k * a_k]
//
// B and C are row-major with N a multiple of W (callers pad); A is read by element with any two
// strides, so A or its transpose can be used without copying. Register blocks of kRows x NV
// vectors keep the accumulators in registers over the whole k loop.

constexpr int kRows = 4;
constexpr int kMaxVecs = W == 16 ? 4 : 2;  // AVX-512: 4 x 4 zmm accumulators; AVX2: 4 x 2 ymm

template <int R, int NV, bool ACC>
inline void micro_tile(const float* A, int64_t a_m, int64_t a_k, const float* B, int64_t ldb, int64_t K, float* C,
                       int64_t ldc) {
  vf acc[R][NV];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = ACC ? vld(C + r * ldc + v * W) : vzero();
  for (int64_t k = 0; k < K; ++k) {
    vf b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) b[v] = vld(B + k * ldb + v * W);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const vf a = vset(A[r * a_m + k * a_k]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = vfma(a, b[v], acc[r][v]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) vst(C + r * ldc + v * W, acc[r][v]);
}

template <int R, bool ACC>
inline void micro_rows(int nv, const float* A, int64_t a_m, int64_t a_k, const float* B, int64_t ldb, int64_t K,
                       float* C, int64_t ldc) {
  switch (nv) {
    case 1: micro_tile<R, 1, ACC>(A, a_m, a_k, B, ldb, K, C, ldc); break;
    case 2: micro_tile<R, 2, ACC>(A, a_m, a_k, B, ldb, K, C, ldc); break;
#if PANGU_VEC_WIDTH == 16
    case 3: micro_tile<R, 3, ACC>(A, a_m, a_k, B, ldb, K, C, ldc); break;
    case 4: micro_tile<R, 4, ACC>(A, a_m, a_k, B, ldb, K, C, ldc); break;
#endif
    default: break;
  }
}

// C [M, N] (+)= A (M x K, strides a_m, a_k) * B [K, N]; N % W == 0.
template <bool ACC>
inline void gemm_small(int64_t M, int64_t N, int64_t K, const float* A, int64_t a_m, int64_t a_k, const float* B,
                       int64_t ldb, float* C, int64_t ldc) {
  for (int64_t n0 = 0; n0 < N; n0 += kMaxVecs * W) {
    const int nv = static_cast<int>(std::min<int64_t>(kMaxVecs, (N - n0) / W));
    const int64_t full = M - M % kRows;
    for (int64_t m = 0; m < full; m += kRows)
      micro_rows<kRows, ACC>(nv, A + m * a_m, a_m, a_k, B + n0, ldb, K, C + m * ldc + n0, ldc);
    for (int64_t m = full; m < M; ++m)
      micro_rows<1, ACC>(nv, A + m * a_m, a_m, a_k, B + n0, ldb, K, C + m * ldc + n0, ldc);
  }
}
