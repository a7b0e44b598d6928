// Causal attention within documents, tiled with an online softmax, forward and backward
// (included per ISA by training.cc; no include guard, see train_simd.h).
//
// q, k, v [B, N, S, D] (fp32 or fp16, q not scaled), doc [B, S] int32: query i sees key j iff
// j <= i and doc[b, i] == doc[b, j]. Scores are s = q.k / sqrt(D); the kernels work in base 2
// (q is scaled by log2(e) / sqrt(D) once, then exp2), which is the same softmax.
//
// Forward (per head, one task each): query tiles of kTile rows against key blocks of kTile keys,
// keeping per row the running maximum m, the running sum l and the unnormalised output; blocks
// that no query of the tile may see (later keys, or only other documents by the tile's range of
// document ids) are skipped, and blocks that every query sees in full need no mask. Output:
// ctx = O / l and the row's log-sum-exp in base 2, lse = log2(sum_j 2^(s_ij log2 e)) = ln(sum_j
// e^s_ij) log2 e, the only thing kept (base 2, so the backward's P = 2^(s log2 e - lse) has no
// round trip through ln: at |s| ~ 1e5 that alone would move P by 0.5%).
//
// Backward (per head; FlashAttention-2's order): for each key block, over the query tiles that
// see it, recompute P = exp(s - lse), then dV += P^T dO, dP = dO V^T, dS = P (dP - rowsum(dO O)),
// dK += dS^T Q / sqrt(D), dQ += dS K / sqrt(D). No S x S matrix is ever stored.

constexpr int64_t kTile = 64;
constexpr float kLog2e = 1.44269504088896341f;

// Per head, fp32 copies of the operands in the layouts the products want, and the tile bounds.
struct HeadBuffers {
  std::vector<float> qs, kt, kr, vt, vr, dout;  // [Sp, Dp] rows or [Dp, Sp] transposes
  std::vector<int32_t> doc;                       // [Sp]; keys past S never pass the causal test
  std::vector<int32_t> doc_lo, doc_hi;            // per tile: smallest and largest document id
};

template <class T>
inline void load_rows(const T* src, int64_t s, int64_t d, int64_t dp, float mul, float* dst) {
  const vf vm = vset(mul);
  for (int64_t i = 0; i < s; ++i) {
    const T* a = src + i * d;
    float* o = dst + i * dp;
    int64_t j = 0;
    for (; j + W <= d; j += W) vst(o + j, vmul(vld(a + j), vm));
    if (j < d) vst(o + j, vmul(vld_n(a + j, int(d - j)), vm));  // zero padding to dp
  }
}

template <class T>
inline void load_transposed(const T* src, int64_t s, int64_t d, int64_t sp, float* dst) {
  for (int64_t i = 0; i < s; ++i)
    for (int64_t j = 0; j < d; ++j) dst[j * sp + i] = to_f32(src[i * d + j]);
}

inline void load_doc(const int32_t* doc, int64_t s, HeadBuffers& hb) {
  const int64_t sp = round_up(s, kTile), tiles = sp / kTile;
  hb.doc.assign(sp, 0);
  std::copy(doc, doc + s, hb.doc.begin());
  hb.doc_lo.assign(tiles, INT32_MAX);
  hb.doc_hi.assign(tiles, INT32_MIN);
  for (int64_t i = 0; i < s; ++i) {
    hb.doc_lo[i / kTile] = std::min(hb.doc_lo[i / kTile], doc[i]);
    hb.doc_hi[i / kTile] = std::max(hb.doc_hi[i / kTile], doc[i]);
  }
}

enum class Visibility { kNone, kPartial, kFull };

// What query tile `qt` sees of key block `kb` (same tiling for both).
inline Visibility visibility(const HeadBuffers& hb, int64_t qt, int64_t kb) {
  if (kb > qt) return Visibility::kNone;
  if (hb.doc_hi[kb] < hb.doc_lo[qt] || hb.doc_lo[kb] > hb.doc_hi[qt]) return Visibility::kNone;
  const bool one_doc = hb.doc_lo[kb] == hb.doc_hi[kb] && hb.doc_lo[qt] == hb.doc_hi[qt] &&
                       hb.doc_lo[kb] == hb.doc_lo[qt];
  return (kb < qt && one_doc) ? Visibility::kFull : Visibility::kPartial;
}

// -inf where query i0 + r may not see key j0 + c, for the `rows` rows of a [kTile, kTile] tile.
inline void mask_tile(float* tile, int64_t rows, int64_t i0, int64_t j0, const HeadBuffers& hb) {
  const vf ninf = vset(-INFINITY);
  for (int64_t r = 0; r < rows; ++r) {
    const vi qi = viset(static_cast<int32_t>(i0 + r)), qd = viset(hb.doc[i0 + r]);
    float* t = tile + r * kTile;
    for (int64_t c = 0; c < kTile; c += W) {
      const vi kj = viadd(viset(static_cast<int32_t>(j0 + c)), vistep());
      vf s = vfill_where_gt(vld(t + c), kj, qi, ninf);
      s = vfill_where_ne(s, viload(&hb.doc[j0 + c]), qd, ninf);
      vst(t + c, s);
    }
  }
}

template <class T>
void attention_fwd_head(const T* q, const T* k, const T* v, const int32_t* doc, int64_t s, int64_t d, T* ctx,
                        float* lse) {
  thread_local HeadBuffers hb;
  thread_local std::vector<float> o, tile, m, l;
  const int64_t dp = round_up(d, W), sp = round_up(s, kTile), tiles = sp / kTile;
  hb.qs.assign(sp * dp, 0.0f);
  hb.kt.assign(dp * sp, 0.0f);
  hb.vr.assign(sp * dp, 0.0f);
  load_rows(q, s, d, dp, kLog2e / std::sqrt(static_cast<float>(d)), hb.qs.data());
  load_transposed(k, s, d, sp, hb.kt.data());
  load_rows(v, s, d, dp, 1.0f, hb.vr.data());
  load_doc(doc, s, hb);
  o.resize(kTile * dp);
  tile.resize(kTile * kTile);
  m.resize(kTile);
  l.resize(kTile);
  for (int64_t qt = 0; qt < tiles; ++qt) {
    const int64_t i0 = qt * kTile, rows = std::min(kTile, s - i0);
    std::fill(o.begin(), o.end(), 0.0f);
    std::fill(m.begin(), m.end(), -INFINITY);
    std::fill(l.begin(), l.end(), 0.0f);
    for (int64_t kb = 0; kb <= qt; ++kb) {
      const Visibility vis = visibility(hb, qt, kb);
      if (vis == Visibility::kNone) continue;
      const int64_t j0 = kb * kTile;
      gemm_small<false>(rows, kTile, d, &hb.qs[i0 * dp], dp, 1, &hb.kt[j0], sp, tile.data(), kTile);  // S
      if (vis == Visibility::kPartial) mask_tile(tile.data(), rows, i0, j0, hb);
      for (int64_t r = 0; r < rows; ++r) {
        float* t = &tile[r * kTile];
        vf mx = vset(-INFINITY);
        for (int64_t c = 0; c < kTile; c += W) mx = vmax(mx, vld(t + c));
        const float m_new = std::max(m[r], hmax(mx));
        if (m_new == -INFINITY) {  // nothing visible in this row yet
          for (int64_t c = 0; c < kTile; c += W) vst(t + c, vzero());
          continue;
        }
        const vf vm = vset(m_new);
        vf sum = vzero();
        for (int64_t c = 0; c < kTile; c += W) {
          const vf p = vexp2(vsub(vld(t + c), vm));
          vst(t + c, p);
          sum = vadd(sum, p);
        }
        if (m_new != m[r]) {
          const float alpha = std::exp2(m[r] - m_new);  // 0 while m was -inf
          const vf va = vset(alpha);
          float* orow = &o[r * dp];
          for (int64_t c = 0; c < dp; c += W) vst(orow + c, vmul(vld(orow + c), va));
          l[r] *= alpha;
          m[r] = m_new;
        }
        l[r] += hsum(sum);
      }
      gemm_small<true>(rows, dp, kTile, tile.data(), kTile, 1, &hb.vr[j0 * dp], dp, o.data(), dp);  // O += P V
    }
    for (int64_t r = 0; r < rows; ++r) {
      const vf inv = vset(1.0f / l[r]);
      T* out = ctx + (i0 + r) * d;
      const float* orow = &o[r * dp];
      int64_t c = 0;
      for (; c + W <= d; c += W) vst(out + c, vmul(vld(orow + c), inv));
      if (c < d) vst_n(out + c, vmul(vld(orow + c), inv), int(d - c));
      lse[i0 + r] = m[r] + std::log2(l[r]);  // base 2: the backward subtracts it from base-2 scores as is
    }
  }
}

// (q, k, v [B, N, S, D], doc [B, S] int32) -> (ctx [B, N, S, D], lse [B, N, S] fp32)
int flash_attention_fwd(const pangu_args::Args& a) {
  const int64_t b = a.dim(0, 0), n = a.dim(0, 1), s = a.dim(0, 2), d = a.dim(0, 3);
  if (a.ndims[0] != 4 || a.numel(1) != a.numel(0) || a.numel(2) != a.numel(0) || a.numel(3) != b * s ||
      std::strcmp(a.dtypes[1], a.dtypes[0]) || std::strcmp(a.dtypes[2], a.dtypes[0]))
    return kBadShape;
  return with_type(a, 0, [&](auto tag) {
    using T = decltype(tag);
    const T *q = a.at<T>(0), *k = a.at<T>(1), *v = a.at<T>(2);
    const int32_t* doc = a.at<int32_t>(3);
    T* ctx = a.at<T>(4);
    float* lse = a.at<float>(5);
    pangu_pool::parallel_for(b * n, [&](int64_t h) {
      const int64_t off = h * s * d;
      attention_fwd_head(q + off, k + off, v + off, doc + (h / n) * s, s, d, ctx + off, lse + h * s);
    });
    return int(kOk);
  });
}

template <class T>
void attention_bwd_head(const T* q, const T* k, const T* v, const int32_t* doc, const T* ctx, const float* lse,
                        const T* dctx, int64_t s, int64_t d, T* dq, T* dk, T* dv) {
  thread_local HeadBuffers hb;
  thread_local std::vector<float> ctx32, lse2, delta, dq32, dk32, dv32, p, dp_, ds;
  const int64_t dp = round_up(d, W), sp = round_up(s, kTile), tiles = sp / kTile;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  hb.qs.assign(sp * dp, 0.0f);
  hb.kt.assign(dp * sp, 0.0f);
  hb.kr.assign(sp * dp, 0.0f);
  hb.vt.assign(dp * sp, 0.0f);
  hb.dout.assign(sp * dp, 0.0f);
  ctx32.assign(sp * dp, 0.0f);
  load_rows(q, s, d, dp, kLog2e * scale, hb.qs.data());
  load_transposed(k, s, d, sp, hb.kt.data());
  load_rows(k, s, d, dp, 1.0f, hb.kr.data());
  load_transposed(v, s, d, sp, hb.vt.data());
  load_rows(dctx, s, d, dp, 1.0f, hb.dout.data());
  load_rows(ctx, s, d, dp, 1.0f, ctx32.data());
  load_doc(doc, s, hb);
  lse2.resize(s);
  delta.resize(s);
  for (int64_t i = 0; i < s; ++i) {
    lse2[i] = lse[i];
    vf acc = vzero();
    for (int64_t c = 0; c < dp; c += W) acc = vfma(vld(&hb.dout[i * dp + c]), vld(&ctx32[i * dp + c]), acc);
    delta[i] = hsum(acc);  // rowsum(dO * O)
  }
  dq32.assign(sp * dp, 0.0f);
  dk32.resize(kTile * dp);
  dv32.resize(kTile * dp);
  p.resize(kTile * kTile);
  dp_.resize(kTile * kTile);
  ds.resize(kTile * kTile);
  for (int64_t kb = 0; kb < tiles; ++kb) {
    const int64_t j0 = kb * kTile, keys = std::min(kTile, s - j0);
    std::fill(dk32.begin(), dk32.end(), 0.0f);
    std::fill(dv32.begin(), dv32.end(), 0.0f);
    for (int64_t qt = kb; qt < tiles; ++qt) {
      const Visibility vis = visibility(hb, qt, kb);
      if (vis == Visibility::kNone) continue;
      const int64_t i0 = qt * kTile, rows = std::min(kTile, s - i0);
      gemm_small<false>(rows, kTile, d, &hb.qs[i0 * dp], dp, 1, &hb.kt[j0], sp, p.data(), kTile);  // S (base 2)
      if (vis == Visibility::kPartial) mask_tile(p.data(), rows, i0, j0, hb);
      gemm_small<false>(rows, kTile, d, &hb.dout[i0 * dp], dp, 1, &hb.vt[j0], sp, dp_.data(), kTile);  // dP
      for (int64_t r = 0; r < rows; ++r) {
        const vf l2 = vset(lse2[i0 + r]), dl = vset(delta[i0 + r]);
        float *pr = &p[r * kTile], *dpr = &dp_[r * kTile], *dsr = &ds[r * kTile];
        for (int64_t c = 0; c < kTile; c += W) {
          const vf pv = vexp2(vsub(vld(pr + c), l2));
          vst(pr + c, pv);
          vst(dsr + c, vmul(pv, vsub(vld(dpr + c), dl)));
        }
      }
      // dV += P^T dO and dK += dS^T Q (A read transposed: a_m = 1, a_k = kTile)
      gemm_small<true>(kTile, dp, rows, p.data(), 1, kTile, &hb.dout[i0 * dp], dp, dv32.data(), dp);
      gemm_small<true>(kTile, dp, rows, ds.data(), 1, kTile, &hb.qs[i0 * dp], dp, dk32.data(), dp);
      gemm_small<true>(rows, dp, kTile, ds.data(), kTile, 1, &hb.kr[j0 * dp], dp, &dq32[i0 * dp], dp);  // dQ
    }
    // dK was accumulated against the base-2-scaled Q: times scale / (scale log2 e) = 1 / log2 e
    const vf kscale = vset(1.0f / kLog2e);
    for (int64_t c = 0; c < keys; ++c) {
      T *dkr = dk + (j0 + c) * d, *dvr = dv + (j0 + c) * d;
      int64_t e = 0;
      for (; e + W <= d; e += W) {
        vst(dkr + e, vmul(vld(&dk32[c * dp + e]), kscale));
        vst(dvr + e, vld(&dv32[c * dp + e]));
      }
      if (e < d) {
        vst_n(dkr + e, vmul(vld(&dk32[c * dp + e]), kscale), int(d - e));
        vst_n(dvr + e, vld(&dv32[c * dp + e]), int(d - e));
      }
    }
  }
  const vf qscale = vset(scale);
  for (int64_t i = 0; i < s; ++i) {
    T* out = dq + i * d;
    int64_t e = 0;
    for (; e + W <= d; e += W) vst(out + e, vmul(vld(&dq32[i * dp + e]), qscale));
    if (e < d) vst_n(out + e, vmul(vld(&dq32[i * dp + e]), qscale), int(d - e));
  }
}

// (q, k, v, doc, ctx, lse, dctx) -> (dq, dk, dv), shapes and dtypes as in the forward
int flash_attention_bwd(const pangu_args::Args& a) {
  const int64_t b = a.dim(0, 0), n = a.dim(0, 1), s = a.dim(0, 2), d = a.dim(0, 3);
  if (a.ndims[0] != 4 || a.numel(1) != a.numel(0) || a.numel(2) != a.numel(0) || a.numel(3) != b * s ||
      a.numel(4) != a.numel(0) || a.numel(5) != b * n * s || a.numel(6) != a.numel(0))
    return kBadShape;
  for (int i : {1, 2, 4, 6})
    if (std::strcmp(a.dtypes[i], a.dtypes[0])) return kBadDtype;
  return with_type(a, 0, [&](auto tag) {
    using T = decltype(tag);
    const T *q = a.at<T>(0), *k = a.at<T>(1), *v = a.at<T>(2), *ctx = a.at<T>(4), *dctx = a.at<T>(6);
    const int32_t* doc = a.at<int32_t>(3);
    const float* lse = a.at<float>(5);
    T *dq = a.at<T>(7), *dk = a.at<T>(8), *dv = a.at<T>(9);
    pangu_pool::parallel_for(b * n, [&](int64_t h) {
      const int64_t off = h * s * d;
      attention_bwd_head(q + off, k + off, v + off, doc + (h / n) * s, ctx + off, lse + h * s, dctx + off, s, d,
                         dq + off, dk + off, dv + off);
    });
    return int(kOk);
  });
}
