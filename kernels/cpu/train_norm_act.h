// Bias + activation and residual add + LayerNorm, forward and backward (included per ISA by
// training.cc; no include guard, see train_simd.h).
//
// Rows are independent, so threads take blocks of rows. The parameter gradients (bias, gamma,
// beta) are column sums over all rows: each block of kRowBlock rows writes its own partial sums,
// then the partials are added in block order, so the sums do not depend on the thread count.

constexpr int64_t kRowBlock = 64;

// Run f(float-or-f16 tag) for the element type of tensor i.
template <class F>
inline int with_type(const pangu_args::Args& a, int i, F&& f) {
  if (a.half(i)) return f(f16{});
  if (a.single(i)) return f(float{});
  return kBadDtype;
}

// A [n] vector of floats or halves, widened to fp32 and zero-padded to a multiple of W.
template <class T>
inline std::vector<float> widen_padded(const T* p, int64_t n) {
  std::vector<float> out((n + W - 1) / W * W, 0.0f);
  for (int64_t i = 0; i < n; ++i) out[i] = to_f32(p[i]);
  return out;
}

// Sum the [blocks, n] partials over blocks (in block order) into out[n] (float or half).
template <class T>
inline void reduce_partials(const float* partial, int64_t blocks, int64_t n, int64_t stride, T* out) {
  const int64_t cols_per_task = 256;
  pangu_pool::parallel_for((n + cols_per_task - 1) / cols_per_task, [&](int64_t t) {
    const int64_t c1 = std::min(n, (t + 1) * cols_per_task);
    for (int64_t c = t * cols_per_task; c < c1; ++c) {
      float s = 0.0f;
      for (int64_t b = 0; b < blocks; ++b) s += partial[b * stride + c];
      from_f32(out + c, s);
    }
  });
}

// ---------------------------------------------------------------- bias + activation

enum class Act { kGelu, kFastGelu };

// The model's tanh GELU, z * sigmoid(z (c1 + c3 z^2)) with c1 = 2 sqrt(2/pi), c3 = 0.044715 c1
// (pangu_ms/kernels/norm_act.py GELU), or fast GELU z * sigmoid(1.702 z).
template <Act A>
inline vf act_arg(vf z) {
  if (A == Act::kGelu) return vmul(z, vfma(vset(0.07135481627260025f), vmul(z, z), vset(1.5957691216057308f)));
  return vmul(z, vset(1.702f));
}

template <Act A>
inline vf act_fwd(vf z) { return vmul(z, vsigmoid(act_arg<A>(z))); }

// d/dz z s(u(z)) = s + z s (1 - s) u'(z)
template <Act A>
inline vf act_grad(vf z) {
  const vf s = vsigmoid(act_arg<A>(z));
  const vf du = A == Act::kGelu ? vfma(vset(3.0f * 0.07135481627260025f), vmul(z, z), vset(1.5957691216057308f))
                                : vset(1.702f);
  return vfma(vmul(z, vmul(s, vsub(vset(1.0f), s))), du, s);
}

// y [T, F] = act(x [T, F] + bias [F])
template <Act A>
int bias_act_fwd(const pangu_args::Args& a) {
  const int64_t f = a.dim(0, -1), rows = a.numel(0) / f;
  if (a.numel(1) != f) return kBadShape;
  return with_type(a, 0, [&](auto tx) {
    using TX = decltype(tx);
    return with_type(a, 1, [&](auto tb) {
      using TB = decltype(tb);
      const std::vector<float> bias = widen_padded(a.at<TB>(1), f);
      const TX* x = a.at<TX>(0);
      TX* y = a.at<TX>(2);
      pangu_pool::parallel_for((rows + kRowBlock - 1) / kRowBlock, [&](int64_t t) {
        const int64_t r1 = std::min(rows, (t + 1) * kRowBlock);
        for (int64_t r = t * kRowBlock; r < r1; ++r) {
          const TX* xr = x + r * f;
          TX* yr = y + r * f;
          int64_t j = 0;
          for (; j + W <= f; j += W) vst(yr + j, act_fwd<A>(vadd(vld(xr + j), vld(&bias[j]))));
          if (j < f) vst_n(yr + j, act_fwd<A>(vadd(vld_n(xr + j, int(f - j)), vld(&bias[j]))), int(f - j));
        }
      });
      return int(kOk);
    });
  });
}

// (x [T, F], bias [F], dy [T, F]) -> (dx [T, F] = dy act'(x + bias), dbias [F] = column sums of dx)
template <Act A>
int bias_act_bwd(const pangu_args::Args& a) {
  const int64_t f = a.dim(0, -1), rows = a.numel(0) / f;
  if (a.numel(1) != f || a.numel(2) != a.numel(0)) return kBadShape;
  return with_type(a, 0, [&](auto tx) {
    using TX = decltype(tx);
    return with_type(a, 1, [&](auto tb) {
      using TB = decltype(tb);
      const std::vector<float> bias = widen_padded(a.at<TB>(1), f);
      const int64_t fp = static_cast<int64_t>(bias.size()), blocks = (rows + kRowBlock - 1) / kRowBlock;
      std::vector<float> partial(blocks * fp);
      const TX* x = a.at<TX>(0);
      const TX* dy = a.at<TX>(2);
      TX* dx = a.at<TX>(3);
      pangu_pool::parallel_for(blocks, [&](int64_t t) {
        float* acc = &partial[t * fp];
        const int64_t r1 = std::min(rows, (t + 1) * kRowBlock);
        for (int64_t j = 0; j < fp; j += W) vst(acc + j, vzero());
        for (int64_t r = t * kRowBlock; r < r1; ++r) {
          const TX* xr = x + r * f;
          const TX* dyr = dy + r * f;
          TX* dxr = dx + r * f;
          int64_t j = 0;
          for (; j + W <= f; j += W) {
            const vf g = vmul(vld(dyr + j), act_grad<A>(vadd(vld(xr + j), vld(&bias[j]))));
            vst(dxr + j, g);
            vst(acc + j, vadd(vld(acc + j), g));
          }
          if (j < f) {
            const int n = int(f - j);
            const vf g = vmul(vld_n(dyr + j, n), act_grad<A>(vadd(vld_n(xr + j, n), vld(&bias[j]))));
            vst_n(dxr + j, g, n);
            vst(acc + j, vadd(vld(acc + j), g));  // lanes past f add 0 (dy loaded as 0)
          }
        }
      });
      reduce_partials(partial.data(), blocks, f, fp, a.at<TB>(4));
      return int(kOk);
    });
  });
}

// ---------------------------------------------------------------- residual add + LayerNorm

// (x [T, H], residual [T, H] fp32, gamma [H], beta [H], eps [1] fp32)
//   -> (s = residual + x [T, H] fp32, y = LayerNorm(s) [T, H] fp32, mean [T], rstd [T])
int add_layer_norm_fwd(const pangu_args::Args& a) {
  const int64_t h = a.dim(0, -1), rows = a.numel(0) / h;
  if (a.numel(1) != a.numel(0) || a.numel(2) != h || a.numel(3) != h || !a.single(1)) return kBadShape;
  const float eps = *a.at<float>(4);
  return with_type(a, 0, [&](auto tx) {
    using TX = decltype(tx);
    return with_type(a, 2, [&](auto tg) {
      using TG = decltype(tg);
      const std::vector<float> gamma = widen_padded(a.at<TG>(2), h), beta = widen_padded(a.at<TG>(3), h);
      const TX* x = a.at<TX>(0);
      const float* res = a.at<float>(1);
      float *s = a.at<float>(5), *y = a.at<float>(6), *mean = a.at<float>(7), *rstd = a.at<float>(8);
      const float inv_h = 1.0f / static_cast<float>(h);
      pangu_pool::parallel_for((rows + kRowBlock - 1) / kRowBlock, [&](int64_t t) {
        const int64_t r1 = std::min(rows, (t + 1) * kRowBlock);
        for (int64_t r = t * kRowBlock; r < r1; ++r) {
          const TX* xr = x + r * h;
          const float* rr = res + r * h;
          float* sr = s + r * h;
          float* yr = y + r * h;
          // the mean of s - s[0]: with |mean| >> std the deviations sum without the rounding
          // of large partial sums
          const float shift = rr[0] + to_f32(xr[0]);
          const vf vshift = vset(shift);
          vf acc = vzero();
          int64_t j = 0;
          for (; j + W <= h; j += W) {
            const vf v = vadd(vld(rr + j), vld(xr + j));
            vst(sr + j, v);
            acc = vadd(acc, vsub(v, vshift));
          }
          const int n = int(h - j);
          if (n) {
            const vf v = vadd(vld_n(rr + j, n), vld_n(xr + j, n));
            vst_n(sr + j, v, n);
            acc = vadd(acc, vkeep_first(vsub(v, vshift), n));
          }
          const float mu = shift + hsum(acc) * inv_h;
          // variance as the mean of squared deviations (a second pass over the cached row,
          // not E[s^2] - mu^2, which cancels when |mu| >> std)
          const vf vmu = vset(mu);
          vf sq = vzero();
          for (j = 0; j + W <= h; j += W) {
            const vf d = vsub(vld(sr + j), vmu);
            sq = vfma(d, d, sq);
          }
          if (n) {
            const vf d = vkeep_first(vsub(vld_n(sr + j, n), vmu), n);
            sq = vfma(d, d, sq);
          }
          const float rs = 1.0f / std::sqrt(hsum(sq) * inv_h + eps);
          const vf vrs = vset(rs);
          for (j = 0; j + W <= h; j += W)
            vst(yr + j, vfma(vmul(vsub(vld(sr + j), vmu), vrs), vld(&gamma[j]), vld(&beta[j])));
          if (n) vst_n(yr + j, vfma(vmul(vsub(vld_n(sr + j, n), vmu), vrs), vld(&gamma[j]), vld(&beta[j])), n);
          mean[r] = mu;
          rstd[r] = rs;
        }
      });
      return int(kOk);
    });
  });
}

// (x [T, H] (dtype only), gamma [H], beta [H] (dtype only), s [T, H], mean [T], rstd [T], ds [T, H],
//  dy [T, H]) -> (dx [T, H] (x's dtype), dresidual [T, H] fp32, dgamma [H], dbeta [H])
// With xhat = (s - mean) rstd and g = dy gamma, the gradient reaching s is
//   ds + rstd (g - mean(g) - xhat mean(g xhat)); it is both dx and dresidual.
int add_layer_norm_bwd(const pangu_args::Args& a) {
  const int64_t h = a.dim(3, -1), rows = a.numel(3) / h;
  if (a.numel(0) != a.numel(3) || a.numel(6) != a.numel(3) || a.numel(7) != a.numel(3) || a.numel(1) != h ||
      a.numel(4) != rows || a.numel(5) != rows)
    return kBadShape;
  return with_type(a, 0, [&](auto tx) {
    using TX = decltype(tx);
    return with_type(a, 1, [&](auto tg) {
      using TG = decltype(tg);
      const std::vector<float> gamma = widen_padded(a.at<TG>(1), h);
      const int64_t hp = static_cast<int64_t>(gamma.size()), blocks = (rows + kRowBlock - 1) / kRowBlock;
      std::vector<float> partial(blocks * 2 * hp);  // per block: dgamma [hp], dbeta [hp]
      const float *s = a.at<float>(3), *mean = a.at<float>(4), *rstd = a.at<float>(5);
      const float *ds = a.at<float>(6), *dy = a.at<float>(7);
      TX* dx = a.at<TX>(8);
      float* dres = a.at<float>(9);
      const float inv_h = 1.0f / static_cast<float>(h);
      pangu_pool::parallel_for(blocks, [&](int64_t t) {
        float* dg = &partial[t * 2 * hp];
        float* db = dg + hp;
        for (int64_t j = 0; j < hp; j += W) {
          vst(dg + j, vzero());
          vst(db + j, vzero());
        }
        const int64_t r1 = std::min(rows, (t + 1) * kRowBlock);
        for (int64_t r = t * kRowBlock; r < r1; ++r) {
          const float *sr = s + r * h, *dyr = dy + r * h, *dsr = ds + r * h;
          const vf vmu = vset(mean[r]), vrs = vset(rstd[r]);
          vf sum_g = vzero(), sum_gx = vzero();
          int64_t j = 0;
          const int n = int(h % W);
          const int64_t full = h - n;
          for (; j < full; j += W) {
            const vf xhat = vmul(vsub(vld(sr + j), vmu), vrs);
            const vf d = vld(dyr + j);
            const vf g = vmul(d, vld(&gamma[j]));
            sum_g = vadd(sum_g, g);
            sum_gx = vfma(g, xhat, sum_gx);
            vst(dg + j, vfma(d, xhat, vld(dg + j)));
            vst(db + j, vadd(vld(db + j), d));
          }
          if (n) {
            const vf xhat = vmul(vsub(vld_n(sr + j, n), vmu), vrs);
            const vf d = vld_n(dyr + j, n);  // 0 past h, so every product below is 0 there
            const vf g = vmul(d, vld(&gamma[j]));
            sum_g = vadd(sum_g, g);
            sum_gx = vfma(g, xhat, sum_gx);
            vst(dg + j, vfma(d, xhat, vld(dg + j)));
            vst(db + j, vadd(vld(db + j), d));
          }
          const vf mg = vset(hsum(sum_g) * inv_h), mgx = vset(hsum(sum_gx) * inv_h);
          TX* dxr = dx + r * h;
          float* drr = dres + r * h;
          for (j = 0; j < full; j += W) {
            const vf xhat = vmul(vsub(vld(sr + j), vmu), vrs);
            const vf g = vmul(vld(dyr + j), vld(&gamma[j]));
            const vf out = vfma(vrs, vfnma(xhat, mgx, vsub(g, mg)), vld(dsr + j));
            vst(dxr + j, out);
            vst(drr + j, out);
          }
          if (n) {
            const vf xhat = vmul(vsub(vld_n(sr + j, n), vmu), vrs);
            const vf g = vmul(vld_n(dyr + j, n), vld(&gamma[j]));
            const vf out = vfma(vrs, vfnma(xhat, mgx, vsub(g, mg)), vld_n(dsr + j, n));
            vst_n(dxr + j, out, n);
            vst_n(drr + j, out, n);
          }
        }
      });
      reduce_partials(partial.data(), blocks, h, 2 * hp, a.at<TG>(10));
      reduce_partials(partial.data() + hp, blocks, h, 2 * hp, a.at<TG>(11));
      return int(kOk);
    });
  });
}
