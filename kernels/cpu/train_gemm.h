// A packed fp32 matrix product for large operands (the tied head), Goto-style: operands are
// copied into panels, A in kMR-row panels stored k-major ([K][kMR]), B in kNR-column panels
// ([K][kNR]); a register-blocked micro-kernel computes one kMR x kNR block of C over a whole K
// range with the accumulators in registers. Included per ISA by training.cc (no include guard,
// see train_simd.h).
//
// AVX-512: kMR = 12, kNR = 32 (24 zmm accumulators); AVX2: kMR = 6, kNR = 16 (12 ymm).

constexpr int kNR = 2 * W;
constexpr int kMR = W == 16 ? 12 : 6;

// C[kMR, kNR] (+)= Ap[K][kMR]^T-as-rows x Bp[K][kNR]; only the first `rows` x `cols` of C are
// written (the panels are zero-padded past them).
template <bool ACC>
inline void micro_kernel(int64_t K, const float* __restrict ap, const float* __restrict bp, float* C, int64_t ldc,
                         int rows, int cols) {
  vf c0[kMR], c1[kMR];
#pragma GCC unroll 12
  for (int i = 0; i < kMR; ++i) c0[i] = c1[i] = vzero();
  for (int64_t k = 0; k < K; ++k) {
    const vf b0 = vld(bp + k * kNR), b1 = vld(bp + k * kNR + W);
    const float* a = ap + k * kMR;
#pragma GCC unroll 12
    for (int i = 0; i < kMR; ++i) {
      const vf ai = vset(a[i]);
      c0[i] = vfma(ai, b0, c0[i]);
      c1[i] = vfma(ai, b1, c1[i]);
    }
  }
  if (rows == kMR && cols == kNR) {
#pragma GCC unroll 12
    for (int i = 0; i < kMR; ++i) {
      float* ci = C + i * ldc;
      vst(ci, ACC ? vadd(vld(ci), c0[i]) : c0[i]);
      vst(ci + W, ACC ? vadd(vld(ci + W), c1[i]) : c1[i]);
    }
    return;
  }
  for (int i = 0; i < rows; ++i) {
    float* ci = C + i * ldc;
    alignas(64) float tmp[kNR];
    vst(tmp, c0[i]);
    vst(tmp + W, c1[i]);
    for (int j = 0; j < cols; ++j) ci[j] = ACC ? ci[j] + tmp[j] : tmp[j];
  }
}

// Pack columns [n0, n0 + kNR) of B (element (k, n) at b[k * b_k + n * b_n], k < K, n < N) into
// out[K][kNR], zero past N.
template <class T>
inline void pack_b_panel(const T* b, int64_t b_k, int64_t b_n, int64_t K, int64_t N, int64_t n0, float* out) {
  const int cols = static_cast<int>(std::min<int64_t>(kNR, N - n0));
  if (b_n == 1) {  // rows of B are contiguous: copy kNR at a time
    for (int64_t k = 0; k < K; ++k) {
      const T* src = b + k * b_k + n0;
      float* dst = out + k * kNR;
      if (cols == kNR) {
        vst(dst, vld(src));
        vst(dst + W, vld(src + W));
      } else {
        for (int j = 0; j < kNR; ++j) dst[j] = j < cols ? to_f32(src[j]) : 0.0f;
      }
    }
    return;
  }
  for (int64_t k = 0; k < K; ++k) {
    float* dst = out + k * kNR;
    for (int j = 0; j < kNR; ++j) dst[j] = j < cols ? to_f32(b[k * b_k + (n0 + j) * b_n]) : 0.0f;
  }
}

// Pack rows [m0, m0 + kMR) x k in [k0, k0 + kc) of A (element (m, k) at a[m * a_m + k * a_k],
// m < M) into out[kc][kMR], zero past M. Either a_m == 1 (A is a transpose: contiguous copies)
// or a_k == 1 (A row-major: transposed in registers).
template <class T>
inline void pack_a_panel(const T* a, int64_t a_m, int64_t a_k, int64_t M, int64_t m0, int64_t k0, int64_t kc,
                         float* out) {
  const int rows = static_cast<int>(std::min<int64_t>(kMR, M - m0));
  if (a_m == 1) {  // columns of A are contiguous (A is a transpose): copy kMR at a time
    for (int64_t k = 0; k < kc; ++k) vst_n(out + k * kMR, vld_n(a + (k0 + k) * a_k + m0, rows), kMR);
    return;
  }
  int64_t k = 0;
  for (; k + W <= kc; k += W) {  // rows of A contiguous: W x W register transposes
    vf r[W];
    for (int i = 0; i < W; ++i) r[i] = i < rows ? vld(a + (m0 + i) * a_m + k0 + k) : vzero();
    transpose_w(r);
    for (int j = 0; j < W; ++j) vst_n(out + (k + j) * kMR, r[j], kMR);
  }
  if (k == kc) return;
  for (int i = 0; i < kMR; ++i) {
    if (i >= rows) {
      for (int64_t kk = k; kk < kc; ++kk) out[kk * kMR + i] = 0.0f;
      continue;
    }
    const T* src = a + (m0 + i) * a_m + k0;
    for (int64_t kk = k; kk < kc; ++kk) out[kk * kMR + i] = to_f32(src[kk]);
  }
}

// C[M, N] (+)= A_packed x B_packed for pre-packed operands: ap holds ceil(M / kMR) panels of
// [K][kMR] and bp ceil(N / kNR) panels of [K][kNR] (each panel `K` deep, with panel strides
// ap_stride / bp_stride floats). B is walked in blocks of about 768 KB (kept in L2) and, within a
// block, each A panel (in L1) meets every B panel, so C is written a few KB at a time along its
// rows rather than 128 bytes per row across thousands of rows.
template <bool ACC>
inline void gemm_packed(int64_t M, int64_t N, int64_t K, const float* ap, int64_t ap_stride, const float* bp,
                        int64_t bp_stride, float* C, int64_t ldc) {
  const int64_t panels = (N + kNR - 1) / kNR;
  const int64_t block = std::max<int64_t>(1, (768 * 1024) / std::max<int64_t>(1, K * kNR * 4));
  for (int64_t j0 = 0; j0 < panels; j0 += block) {
    const int64_t j1 = std::min(panels, j0 + block);
    for (int64_t m0 = 0, ip = 0; m0 < M; m0 += kMR, ++ip) {
      const int rows = static_cast<int>(std::min<int64_t>(kMR, M - m0));
      for (int64_t jp = j0; jp < j1; ++jp) {
        const int64_t n0 = jp * kNR;
        const int cols = static_cast<int>(std::min<int64_t>(kNR, N - n0));
        micro_kernel<ACC>(K, ap + ip * ap_stride, bp + jp * bp_stride, C + m0 * ldc + n0, ldc, rows, cols);
      }
    }
  }
}
