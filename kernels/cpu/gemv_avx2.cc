// Matrix-vector and attention kernels for single-token decoding on x86-64 CPUs (AVX2 + FMA), loaded by
// pangu_ms/kernels/linear.py as MindSpore `ops.Custom(func_type="aot")` operators.
//
// At one token per step every weight matmul is a matrix-vector product. MindSpore's CPU MatMul
// packs the weight operand on every call, which costs as much as the product itself; these
// kernels stream each weight row once, straight from cache, for all B rows together.
// Reference compositions (MatMul + Add, MatMul with transpose_b, the model's composed GELU) live next to
// the loader and tests compare both.
//
// Signature of every kernel (MindSpore aot convention): params are the inputs then the
// output, shapes[i] / ndims[i] describe params[i]; all tensors are contiguous float32.
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// y[r, :] += sum over k in [k0, k0 + 4) of x[r, k] * w[k, :]   for r < rows, n columns.
inline void axpy4(const float* __restrict x, int64_t x_stride, int64_t rows, const float* __restrict w,
                  int64_t n, int64_t k0, float* __restrict y) {
  const float* w0 = w + k0 * n;
  const float* w1 = w0 + n;
  const float* w2 = w1 + n;
  const float* w3 = w2 + n;
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * x_stride + k0;
    const __m256 a0 = _mm256_set1_ps(xr[0]), a1 = _mm256_set1_ps(xr[1]);
    const __m256 a2 = _mm256_set1_ps(xr[2]), a3 = _mm256_set1_ps(xr[3]);
    float* yr = y + r * n;
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
      __m256 acc = _mm256_loadu_ps(yr + j);
      acc = _mm256_fmadd_ps(a0, _mm256_loadu_ps(w0 + j), acc);
      acc = _mm256_fmadd_ps(a1, _mm256_loadu_ps(w1 + j), acc);
      acc = _mm256_fmadd_ps(a2, _mm256_loadu_ps(w2 + j), acc);
      acc = _mm256_fmadd_ps(a3, _mm256_loadu_ps(w3 + j), acc);
      _mm256_storeu_ps(yr + j, acc);
    }
    for (; j < n; ++j) yr[j] += xr[0] * w0[j] + xr[1] * w1[j] + xr[2] * w2[j] + xr[3] * w3[j];
  }
}

inline float dot(const float* __restrict a, const float* __restrict b, int64_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + j + 8), _mm256_loadu_ps(b + j + 8), acc1);
  }
  float buf[8];
  _mm256_storeu_ps(buf, _mm256_add_ps(acc0, acc1));
  float s = ((buf[0] + buf[1]) + (buf[2] + buf[3])) + ((buf[4] + buf[5]) + (buf[6] + buf[7]));
  for (; j < n; ++j) s += a[j] * b[j];
  return s;
}

// y [rows, n] = x [rows, k_dim] @ w [k_dim, n] + bias [n]   (w stored [in, out], as pangu_ms Linear).
void linear_bias(const float* x, const float* w, const float* bias, float* y, int64_t rows, int64_t k_dim,
                 int64_t n) {
  for (int64_t r = 0; r < rows; ++r) std::memcpy(y + r * n, bias, n * sizeof(float));
  int64_t k = 0;
  for (; k + 4 <= k_dim; k += 4) axpy4(x, k_dim, rows, w, n, k, y);
  for (; k < k_dim; ++k) {
    const float* wk = w + k * n;
    for (int64_t r = 0; r < rows; ++r) {
      const float xv = x[r * k_dim + k];
      float* yr = y + r * n;
      for (int64_t j = 0; j < n; ++j) yr[j] += xv * wk[j];
    }
  }
}

// The model's GELU (pangu_ms/kernels/norm_act.py `GELU`, the one definition): the tanh GELU
// 0.5 z (1 + tanh(c (z + 0.044715 z^3))), c = sqrt(2/pi), written as z * sigmoid(z (c1 + c3 z^2)) with
// c1 = 2c, c3 = 0.044715 c1, in the same order of operations; in place. The sigmoid form has no
// cancellation in 1 + tanh at negative z.
void gelu(float* z, int64_t count) {
  const float c1 = 1.5957691216057308f;   // 2 sqrt(2/pi)
  const float c3 = 0.07135481627260025f;  // 0.044715 c1
  for (int64_t i = 0; i < count; ++i) {
    const float v = z[i];
    const float u = v * v * c3 + c1;
    z[i] = v * (1.0f / (1.0f + std::exp(-(v * u))));
  }
}

}  // namespace

// y [B, N] = x [B, K] @ w [K, N] + bias [N].
extern "C" int LinearBias(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                          void* stream, void* extra) {
  (void)nparam; (void)ndims; (void)dtypes; (void)stream; (void)extra;
  linear_bias(static_cast<const float*>(params[0]), static_cast<const float*>(params[1]),
              static_cast<const float*>(params[2]), static_cast<float*>(params[3]), shapes[0][0], shapes[0][1],
              shapes[1][1]);
  return 0;
}

// y [B, N] = x [B, K] @ w [K, N] + bias [N] + residual [B, N]   (an output projection and its residual add).
extern "C" int LinearBiasResidual(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                                  void* stream, void* extra) {
  (void)nparam; (void)ndims; (void)dtypes; (void)stream; (void)extra;
  const int64_t rows = shapes[0][0], n = shapes[1][1];
  float* y = static_cast<float*>(params[4]);
  const float* residual = static_cast<const float*>(params[3]);
  linear_bias(static_cast<const float*>(params[0]), static_cast<const float*>(params[1]),
              static_cast<const float*>(params[2]), y, rows, shapes[0][1], n);
  for (int64_t i = 0; i < rows * n; ++i) y[i] += residual[i];
  return 0;
}

// y [B, N] = gelu(x [B, K] @ w [K, N] + bias [N])   (the FFN's first projection and activation).
extern "C" int LinearBiasGelu(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                              void* stream, void* extra) {
  (void)nparam; (void)ndims; (void)dtypes; (void)stream; (void)extra;
  const int64_t rows = shapes[0][0], n = shapes[1][1];
  float* y = static_cast<float*>(params[3]);
  linear_bias(static_cast<const float*>(params[0]), static_cast<const float*>(params[1]),
              static_cast<const float*>(params[2]), y, rows, shapes[0][1], n);
  gelu(y, rows * n);
  return 0;
}

// y [B, V] = x [B, H] @ table [V, H]^T   (the tied output head: the word-embedding table).
extern "C" int TiedHead(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                        void* stream, void* extra) {
  (void)nparam; (void)ndims; (void)dtypes; (void)stream; (void)extra;
  const float* x = static_cast<const float*>(params[0]);
  const float* table = static_cast<const float*>(params[1]);
  float* y = static_cast<float*>(params[2]);
  const int64_t rows = shapes[0][0], h = shapes[0][1], v = shapes[1][0];
  for (int64_t i = 0; i < v; ++i) {
    const float* ti = table + i * h;
    for (int64_t r = 0; r < rows; ++r) y[r * v + i] = dot(ti, x + r * h, h);
  }
  return 0;
}

// Attention of one new token per row against its K/V cache (the cache already holds the token):
// q [B, H] (H = N*D, head-major, NOT yet scaled), k, v [B, N, M, D], slot [] int32,
// pad_len [B] int32 -> context [B, H]. Row b attends to slots pad_len[b] <= j <= slot with
// softmax(q.k / sqrt(D)); the other slots get probability 0 (the reference's -1e4 bias).
extern "C" int DecodeAttention(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                               void* stream, void* extra) {
  (void)nparam; (void)ndims; (void)dtypes; (void)stream; (void)extra;
  const float* q = static_cast<const float*>(params[0]);
  const float* k = static_cast<const float*>(params[1]);
  const float* v = static_cast<const float*>(params[2]);
  const int32_t slot = *static_cast<const int32_t*>(params[3]);
  const int32_t* pad_len = static_cast<const int32_t*>(params[4]);
  float* out = static_cast<float*>(params[5]);
  const int64_t rows = shapes[1][0], heads = shapes[1][1], m_len = shapes[1][2], d = shapes[1][3];
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  std::vector<float> probs(m_len), qs(d);
  for (int64_t b = 0; b < rows; ++b) {
    int64_t lo = pad_len[b] < 0 ? 0 : pad_len[b];
    int64_t hi = slot < m_len ? slot : m_len - 1;
    if (lo > hi) {  // every key blocked: the reference's -1e4 bias cancels in the softmax
      lo = 0;
      hi = m_len - 1;
    }
    for (int64_t n = 0; n < heads; ++n) {
      const float* qv = q + (b * heads + n) * d;
      const float* kb = k + (b * heads + n) * m_len * d;
      const float* vb = v + (b * heads + n) * m_len * d;
      float* o = out + (b * heads + n) * d;
      std::memset(o, 0, d * sizeof(float));
      for (int64_t j = 0; j < d; ++j) qs[j] = qv[j] * scale;
      float mx = -INFINITY;
      for (int64_t m = lo; m <= hi; ++m) {
        probs[m] = dot(qs.data(), kb + m * d, d);
        mx = probs[m] > mx ? probs[m] : mx;
      }
      float total = 0.0f;
      for (int64_t m = lo; m <= hi; ++m) {
        probs[m] = std::exp(probs[m] - mx);
        total += probs[m];
      }
      const float inv = 1.0f / total;
      for (int64_t m = lo; m <= hi; ++m) {
        const float pm = probs[m] * inv;
        const float* vm = vb + m * d;
        for (int64_t j = 0; j < d; ++j) o[j] += pm * vm[j];
      }
    }
  }
  return 0;
}

// In-place cache write: k_cache, v_cache [B, N, M, D] (the cache Parameters), k_new, v_new [B, N, D],
// slot [] int32 -> k_cache[:, :, slot] = k_new, v_cache[:, :, slot] = v_new; output: slot [1] int32 (a
// token for ordering). MindSpore's ScatterNdUpdate copies the whole cache on every call.
extern "C" int WriteSlot(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                         void* stream, void* extra) {
  (void)nparam; (void)ndims; (void)dtypes; (void)stream; (void)extra;
  float* k_cache = static_cast<float*>(params[0]);
  float* v_cache = static_cast<float*>(params[1]);
  const float* k_new = static_cast<const float*>(params[2]);
  const float* v_new = static_cast<const float*>(params[3]);
  const int32_t slot = *static_cast<const int32_t*>(params[4]);
  int32_t* token = static_cast<int32_t*>(params[5]);
  const int64_t rows = shapes[0][0], heads = shapes[0][1], m_len = shapes[0][2], d = shapes[0][3];
  token[0] = slot;
  if (slot < 0 || slot >= m_len) return 1;
  for (int64_t bn = 0; bn < rows * heads; ++bn) {
    std::memcpy(k_cache + (bn * m_len + slot) * d, k_new + bn * d, d * sizeof(float));
    std::memcpy(v_cache + (bn * m_len + slot) * d, v_new + bn * d, d * sizeof(float));
  }
  return 0;
}
