// Tied output head + softmax cross-entropy, with the gradients (included per ISA by training.cc;
// no include guard, see train_simd.h).
//
// h [T, H], table [V, H] (fp32 or fp16), labels [T] int32, pad [1] int32:
//   loss = mean over t with labels[t] != pad of  logsumexp_v(h_t . table_v) - h_t . table_labels[t]
// (0 when every label is pad). Tokens go in chunks of kHeadChunk; for each chunk the logits
// [chunk, V] are computed, turned into d logits = (softmax - onehot) w in place (w = scale /
// count, 0 on pad rows), and consumed by d h = dl table and d table += dl^T h before the next
// chunk, so at most [kHeadChunk, V] floats of logits exist at any time and none outlive the call.
// The three products use the packed GEMM of train_gemm.h; the table is packed once per call in
// both orientations. Rows of a chunk go to threads in blocks, then the vocabulary does for
// d table, each block summed in a fixed order, so results do not depend on the thread count.

constexpr int64_t kHeadChunk = 384;   // tokens per chunk (a multiple of kMR for both ISAs)
constexpr int64_t kHeadVocab = 96;    // vocabulary rows per d table task
constexpr int64_t kHeadKc = 256;      // depth of a d h product block (over V)

// Rows per task within a chunk: the chunk split over the threads (at most 4 blocks, at least
// kMR rows each). Each element's sums run in the same order whatever the split, so the
// results do not depend on it; fewer, larger blocks reuse each packed table panel more.
inline int64_t head_rows_per_task(int64_t rows) {
  const int64_t blocks = std::min<int64_t>(4, std::max<int64_t>(2, pangu_pool::Pool::instance().threads()));
  return std::max<int64_t>(kMR, round_up((rows + blocks - 1) / blocks, kMR));
}

// Float scratch that only grows, in 2 MB-aligned memory the kernel is asked to back with huge
// pages (madvise): the logits rows are 4 V bytes apart, and with 4 KB pages every row of a
// register block is its own TLB entry.
class ScratchBuffer {
 public:
  ~ScratchBuffer() { std::free(data_); }
  void resize(int64_t n) {
    if (n <= capacity_) return;
    std::free(data_);
    const size_t bytes = round_up(n * static_cast<int64_t>(sizeof(float)), int64_t{1} << 21);
    data_ = static_cast<float*>(std::aligned_alloc(size_t{1} << 21, bytes));
    if (data_ == nullptr) std::abort();
    madvise(data_, bytes, MADV_HUGEPAGE);  // advice only: no huge pages, no harm
    capacity_ = static_cast<int64_t>(bytes / sizeof(float));
  }
  float* data() { return data_; }
  float& operator[](int64_t i) { return data_[i]; }

 private:
  float* data_ = nullptr;
  int64_t capacity_ = 0;
};

// Softmax cross-entropy of one row of logits (v < V), in place: returns the row's NLL; with
// `grads`, the row becomes (softmax - onehot(label)) * w.
inline float softmax_xent_row(float* lr, int64_t V, int32_t label, bool grads, float w) {
  vf mx = vset(-INFINITY);
  int64_t v = 0;
  const int tail = int(V % W);
  const int64_t full = V - tail;
  for (; v < full; v += W) mx = vmax(mx, vld(lr + v));
  float m = hmax(mx);
  for (; v < V; ++v) m = std::max(m, lr[v]);
  const float target = lr[label];
  const vf vm = vset(m);
  vf sum = vzero();
  for (v = 0; v < full; v += W) {
    const vf e = vexp(vsub(vld(lr + v), vm));
    if (grads) vst(lr + v, e);
    sum = vadd(sum, e);
  }
  if (tail) {
    const vf e = vkeep_first(vexp(vsub(vld_n(lr + v, tail), vm)), tail);
    if (grads) vst_n(lr + v, e, tail);
    sum = vadd(sum, e);
  }
  const float total = hsum(sum);
  if (grads) {
    const vf scale = vset(w / total);
    for (v = 0; v < full; v += W) vst(lr + v, vmul(vld(lr + v), scale));
    if (tail) vst_n(lr + v, vmul(vld_n(lr + v, tail), scale), tail);
    lr[label] -= w;
  }
  return m + std::log(total) - target;
}

// The whole computation; dh32 [T, H] and dt32 [V, H] receive the gradients times `scale` (fp32)
// when `grads`.
template <class TH, class TT>
int head_cross_entropy(const TH* h, const TT* table, const int32_t* labels, int32_t pad, int64_t T, int64_t H,
                       int64_t V, bool grads, float scale, float* loss, float* dh32, float* dt32) {
  int64_t count = 0;
  for (int64_t t = 0; t < T; ++t) {
    if (labels[t] == pad) continue;
    if (labels[t] < 0 || labels[t] >= V) return kBadLabel;
    ++count;
  }
  const float w = count ? scale / static_cast<float>(count) : 0.0f;
  const int64_t vp = round_up(V, kNR), hpanels = round_up(H, kNR) / kNR, vpanels = vp / kNR;
  // B of logits = h table^T: element (k = e, n = v) = table[v, e]
  // scratch kept by the calling thread between calls: refaulting ~3 V H floats of fresh pages
  // on every call cost more than the packing itself
  // (the references matter: a thread_local named inside a lambda run by a worker would be the
  // worker's own copy)
  thread_local ScratchBuffer tl_bt, tl_bn, tl_logits, tl_bh;
  thread_local std::vector<float> tl_row_loss;
  auto &bt = tl_bt, &bn = tl_bn, &logits = tl_logits, &bh = tl_bh;
  auto& row_loss = tl_row_loss;
  bt.resize(vpanels * H * kNR);
  pangu_pool::parallel_for(vpanels, [&](int64_t j) { pack_b_panel(table, 1, H, H, V, j * kNR, &bt[j * H * kNR]); });
  if (grads) {  // B of d h = dl table: element (k = v, n = e) = table[v, e]
    bn.resize(hpanels * V * kNR);
    pangu_pool::parallel_for(hpanels, [&](int64_t j) { pack_b_panel(table, H, 1, V, H, j * kNR, &bn[j * V * kNR]); });
    std::fill(dt32, dt32 + V * H, 0.0f);
  }
  logits.resize(kHeadChunk * vp);
  row_loss.assign(T, 0.0f);
  for (int64_t t0 = 0; t0 < T; t0 += kHeadChunk) {
    const int64_t rows = std::min(kHeadChunk, T - t0);
    const int64_t per_task = head_rows_per_task(rows);
    pangu_pool::parallel_for((rows + per_task - 1) / per_task, [&](int64_t task) {
      thread_local std::vector<float> ap;
      const int64_t r0 = task * per_task, m = std::min(per_task, rows - r0), panels = (m + kMR - 1) / kMR;
      const TH* hr = h + (t0 + r0) * H;
      float* lr = &logits[r0 * vp];
      ap.resize(panels * std::max(H, kHeadKc) * kMR);
      for (int64_t ip = 0; ip < panels; ++ip) pack_a_panel(hr, H, 1, m, ip * kMR, 0, H, &ap[ip * H * kMR]);
      gemm_packed<false>(m, V, H, ap.data(), H * kMR, bt.data(), H * kNR, lr, vp);  // logits
      for (int64_t r = 0; r < m; ++r) {
        const int32_t label = labels[t0 + r0 + r];
        if (label == pad) {
          if (grads) std::fill(lr + r * vp, lr + r * vp + V, 0.0f);
          continue;
        }
        row_loss[t0 + r0 + r] = softmax_xent_row(lr + r * vp, V, label, grads, w);
      }
      if (!grads) return;
      for (int64_t k0 = 0; k0 < V; k0 += kHeadKc) {  // d h rows = dl rows x table
        const int64_t kc = std::min(kHeadKc, V - k0);
        for (int64_t ip = 0; ip < panels; ++ip) pack_a_panel(lr, vp, 1, m, ip * kMR, k0, kc, &ap[ip * kc * kMR]);
        if (k0 == 0)
          gemm_packed<false>(m, H, kc, ap.data(), kc * kMR, &bn[k0 * kNR], V * kNR, dh32 + (t0 + r0) * H, H);
        else
          gemm_packed<true>(m, H, kc, ap.data(), kc * kMR, &bn[k0 * kNR], V * kNR, dh32 + (t0 + r0) * H, H);
      }
    });
    if (!grads) continue;
    bh.resize(hpanels * rows * kNR);  // B of d table = dl^T h: element (k = t, n = e) = h[t, e]
    pangu_pool::parallel_for(hpanels, [&](int64_t j) {
      pack_b_panel(h + t0 * H, H, 1, rows, H, j * kNR, &bh[j * rows * kNR]);
    });
    pangu_pool::parallel_for((V + kHeadVocab - 1) / kHeadVocab, [&](int64_t task) {
      thread_local std::vector<float> ap;
      const int64_t v0 = task * kHeadVocab, m = std::min(kHeadVocab, V - v0), panels = (m + kMR - 1) / kMR;
      ap.resize(panels * rows * kMR);
      for (int64_t ip = 0; ip < panels; ++ip)
        pack_a_panel(&logits[v0], 1, vp, m, ip * kMR, 0, rows, &ap[ip * rows * kMR]);
      gemm_packed<true>(m, H, rows, ap.data(), rows * kMR, bh.data(), rows * kNR, dt32 + v0 * H, H);
    });
  }
  double total = 0.0;
  for (int64_t t = 0; t < T; ++t) total += row_loss[t];
  *loss = count ? static_cast<float>(total / static_cast<double>(count)) : 0.0f;
  return kOk;
}

template <class F>
inline int with_head_types(const pangu_args::Args& a, F&& f) {
  return with_type(a, 0, [&](auto th) {
    return with_type(a, 1, [&](auto tt) { return f(th, tt); });
  });
}

inline int head_shapes_ok(const pangu_args::Args& a) {
  return a.ndims[0] == 2 && a.ndims[1] == 2 && a.dim(0, 1) == a.dim(1, 1) && a.numel(2) == a.dim(0, 0) &&
         a.numel(3) == 1;
}

// (h [T, H], table [V, H], labels [T], pad [1]) -> (loss [] fp32, dh [T, H] fp32, dtable [V, H] fp32):
// the gradients of the loss (d loss = 1) computed in the same pass; the backward scales them.
int tied_head_ce_fwd(const pangu_args::Args& a) {
  if (!head_shapes_ok(a)) return kBadShape;
  return with_head_types(a, [&](auto th, auto tt) {
    using TH = decltype(th);
    using TT = decltype(tt);
    return head_cross_entropy(a.at<TH>(0), a.at<TT>(1), a.at<int32_t>(2), *a.at<int32_t>(3), a.dim(0, 0), a.dim(0, 1),
                              a.dim(1, 0), true, 1.0f, a.at<float>(4), a.at<float>(5), a.at<float>(6));
  });
}

// (h, table, labels, pad) -> loss []: the loss alone (for the recomputing backward, and evaluation).
int tied_head_ce_loss(const pangu_args::Args& a) {
  if (!head_shapes_ok(a)) return kBadShape;
  return with_head_types(a, [&](auto th, auto tt) {
    using TH = decltype(th);
    using TT = decltype(tt);
    return head_cross_entropy(a.at<TH>(0), a.at<TT>(1), a.at<int32_t>(2), *a.at<int32_t>(3), a.dim(0, 0), a.dim(0, 1),
                              a.dim(1, 0), false, 1.0f, a.at<float>(4), nullptr, nullptr);
  });
}

template <class T>
inline void store_scaled(const float* src, int64_t n, T* dst) {
  pangu_pool::parallel_for((n + 65535) / 65536, [&](int64_t t) {
    const int64_t e = std::min(n, (t + 1) * 65536);
    for (int64_t i = t * 65536; i < e; ++i) from_f32(dst + i, src[i]);
  });
}

// (h, table, labels, pad, dloss [] fp32) -> (dh [T, H] h's dtype, dtable [V, H] table's dtype),
// recomputing the logits chunk by chunk.
int tied_head_ce_bwd(const pangu_args::Args& a) {
  if (!head_shapes_ok(a) || a.numel(4) != 1) return kBadShape;
  return with_head_types(a, [&](auto th, auto tt) {
    using TH = decltype(th);
    using TT = decltype(tt);
    const int64_t T = a.dim(0, 0), H = a.dim(0, 1), V = a.dim(1, 0);
    std::vector<float> dh_tmp, dt_tmp;
    float* dh32 = std::is_same<TH, float>::value ? reinterpret_cast<float*>(a.ptr[5]) : nullptr;
    float* dt32 = std::is_same<TT, float>::value ? reinterpret_cast<float*>(a.ptr[6]) : nullptr;
    if (!dh32) {
      dh_tmp.resize(T * H);
      dh32 = dh_tmp.data();
    }
    if (!dt32) {
      dt_tmp.resize(V * H);
      dt32 = dt_tmp.data();
    }
    float loss;
    const int rc = head_cross_entropy(a.at<TH>(0), a.at<TT>(1), a.at<int32_t>(2), *a.at<int32_t>(3), T, H, V, true,
                                      *a.at<float>(4), &loss, dh32, dt32);
    if (rc != kOk) return rc;
    if (!dh_tmp.empty()) store_scaled(dh32, T * H, a.at<TH>(5));
    if (!dt_tmp.empty()) store_scaled(dt32, V * H, a.at<TT>(6));
    return int(kOk);
  });
}
