// AdamW over every parameter in one launch, updating fp32 master weights and moments in place
// (included per ISA by training.cc; no include guard, see train_simd.h).
//
// Inputs: hyper [6 + P] fp32 = (P, has_copies, beta1, beta2, eps, bias_correction, decay_0 ..
// decay_{P-1}), factor [] fp32 (the gradients' multiplier: loss-scale unscale times clip factor),
// overflow [] bool, lr [] fp32, step [] int32 or fp32 (this update's number, from 1), then P
// parameters, P first moments, P second moments (all fp32), P gradients (fp32 or fp16) and,
// with has_copies, P fp16 copies of the parameters. Output: [1] int32, 1 if applied, 0 if skipped.
// With overflow set nothing is written. Otherwise, per element (g = gradient * factor):
//   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   p = p - lr (m' / (sqrt(v') + eps) + decay p),  m' = m / (1 - b1^t), v' = v / (1 - b2^t) with
//   bias correction, else m' = m, v' = v (MindSpore's AdamWeightDecay: no bias correction)
// and the copy, if any, gets fp16(p). Work is cut into fixed 32K-element pieces of each
// parameter, taken by the threads in turn; every element is independent.

constexpr int64_t kAdamPiece = 32768;

template <class G>
inline void adamw_piece(float* p, float* m, float* v, const G* g, f16* copy, int64_t n, float factor, float b1,
                        float b2, float eps, float lr, float decay, float c1, float c2) {
  const vf vfac = vset(factor), vb1 = vset(b1), vb2 = vset(b2), va1 = vset(1.0f - b1), va2 = vset(1.0f - b2);
  const vf veps = vset(eps), vlr = vset(lr), vdec = vset(decay), vc1 = vset(c1), vc2 = vset(c2);
  auto step = [&](vf pv, vf mv, vf vv, vf gv, vf* po, vf* mo, vf* vo) {
    gv = vmul(gv, vfac);
    mv = vfma(vb1, mv, vmul(va1, gv));
    vv = vfma(vb2, vv, vmul(va2, vmul(gv, gv)));
    vf upd = vdiv(vmul(mv, vc1), vadd(vsqrt(vmul(vv, vc2)), veps));
    upd = vfma(vdec, pv, upd);
    *po = vfnma(vlr, upd, pv);
    *mo = mv;
    *vo = vv;
  };
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    vf po, mo, vo;
    step(vld(p + i), vld(m + i), vld(v + i), vld(g + i), &po, &mo, &vo);
    vst(p + i, po);
    vst(m + i, mo);
    vst(v + i, vo);
    if (copy) vst(copy + i, po);
  }
  if (i < n) {
    const int r = int(n - i);
    vf po, mo, vo;
    step(vld_n(p + i, r), vld_n(m + i, r), vld_n(v + i, r), vld_n(g + i, r), &po, &mo, &vo);
    vst_n(p + i, po, r);
    vst_n(m + i, mo, r);
    vst_n(v + i, vo, r);
    if (copy) vst_n(copy + i, po, r);
  }
}

int fused_adamw(const pangu_args::Args& a) {
  const float* hyper = a.at<float>(0);
  if (a.numel(0) < 6) return kBadArity;
  const int64_t np = static_cast<int64_t>(hyper[0]);
  const bool copies = hyper[1] != 0.0f;
  const int first = 5;
  if (a.numel(0) != 6 + np || a.count != first + np * (copies ? 5 : 4) + 1) return kBadArity;
  int32_t* applied = a.at<int32_t>(a.count - 1);
  applied[0] = 0;
  if (*a.at<bool>(2)) return kOk;  // overflow: skip the update, touch nothing
  const float factor = *a.at<float>(1), lr = *a.at<float>(3);
  const float t = a.single(4) ? *a.at<float>(4) : static_cast<float>(*a.at<int32_t>(4));
  const float b1 = hyper[2], b2 = hyper[3], eps = hyper[4];
  const bool bias_correction = hyper[5] != 0.0f;
  const float c1 = bias_correction ? 1.0f / (1.0f - std::pow(b1, t)) : 1.0f;
  const float c2 = bias_correction ? 1.0f / (1.0f - std::pow(b2, t)) : 1.0f;
  struct Piece {
    int64_t param, offset, size;
  };
  std::vector<Piece> pieces;
  for (int64_t i = 0; i < np; ++i) {
    const int pi = first + static_cast<int>(i), gi = pi + 3 * static_cast<int>(np);
    const int64_t n = a.numel(pi);
    if (a.numel(pi + np) != n || a.numel(pi + 2 * np) != n || a.numel(gi) != n) return kBadShape;
    if (!a.single(pi) || !a.single(pi + np) || !a.single(pi + 2 * np) || !(a.single(gi) || a.half(gi)))
      return kBadDtype;
    if (copies && (a.numel(gi + np) != n || !a.half(gi + np))) return kBadDtype;
    for (int64_t off = 0; off < n; off += kAdamPiece) pieces.push_back({i, off, std::min(kAdamPiece, n - off)});
  }
  pangu_pool::parallel_for(static_cast<int64_t>(pieces.size()), [&](int64_t k) {
    const Piece& pc = pieces[k];
    const int pi = first + static_cast<int>(pc.param), gi = pi + 3 * static_cast<int>(np);
    float* p = a.at<float>(pi) + pc.offset;
    float* m = a.at<float>(pi + np) + pc.offset;
    float* v = a.at<float>(pi + 2 * np) + pc.offset;
    f16* copy = copies ? a.at<f16>(gi + np) + pc.offset : nullptr;
    const float decay = hyper[6 + pc.param];
    if (a.half(gi))
      adamw_piece(p, m, v, a.at<f16>(gi) + pc.offset, copy, pc.size, factor, b1, b2, eps, lr, decay, c1, c2);
    else
      adamw_piece(p, m, v, a.at<float>(gi) + pc.offset, copy, pc.size, factor, b1, b2, eps, lr, decay, c1, c2);
  });
  applied[0] = 1;
  return kOk;
}

// (P gradients, fp32 or fp16) -> [1] fp32: the sum of squares of every element, for the global
// norm the clip factor and the overflow flag come from. Pieces as in fused_adamw, each summed in
// double, then added in piece order; an inf or NaN anywhere makes the result inf or NaN.
int grad_squared_norm(const pangu_args::Args& a) {
  const int np = a.count - 1;
  struct Piece {
    int param;
    int64_t offset, size;
  };
  std::vector<Piece> pieces;
  for (int i = 0; i < np; ++i) {
    if (!(a.single(i) || a.half(i))) return kBadDtype;
    const int64_t n = a.numel(i);
    for (int64_t off = 0; off < n; off += kAdamPiece) pieces.push_back({i, off, std::min(kAdamPiece, n - off)});
  }
  std::vector<double> partial(pieces.size(), 0.0);
  pangu_pool::parallel_for(static_cast<int64_t>(pieces.size()), [&](int64_t k) {
    const Piece& pc = pieces[k];
    vf acc = vzero();
    auto sum = [&](auto* g) {
      int64_t i = 0;
      for (; i + W <= pc.size; i += W) {
        const vf x = vld(g + i);
        acc = vfma(x, x, acc);
      }
      if (i < pc.size) {
        const vf x = vld_n(g + i, int(pc.size - i));
        acc = vfma(x, x, acc);
      }
    };
    if (a.half(pc.param))
      sum(a.at<f16>(pc.param) + pc.offset);
    else
      sum(a.at<float>(pc.param) + pc.offset);
    alignas(64) float lanes[W];
    vst(lanes, acc);
    double s = 0.0;
    for (int j = 0; j < W; ++j) s += lanes[j];
    partial[k] = s;
  });
  double total = 0.0;
  for (double p : partial) total += p;
  *a.at<float>(np) = static_cast<float>(total);
  return kOk;
}
