// Dense SwiGLU expert FFN for the small batches of decoding: y = down · (silu(gate · x) ⊙ (up · x)), fp32 weights as
// stored (gate, up [ffn, hidden]; down [hidden, ffn], torch Linear layout).
//
// Why native: at decode an expert sees 1–32 tokens per step, where onnxruntime's fixed cost per run and its GEMM
// packing are a large part of the time (bench/RESULTS.md, "expert kernels"). Here every output value is one dot
// product computed the same way whatever the batch: an 8-lane accumulator over k in order (FMA on AVX2), then a
// fixed horizontal sum. Blocks of R rows × T tokens only decide which dot products run side by side (R·T independent
// accumulators hide the FMA latency; a block of weight rows stays in L1 while every token passes over it), so a
// token's output is bit for bit the same in any batch.
//
// Weights are copied once into rows padded with zeros to a multiple of 8 floats (no SIMD tails); inputs whose width is
// not a multiple of 8 are copied into a padded scratch. Tokens run in chunks of kChunk so the scratch stays small.
// The AVX2/FMA path is chosen at run time as in sparse_ffn.cc; other CPUs run the portable loops.
#include <node_api.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <new>
#include <vector>

#include "napi_glue.h"
#include "simd.h"

namespace {

constexpr uint32_t kChunk = 64;

inline uint32_t pad8(uint32_t n) { return (n + 7) & ~7u; }

// A [rows, cols] matrix with each row padded to `stride` = pad8(cols) floats.
struct Matrix {
  uint32_t rows = 0, cols = 0, stride = 0;
  std::vector<float> w;
};

struct Expert {
  uint32_t hidden = 0, ffn = 0;
  bool released = false;
  int64_t bytes = 0;  // reported to V8 as external memory
  Matrix gate, up, down;
  // Scratch for one chunk of tokens, reused across calls (a handle belongs to one JS thread).
  std::vector<float> x, g, u;
};

bool g_avx2 = false;

void fill(Matrix& m, const float* src, uint32_t rows, uint32_t cols) {
  m.rows = rows;
  m.cols = cols;
  m.stride = pad8(cols);
  m.w.assign(static_cast<size_t>(rows) * m.stride, 0.0f);
  for (uint32_t r = 0; r < rows; r++) std::memcpy(m.w.data() + static_cast<size_t>(r) * m.stride, src + static_cast<size_t>(r) * cols, cols * sizeof(float));
}

// ---- portable ---------------------------------------------------------------------------------------------------

// out[t·outStride + r] = W[r] · in[t·inStride] for rows [0, m.rows) and tokens [0, tokens); same lane order as AVX2.
void matmul_portable(const Matrix& m, const float* in, uint32_t inStride, uint32_t tokens, float* out, uint32_t outStride) {
  for (uint32_t r = 0; r < m.rows; r++) {
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

void swiglu_portable(float* g, const float* u, size_t n) {
  for (size_t k = 0; k < n; k++) g[k] = g[k] / (1.0f + std::exp(-g[k])) * u[k];
}

// ---- AVX2 + FMA ---------------------------------------------------------------------------------------------------
#if SY_X86
using sy::hsum256;

// R rows × T tokens of dot products over `len` floats (a multiple of 8), one accumulator each.
template <int R, int T>
__attribute__((target("avx2,fma"))) inline void block_avx2(const float* w, uint32_t wStride, const float* x, uint32_t xStride,
                                                           uint32_t len, float* out, uint32_t outStride) {
  __m256 acc[R][T];
  for (int r = 0; r < R; r++)
    for (int t = 0; t < T; t++) acc[r][t] = _mm256_setzero_ps();
  for (uint32_t k = 0; k < len; k += 8) {
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

__attribute__((target("avx2,fma"))) void matmul_avx2(const Matrix& m, const float* in, uint32_t inStride, uint32_t tokens, float* out, uint32_t outStride) {
  const float* w = m.w.data();
  uint32_t r = 0;
  // Two rows per block when tokens come in fours (8 accumulators), four when fewer tokens (one token: 4 chains).
  if (tokens >= 4) {
    for (; r + 2 <= m.rows; r += 2) rows_avx2<2>(w + static_cast<size_t>(r) * m.stride, m.stride, in, inStride, tokens, m.stride, out + r, outStride);
  } else {
    for (; r + 4 <= m.rows; r += 4) rows_avx2<4>(w + static_cast<size_t>(r) * m.stride, m.stride, in, inStride, tokens, m.stride, out + r, outStride);
  }
  for (; r < m.rows; r++) rows_avx2<1>(w + static_cast<size_t>(r) * m.stride, m.stride, in, inStride, tokens, m.stride, out + r, outStride);
}
#endif

// ---- driver -----------------------------------------------------------------------------------------------------

void matmul(const Matrix& m, const float* in, uint32_t inStride, uint32_t tokens, float* out, uint32_t outStride) {
#if SY_X86
  if (g_avx2) return matmul_avx2(m, in, inStride, tokens, out, outStride);
#endif
  matmul_portable(m, in, inStride, tokens, out, outStride);
}

void swiglu(float* g, const float* u, size_t n) {
#if SY_X86
  if (g_avx2) return sy::swiglu256(g, u, n);
#endif
  swiglu_portable(g, u, n);
}

void run_chunk(Expert& e, const float* x, float* y, uint32_t tokens) {
  const uint32_t hs = e.gate.stride, fs = e.down.stride;
  const float* xin = x;
  if (hs != e.hidden) {  // rows of x padded with zeros to the weights' stride
    for (uint32_t t = 0; t < tokens; t++) std::memcpy(e.x.data() + static_cast<size_t>(t) * hs, x + static_cast<size_t>(t) * e.hidden, e.hidden * sizeof(float));
    xin = e.x.data();
  }
  // g and u hold [tokens, fs] with zero padding beyond ffn (silu(0) · 0 = 0 keeps it zero for the down projection).
  matmul(e.gate, xin, hs, tokens, e.g.data(), fs);
  matmul(e.up, xin, hs, tokens, e.u.data(), fs);
  swiglu(e.g.data(), e.u.data(), static_cast<size_t>(tokens) * fs);
  matmul(e.down, e.g.data(), fs, tokens, y, e.hidden);
}

void run_expert(Expert& e, const float* x, float* y, uint32_t tokens) {
  for (uint32_t t = 0; t < tokens; t += kChunk) {
    const uint32_t n = tokens - t < kChunk ? tokens - t : kChunk;
    run_chunk(e, x + static_cast<size_t>(t) * e.hidden, y + static_cast<size_t>(t) * e.hidden, n);
  }
}

// ---- N-API glue -------------------------------------------------------------------------------------------------

void free_storage(napi_env env, Expert& e) {
  if (e.released) return;
  e.released = true;
  for (Matrix* m : {&e.gate, &e.up, &e.down}) std::vector<float>().swap(m->w);
  for (std::vector<float>* v : {&e.x, &e.g, &e.u}) std::vector<float>().swap(*v);
  int64_t now;
  napi_adjust_external_memory(env, -e.bytes, &now);
}

void finalize_expert(napi_env env, void* data, void*) {
  Expert* e = static_cast<Expert*>(data);
  free_storage(env, *e);
  delete e;
}

// create(hidden, ffn, gate: Float32Array [ffn·hidden], up: [ffn·hidden], down: [hidden·ffn])
napi_value Create(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value a[5];
  SY_CHECK(napi_get_cb_info(env, info, &argc, a, nullptr, nullptr));
  if (argc != 5) return sy::throw_type(env, "create(hidden, ffn, gate, up, down) takes 5 arguments");
  uint32_t hidden, ffn;
  if (napi_get_value_uint32(env, a[0], &hidden) != napi_ok || napi_get_value_uint32(env, a[1], &ffn) != napi_ok || hidden == 0 || ffn == 0)
    return sy::throw_range(env, "create: hidden and ffn must be positive integers");
  const float* w[3];
  const size_t want = static_cast<size_t>(hidden) * ffn;
  for (int i = 0; i < 3; i++) {
    size_t n;
    if (!sy::typed_array(env, a[2 + i], napi_float32_array, &w[i], &n)) return sy::throw_type(env, "create: gate, up and down must be Float32Arrays");
    if (n != want) return sy::throw_range(env, "create: gate, up and down must each hold hidden × ffn floats");
  }
  Expert* e = new (std::nothrow) Expert();
  if (!e) return sy::throw_error(env, "create: out of memory");
  e->hidden = hidden;
  e->ffn = ffn;
  fill(e->gate, w[0], ffn, hidden);
  fill(e->up, w[1], ffn, hidden);
  fill(e->down, w[2], hidden, ffn);
  e->x.assign(static_cast<size_t>(kChunk) * pad8(hidden), 0.0f);
  e->g.assign(static_cast<size_t>(kChunk) * pad8(ffn), 0.0f);
  e->u.assign(static_cast<size_t>(kChunk) * pad8(ffn), 0.0f);
  for (Matrix* m : {&e->gate, &e->up, &e->down}) e->bytes += static_cast<int64_t>(m->w.capacity() * sizeof(float));
  for (std::vector<float>* v : {&e->x, &e->g, &e->u}) e->bytes += static_cast<int64_t>(v->capacity() * sizeof(float));
  int64_t now;
  napi_adjust_external_memory(env, e->bytes, &now);
  napi_value handle;
  if (napi_create_external(env, e, finalize_expert, nullptr, &handle) != napi_ok) {
    free_storage(env, *e);
    delete e;
    return sy::throw_error(env, "create: cannot make the handle");
  }
  return handle;
}

// run(handle, x: Float32Array [tokens·hidden], tokens, out: Float32Array [tokens·hidden])
napi_value Run(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value a[4];
  SY_CHECK(napi_get_cb_info(env, info, &argc, a, nullptr, nullptr));
  void* data = nullptr;
  if (argc != 4 || napi_get_value_external(env, a[0], &data) != napi_ok || data == nullptr) return sy::throw_type(env, "run(handle, x, tokens, out)");
  Expert& e = *static_cast<Expert*>(data);
  if (e.released) return sy::throw_error(env, "run: this expert was released");
  uint32_t tokens;
  float *xp, *yp;
  size_t xn, yn;
  if (napi_get_value_uint32(env, a[2], &tokens) != napi_ok || !sy::typed_array(env, a[1], napi_float32_array, &xp, &xn) ||
      !sy::typed_array(env, a[3], napi_float32_array, &yp, &yn))
    return sy::throw_type(env, "run: x and out must be Float32Arrays and tokens a non-negative integer");
  const size_t need = static_cast<size_t>(tokens) * e.hidden;
  if (xn < need || yn < need) return sy::throw_range(env, "run: x and out must hold tokens × hidden floats");
  if (tokens > 0) run_expert(e, xp, yp, tokens);
  return nullptr;
}

// release(handle): frees the weights now (the handle itself goes with the garbage collector).
napi_value Release(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value a[1];
  SY_CHECK(napi_get_cb_info(env, info, &argc, a, nullptr, nullptr));
  void* data = nullptr;
  if (argc != 1 || napi_get_value_external(env, a[0], &data) != napi_ok || data == nullptr) return sy::throw_type(env, "release(handle)");
  free_storage(env, *static_cast<Expert*>(data));
  return nullptr;
}

napi_value Info(napi_env env, napi_callback_info) { return sy::simd_info(env, g_avx2); }

// setSimd(enabled): use the AVX2 path when the CPU has it (true) or the portable one (false); returns info().
napi_value SetSimd(napi_env env, napi_callback_info info) {
  g_avx2 = sy::want_avx2(env, info);
  return sy::simd_info(env, g_avx2);
}

}  // namespace

NAPI_MODULE_INIT() {
  g_avx2 = sy::cpu_has_avx2();
  napi_property_descriptor props[] = {
      {"create", nullptr, Create, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"run", nullptr, Run, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"release", nullptr, Release, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"info", nullptr, Info, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"setSimd", nullptr, SetSimd, nullptr, nullptr, nullptr, napi_default, nullptr},
  };
  if (napi_define_properties(env, exports, sizeof props / sizeof props[0], props) != napi_ok) return nullptr;
  return exports;
}
