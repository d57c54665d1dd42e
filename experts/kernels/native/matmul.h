// Dense matrix × token rows for the native kernels (dense_ffn.cc, trunk.cc): y[t][r] = W[r] · x[t].
//
// Every output value is one dot product computed the same way whatever the batch: an 8-lane accumulator over k in
// order (FMA on AVX2), then a fixed horizontal sum. Blocks of R rows × T tokens only decide which dot products run side
// by side (R·T independent accumulators hide the FMA latency; a block of weight rows stays in L1 while every token
// passes over it), so a token's output is bit for bit the same in any batch. Rows are padded with zeros to a multiple
// of 8 floats (no SIMD tails); inputs must be padded alike (their stride a multiple of 8, zeros beyond the width).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "simd.h"

namespace sy {

inline uint32_t pad8(uint32_t n) { return (n + 7) & ~7u; }

// How far ahead of the rows being read the weights are prefetched (floats; matrices are contiguous, row after row).
constexpr uint32_t kPrefetchFloats = 2048;

// A [rows, cols] matrix with each row padded to `stride` = pad8(cols) floats.
struct Matrix {
  uint32_t rows = 0, cols = 0, stride = 0;
  std::vector<float> w;
};


inline void fill(Matrix& m, const float* src, uint32_t rows, uint32_t cols) {
  m.rows = rows;
  m.cols = cols;
  m.stride = pad8(cols);
  m.w.assign(static_cast<size_t>(rows) * m.stride, 0.0f);
  for (uint32_t r = 0; r < rows; r++) std::memcpy(m.w.data() + static_cast<size_t>(r) * m.stride, src + static_cast<size_t>(r) * cols, cols * sizeof(float));
}

// ---- portable ---------------------------------------------------------------------------------------------------

// out[t·outStride + r] = W[r] · in[t·inStride] for rows [r0, r1) and tokens [0, tokens); same lane order as AVX2.
inline void matmul_portable(const Matrix& m, uint32_t r0, uint32_t r1, const float* in, uint32_t inStride, uint32_t tokens, float* out, uint32_t outStride) {
  for (uint32_t r = r0; r < r1; r++) {
    const float* w = m.w.data() + static_cast<size_t>(r) * m.stride;
    for (uint32_t t = 0; t < tokens; t++) {
      const float* x = in + static_cast<size_t>(t) * inStride;
      float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (uint32_t k = 0; k < m.stride; k += 8)
        for (uint32_t l = 0; l < 8; l++) acc[l] += w[k + l] * x[k + l];
      out[static_cast<size_t>(t) * outStride + r] = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
    }
  }
}

inline void swiglu_portable(float* g, const float* u, size_t n) {
  for (size_t k = 0; k < n; k++) g[k] = g[k] / (1.0f + std::exp(-g[k])) * u[k];
}

// ---- AVX2 + FMA ---------------------------------------------------------------------------------------------------
#if SY_X86


// R rows × T tokens of dot products over `len` floats (a multiple of 8), one accumulator each.
template <int R, int T>
__attribute__((target("avx2,fma"))) inline void block_avx2(const float* w, uint32_t wStride, const float* x, uint32_t xStride,
                                                           uint32_t len, float* out, uint32_t outStride) {
  __m256 acc[R][T];
  for (int r = 0; r < R; r++)
    for (int t = 0; t < T; t++) acc[r][t] = _mm256_setzero_ps();
  for (uint32_t k = 0; k < len; k += 8) {
    // Weights stream from memory once per call: ask for the bytes kPrefetchFloats ahead of each row, once per cache
    // line. The hardware prefetchers stop at 4 KiB page boundaries, and at a few tokens the kernel would otherwise
    // wait on memory instead of computing while it arrives (cold weights measured slower than onnxruntime before).
    if ((k & 15) == 0)
      for (int r = 0; r < R; r++) _mm_prefetch(reinterpret_cast<const char*>(w + static_cast<size_t>(r) * wStride + k + kPrefetchFloats), _MM_HINT_T0);
    __m256 xv[T];
    for (int t = 0; t < T; t++) xv[t] = _mm256_loadu_ps(x + static_cast<size_t>(t) * xStride + k);
    for (int r = 0; r < R; r++) {
      const __m256 wv = _mm256_loadu_ps(w + static_cast<size_t>(r) * wStride + k);
      for (int t = 0; t < T; t++) acc[r][t] = _mm256_fmadd_ps(wv, xv[t], acc[r][t]);
    }
  }
  for (int r = 0; r < R; r++)
    for (int t = 0; t < T; t++) out[static_cast<size_t>(t) * outStride + r] = hsum256(acc[r][t]);
}

// Token blocks for R weight rows: 4 at a time, then the rest in one block.
template <int R>
__attribute__((target("avx2,fma"))) inline void rows_avx2(const float* w, uint32_t wStride, const float* in, uint32_t inStride,
                                                          uint32_t tokens, uint32_t len, float* out, uint32_t outStride) {
  uint32_t t = 0;
  for (; t + 4 <= tokens; t += 4) block_avx2<R, 4>(w, wStride, in + static_cast<size_t>(t) * inStride, inStride, len, out + static_cast<size_t>(t) * outStride, outStride);
  const float* x = in + static_cast<size_t>(t) * inStride;
  float* o = out + static_cast<size_t>(t) * outStride;
  switch (tokens - t) {
    case 3: block_avx2<R, 3>(w, wStride, x, inStride, len, o, outStride); break;
    case 2: block_avx2<R, 2>(w, wStride, x, inStride, len, o, outStride); break;
    case 1: block_avx2<R, 1>(w, wStride, x, inStride, len, o, outStride); break;
    default: break;
  }
}

__attribute__((target("avx2,fma"))) inline void matmul_avx2(const Matrix& m, uint32_t r0, uint32_t r1, const float* in, uint32_t inStride, uint32_t tokens, float* out, uint32_t outStride) {
  const float* w = m.w.data();
  uint32_t r = r0;
  // Two rows per block when tokens come in fours (8 accumulators), four when fewer tokens (one token: 4 chains).
  if (tokens >= 4) {
    for (; r + 2 <= r1; r += 2) rows_avx2<2>(w + static_cast<size_t>(r) * m.stride, m.stride, in, inStride, tokens, m.stride, out + r, outStride);
  } else {
    for (; r + 4 <= r1; r += 4) rows_avx2<4>(w + static_cast<size_t>(r) * m.stride, m.stride, in, inStride, tokens, m.stride, out + r, outStride);
  }
  for (; r < r1; r++) rows_avx2<1>(w + static_cast<size_t>(r) * m.stride, m.stride, in, inStride, tokens, m.stride, out + r, outStride);
}
#endif

// out[t·outStride + r] = W[r] · in[t·inStride] for rows r in [r0, r1) (rows of in padded to m.stride with zeros), AVX2
// when `avx2`. Which rows run together does not change any value, so a matrix split over threads by rows gives the
// same output as one call.
inline void matmul_rows(bool avx2, const Matrix& m, uint32_t r0, uint32_t r1, const float* in, uint32_t inStride, uint32_t tokens, float* out, uint32_t outStride) {
#if SY_X86
  if (avx2) return matmul_avx2(m, r0, r1, in, inStride, tokens, out, outStride);
#endif
  (void)avx2;
  matmul_portable(m, r0, r1, in, inStride, tokens, out, outStride);
}

// All rows: out[t·outStride + r] = W[r] · in[t·inStride].
inline void matmul(bool avx2, const Matrix& m, const float* in, uint32_t inStride, uint32_t tokens, float* out, uint32_t outStride) {
  matmul_rows(avx2, m, 0, m.rows, in, inStride, tokens, out, outStride);
}

// g[k] = silu(g[k]) · u[k] over n floats (n a multiple of 8 on the AVX2 path).
inline void swiglu(bool avx2, float* g, const float* u, size_t n) {
#if SY_X86
  if (avx2) return sy::swiglu256(g, u, n);
#endif
  (void)avx2;
  swiglu_portable(g, u, n);
}

}  // namespace sy
