// The vector layer of the CPU training kernels: one set of names over AVX-512 (16 floats) or
// AVX2 + FMA (8 floats), chosen by PANGU_VEC_WIDTH.
//
// No include guard on purpose: training.cc includes this file (and the kernels built on it) once
// inside `namespace avx2` and once inside `namespace avx512` (under `#pragma GCC target`), so one
// library holds both code paths and the loader picks one at run time.
//
// fp16 tensors arrive as raw IEEE half bits (uint16_t) and are widened to fp32 on load (F16C's
// vcvtph2ps, or its AVX-512 form) and rounded to nearest-even on store; all arithmetic is fp32.

using f16 = uint16_t;

#if PANGU_VEC_WIDTH == 16
constexpr int W = 16;
using vf = __m512;
using vi = __m512i;

inline __mmask16 tail_mask(int n) { return static_cast<__mmask16>((1u << n) - 1u); }
inline vf vzero() { return _mm512_setzero_ps(); }
inline vf vset(float x) { return _mm512_set1_ps(x); }
inline vf vld(const float* p) { return _mm512_loadu_ps(p); }
inline vf vld(const f16* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
inline void vst(float* p, vf v) { _mm512_storeu_ps(p, v); }
inline void vst(f16* p, vf v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}
// n < W lanes; the others load as 0 and are not stored
inline vf vld_n(const float* p, int n) { return _mm512_maskz_loadu_ps(tail_mask(n), p); }
inline vf vld_n(const f16* p, int n) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(tail_mask(n), p)); }
inline void vst_n(float* p, vf v, int n) { _mm512_mask_storeu_ps(p, tail_mask(n), v); }
inline void vst_n(f16* p, vf v, int n) {
  _mm256_mask_storeu_epi16(p, tail_mask(n), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}
inline vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
inline vf vsub(vf a, vf b) { return _mm512_sub_ps(a, b); }
inline vf vmul(vf a, vf b) { return _mm512_mul_ps(a, b); }
inline vf vdiv(vf a, vf b) { return _mm512_div_ps(a, b); }
inline vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }   // a * b + c
inline vf vfnma(vf a, vf b, vf c) { return _mm512_fnmadd_ps(a, b, c); } // c - a * b
inline vf vmax(vf a, vf b) { return _mm512_max_ps(a, b); }
inline vf vmin(vf a, vf b) { return _mm512_min_ps(a, b); }
inline vf vsqrt(vf a) { return _mm512_sqrt_ps(a); }
inline vf vround(vf a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline float hsum(vf v) { return _mm512_reduce_add_ps(v); }
inline float hmax(vf v) { return _mm512_reduce_max_ps(v); }
// 2^n for integral n in [-126, 127] (given as floats)
inline vf vpow2i(vf n) { return _mm512_scalef_ps(vset(1.0f), n); }
// lanes where a < b get 0, the others keep x
inline vf vzero_where_lt(vf x, vf a, vf b) { return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(a, b, _CMP_NLT_UQ), x); }
// the first n lanes of x, 0 in the others
inline vf vkeep_first(vf x, int n) { return _mm512_maskz_mov_ps(tail_mask(n), x); }
// lanes where the int32s a != b get `fill`
inline vf vfill_where_ne(vf x, vi a, vi b, vf fill) {
  return _mm512_mask_mov_ps(x, _mm512_cmpneq_epi32_mask(a, b), fill);
}
// lanes where the int32s a > b get `fill`
inline vf vfill_where_gt(vf x, vi a, vi b, vf fill) {
  return _mm512_mask_mov_ps(x, _mm512_cmpgt_epi32_mask(a, b), fill);
}
inline vi viload(const int32_t* p) { return _mm512_loadu_si512(p); }
inline vi viset(int32_t x) { return _mm512_set1_epi32(x); }
inline vi vistep() { return _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15); }
inline vi viadd(vi a, vi b) { return _mm512_add_epi32(a, b); }
// 16 x 16 transpose: r[i] lane j <- r[j] lane i
inline void transpose_w(vf r[16]) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
    r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
    r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
    r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
  }
  // r[4q + j] now holds, in each 128-bit lane L, rows 4L'.. of column block; finish with lane shuffles
  for (int j = 0; j < 4; ++j) {
    const __m512 a = r[j], b = r[4 + j], c = r[8 + j], d = r[12 + j];
    const __m512 ab_lo = _mm512_shuffle_f32x4(a, b, 0x44), ab_hi = _mm512_shuffle_f32x4(a, b, 0xEE);
    const __m512 cd_lo = _mm512_shuffle_f32x4(c, d, 0x44), cd_hi = _mm512_shuffle_f32x4(c, d, 0xEE);
    t[j] = _mm512_shuffle_f32x4(ab_lo, cd_lo, 0x88);
    t[4 + j] = _mm512_shuffle_f32x4(ab_lo, cd_lo, 0xDD);
    t[8 + j] = _mm512_shuffle_f32x4(ab_hi, cd_hi, 0x88);
    t[12 + j] = _mm512_shuffle_f32x4(ab_hi, cd_hi, 0xDD);
  }
  for (int i = 0; i < 16; ++i) r[i] = t[i];
}
#else
constexpr int W = 8;
using vf = __m256;
using vi = __m256i;

inline __m256i tail_mask(int n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline vf vzero() { return _mm256_setzero_ps(); }
inline vf vset(float x) { return _mm256_set1_ps(x); }
inline vf vld(const float* p) { return _mm256_loadu_ps(p); }
inline vf vld(const f16* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
inline void vst(float* p, vf v) { _mm256_storeu_ps(p, v); }
inline void vst(f16* p, vf v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}
inline vf vld_n(const float* p, int n) { return _mm256_maskload_ps(p, tail_mask(n)); }
inline vf vld_n(const f16* p, int n) {
  alignas(16) f16 buf[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int i = 0; i < n; ++i) buf[i] = p[i];
  return vld(buf);
}
inline void vst_n(float* p, vf v, int n) { _mm256_maskstore_ps(p, tail_mask(n), v); }
inline void vst_n(f16* p, vf v, int n) {
  alignas(16) f16 buf[8];
  vst(buf, v);
  for (int i = 0; i < n; ++i) p[i] = buf[i];
}
inline vf vadd(vf a, vf b) { return _mm256_add_ps(a, b); }
inline vf vsub(vf a, vf b) { return _mm256_sub_ps(a, b); }
inline vf vmul(vf a, vf b) { return _mm256_mul_ps(a, b); }
inline vf vdiv(vf a, vf b) { return _mm256_div_ps(a, b); }
inline vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
inline vf vfnma(vf a, vf b, vf c) { return _mm256_fnmadd_ps(a, b, c); }
inline vf vmax(vf a, vf b) { return _mm256_max_ps(a, b); }
inline vf vmin(vf a, vf b) { return _mm256_min_ps(a, b); }
inline vf vsqrt(vf a) { return _mm256_sqrt_ps(a); }
inline vf vround(vf a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline float hsum(vf v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline float hmax(vf v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline vf vpow2i(vf n) {
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_castsi256_ps(e);
}
inline vf vzero_where_lt(vf x, vf a, vf b) { return _mm256_and_ps(x, _mm256_cmp_ps(a, b, _CMP_NLT_UQ)); }
inline vf vkeep_first(vf x, int n) { return _mm256_and_ps(x, _mm256_castsi256_ps(tail_mask(n))); }
inline vf vfill_where_ne(vf x, vi a, vi b, vf fill) {
  return _mm256_blendv_ps(fill, x, _mm256_castsi256_ps(_mm256_cmpeq_epi32(a, b)));
}
inline vf vfill_where_gt(vf x, vi a, vi b, vf fill) {
  return _mm256_blendv_ps(x, fill, _mm256_castsi256_ps(_mm256_cmpgt_epi32(a, b)));
}
inline vi viload(const int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
// 8 x 8 transpose: r[i] lane j <- r[j] lane i
inline void transpose_w(vf r[8]) {
  __m256 t[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  __m256 u[8];
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int j = 0; j < 4; ++j) {
    r[j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x20);
    r[4 + j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x31);
  }
}
inline vi viset(int32_t x) { return _mm256_set1_epi32(x); }
inline vi vistep() { return _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7); }
inline vi viadd(vi a, vi b) { return _mm256_add_epi32(a, b); }
#endif

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

inline float to_f32(float x) { return x; }
inline float to_f32(f16 x) { return _cvtsh_ss(x); }
inline void from_f32(float* p, float x) { *p = x; }
inline void from_f32(f16* p, float x) { *p = _cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT); }

// e^x to about 2 ulp: x = n ln2 + r (Cody-Waite, |r| <= ln2 / 2), e^r by its degree-6 Taylor
// polynomial, times 2^n. Inputs above 88 are clamped (e^88 = 1.7e38 < FLT_MAX: never inf);
// below -87.3 the result is exactly 0 (so e^-inf = 0, as masked softmax entries need).
inline vf vexp(vf x) {
  const vf hi = vset(88.0f), lo = vset(-87.3365447504f);
  vf xc = vmin(x, hi);
  xc = vmax(xc, lo);
  const vf n = vround(vmul(xc, vset(1.44269504088896341f)));
  vf r = vfnma(n, vset(0.693359375f), xc);
  r = vfnma(n, vset(-2.12194440e-4f), r);
  vf p = vset(1.0f / 720.0f);
  p = vfma(p, r, vset(1.0f / 120.0f));
  p = vfma(p, r, vset(1.0f / 24.0f));
  p = vfma(p, r, vset(1.0f / 6.0f));
  p = vfma(p, r, vset(0.5f));
  p = vfma(p, r, vset(1.0f));
  p = vfma(p, r, vset(1.0f));
  return vzero_where_lt(vmul(p, vpow2i(n)), x, lo);
}

// 2^x (the attention softmax works in base 2): 2^x = e^(x ln2) without the Cody-Waite step,
// since x = n + f splits exactly; exactly 0 below -126 (2^-inf = 0).
inline vf vexp2(vf x) {
  const vf lo = vset(-126.0f);
  vf xc = vmin(x, vset(127.0f));
  xc = vmax(xc, lo);
  const vf n = vround(xc);
  const vf r = vmul(vsub(xc, n), vset(0.693147180559945309f));
  vf p = vset(1.0f / 720.0f);
  p = vfma(p, r, vset(1.0f / 120.0f));
  p = vfma(p, r, vset(1.0f / 24.0f));
  p = vfma(p, r, vset(1.0f / 6.0f));
  p = vfma(p, r, vset(0.5f));
  p = vfma(p, r, vset(1.0f));
  p = vfma(p, r, vset(1.0f));
  return vzero_where_lt(vmul(p, vpow2i(n)), x, lo);
}

// 1 / (1 + e^-x), finite for every finite x
inline vf vsigmoid(vf x) { return vdiv(vset(1.0f), vadd(vset(1.0f), vexp(vsub(vzero(), x)))); }
