// Matrix-vector kernels for single-token decoding on x86-64 CPUs (AVX2 + FMA), loaded by
// pangu_ms/kernels/linear.py as MindSpore `ops.Custom(func_type="aot")` operators.
//
// At one token per step every weight matmul is a matrix-vector product. MindSpore's CPU MatMul
// packs the weight operand on every call, which costs as much as the product itself; these
// kernels stream each weight row once, straight from cache, for all B rows together.
// Reference compositions (MatMul + Add, MatMul with transpose_b) live next to the loader and
// tests compare both.
//
// Signature of every kernel (MindSpore aot convention): params are the inputs then the
// output, shapes[i] / ndims[i] describe params[i]; all tensors are contiguous float32.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

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

}  // namespace

// y [B, N] = x [B, K] @ w [K, N] + bias [N]   (w stored [in, out], as pangu_ms Linear).
extern "C" int LinearBias(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                          void* stream, void* extra) {
  (void)nparam; (void)ndims; (void)dtypes; (void)stream; (void)extra;
  const float* x = static_cast<const float*>(params[0]);
  const float* w = static_cast<const float*>(params[1]);
  const float* bias = static_cast<const float*>(params[2]);
  float* y = static_cast<float*>(params[3]);
  const int64_t rows = shapes[0][0], k_dim = shapes[0][1], n = shapes[1][1];
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
