// SIMD helpers shared by the native kernels (sparse_ffn.cc, dense_ffn.cc, attention.cc): AVX2 + FMA, compiled with target
// attributes so that a file including this still builds for baseline x86-64 (callers check the CPU at run time).
#pragma once

#include <cstddef>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define SY_X86 1
#else
#define SY_X86 0
#endif

#if SY_X86
namespace sy {

// exp(x) for 8 floats (Cephes-style range reduction and degree-5 polynomial; ~1-2 ulp).
__attribute__((target("avx2,fma"))) inline __m256 exp256(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3365f)), _mm256_set1_ps(88.3762f));
  __m256 fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

__attribute__((target("avx2,fma"))) inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// g[k] = silu(g[k]) · u[k] over n floats (n a multiple of 8): the SwiGLU of the expert FFNs.
__attribute__((target("avx2,fma"))) inline void swiglu256(float* g, const float* u, size_t n) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (size_t k = 0; k < n; k += 8) {
    const __m256 v = _mm256_loadu_ps(g + k);
    const __m256 s = _mm256_div_ps(v, _mm256_add_ps(one, exp256(_mm256_xor_ps(v, sign))));
    _mm256_storeu_ps(g + k, _mm256_mul_ps(s, _mm256_loadu_ps(u + k)));
  }
}

}  // namespace sy
#endif
