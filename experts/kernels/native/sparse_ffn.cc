// Sparse SwiGLU expert FFN for unstructured sparsity: y = down · (silu(gate · x) ⊙ (up · x)).
//
// Weights are held as CSR over output rows with 16-bit column indices, each row padded with zeros to a multiple of
// 8 entries (so the SIMD loops need no tails). Two paths:
//   - one token: per row, gather x at the row's columns (AVX2 vgatherdps, 8 at a time) and FMA with the values;
//   - several tokens: tiles of 8/16/32 tokens with x transposed to [hidden][tile], so every stored weight is one
//     broadcast-FMA over the tile's tokens (no gathers).
// The AVX2/FMA functions are compiled with target attributes and chosen at run time with __builtin_cpu_supports, so
// the addon runs on any x86-64 (portable loops otherwise, which the compiler auto-vectorises for the baseline ISA).
#include <node_api.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <new>
#include <string>
#include <vector>

#include "napi_glue.h"
#include "simd.h"

namespace {

constexpr uint32_t kPad = 8;

struct Csr {
  uint32_t rows = 0, cols = 0;
  std::vector<uint32_t> ptr;  // rows + 1, padded offsets (multiples of kPad)
  std::vector<uint32_t> end;  // rows: where each row's real (unpadded) entries end
  std::vector<uint16_t> idx;
  std::vector<float> val;
};

struct Expert {
  uint32_t hidden = 0, ffn = 0;
  bool released = false;
  int64_t bytes = 0;  // reported to V8 as external memory
  Csr gate, up, down;
  // Scratch, reused across calls (a handle belongs to one JS thread).
  std::vector<float> xt, g, u, yt;
};

bool g_avx2 = false;
const napi_type_tag kTag = {0x5377697463687961ULL, 0x7370617273655f66ULL};  // sparse_ffn handles
// Batches of at most this many tokens run the one-token (gather) path per token: each token costs about a third
// of a stored weight's cycle there, while a tile costs about one cycle per stored weight whatever its width.
uint32_t g_per_token_max = 2;

// ---- portable ---------------------------------------------------------------------------------------------------

inline float silu(float v) { return v / (1.0f + std::exp(-v)); }

float dot_portable(const Csr& m, uint32_t r, const float* x) {
  float acc[kPad] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (uint32_t k = m.ptr[r]; k < m.ptr[r + 1]; k += kPad)
    for (uint32_t l = 0; l < kPad; l++) acc[l] += m.val[k + l] * x[m.idx[k + l]];
  float s = 0;
  for (uint32_t l = 0; l < kPad; l++) s += acc[l];
  return s;
}

void one_token_portable(Expert& e, const float* x, float* y) {
  float* g = e.g.data();
  for (uint32_t j = 0; j < e.ffn; j++) g[j] = silu(dot_portable(e.gate, j, x)) * dot_portable(e.up, j, x);
  for (uint32_t i = 0; i < e.hidden; i++) y[i] = dot_portable(e.down, i, g);
}

// out[r][0..T) = Σ_k val[k] · in[idx[k]][0..T) for every row r, T = tile width.
template <int T>
void spmm_tile_portable(const Csr& m, const float* in, float* out) {
  for (uint32_t r = 0; r < m.rows; r++) {
    float acc[T];
    for (int t = 0; t < T; t++) acc[t] = 0;
    for (uint32_t k = m.ptr[r]; k < m.end[r]; k++) {
      const float v = m.val[k];
      const float* row = in + static_cast<size_t>(m.idx[k]) * T;
      for (int t = 0; t < T; t++) acc[t] += v * row[t];
    }
    std::memcpy(out + static_cast<size_t>(r) * T, acc, sizeof acc);
  }
}

template <int T>
void tile_portable(Expert& e) {
  spmm_tile_portable<T>(e.gate, e.xt.data(), e.g.data());
  spmm_tile_portable<T>(e.up, e.xt.data(), e.u.data());
  float* g = e.g.data();
  const float* u = e.u.data();
  for (size_t k = 0, n = static_cast<size_t>(e.ffn) * T; k < n; k++) g[k] = silu(g[k]) * u[k];
  spmm_tile_portable<T>(e.down, g, e.yt.data());
}

// ---- AVX2 + FMA ---------------------------------------------------------------------------------------------------
#if SY_X86
using sy::exp256;
using sy::hsum256;

// Every row's dot product with x, 8 stored weights at a time through vgatherdps.
__attribute__((target("avx2,fma"))) void gemv_avx2(const Csr& m, const float* x, float* out) {
  const uint32_t* ptr = m.ptr.data();
  const uint16_t* idx = m.idx.data();
  const float* val = m.val.data();
  for (uint32_t r = 0; r < m.rows; r++) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    uint32_t k = ptr[r];
    const uint32_t end = ptr[r + 1];
    for (; k + 16 <= end; k += 16) {
      const __m256i i0 = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(idx + k)));
      const __m256i i1 = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(idx + k + 8)));
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(val + k), _mm256_i32gather_ps(x, i0, 4), a0);
      a1 = _mm256_fmadd_ps(_mm256_loadu_ps(val + k + 8), _mm256_i32gather_ps(x, i1, 4), a1);
    }
    if (k < end) {
      const __m256i i0 = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(idx + k)));
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(val + k), _mm256_i32gather_ps(x, i0, 4), a0);
    }
    out[r] = hsum256(_mm256_add_ps(a0, a1));
  }
}

__attribute__((target("avx2,fma"))) void one_token_avx2(Expert& e, const float* x, float* y) {
  gemv_avx2(e.gate, x, e.g.data());
  gemv_avx2(e.up, x, e.u.data());
  // g and u are allocated for at least 32 tokens' tiles, so rounding ffn up to 8 stays inside them.
  sy::swiglu256(e.g.data(), e.u.data(), (e.ffn + 7) & ~7u);
  gemv_avx2(e.down, e.g.data(), y);
}

// U independent accumulator sets per row (U·V = 8 vectors), so consecutive FMAs do not wait on each other's
// 4-cycle latency; summed at the end of the row.
template <int V>
__attribute__((target("avx2,fma"))) void spmm_tile_avx2(const Csr& m, const float* in, float* out) {
  constexpr int T = 8 * V;
  constexpr int U = 8 / V;
  const uint32_t* ptr = m.ptr.data();
  const uint16_t* idx = m.idx.data();
  const float* val = m.val.data();
  for (uint32_t r = 0; r < m.rows; r++) {
    __m256 acc[U][V];
    for (int u = 0; u < U; u++)
      for (int v = 0; v < V; v++) acc[u][v] = _mm256_setzero_ps();
    uint32_t k = ptr[r];
    const uint32_t end = m.end[r];
    for (; k + U <= end; k += U) {
      for (int u = 0; u < U; u++) {
        const __m256 w = _mm256_broadcast_ss(val + k + u);
        const float* row = in + static_cast<size_t>(idx[k + u]) * T;
        for (int v = 0; v < V; v++) acc[u][v] = _mm256_fmadd_ps(w, _mm256_loadu_ps(row + 8 * v), acc[u][v]);
      }
    }
    for (; k < end; k++) {
      const __m256 w = _mm256_broadcast_ss(val + k);
      const float* row = in + static_cast<size_t>(idx[k]) * T;
      for (int v = 0; v < V; v++) acc[0][v] = _mm256_fmadd_ps(w, _mm256_loadu_ps(row + 8 * v), acc[0][v]);
    }
    for (int u = 1; u < U; u++)
      for (int v = 0; v < V; v++) acc[0][v] = _mm256_add_ps(acc[0][v], acc[u][v]);
    for (int v = 0; v < V; v++) _mm256_storeu_ps(out + static_cast<size_t>(r) * T + 8 * v, acc[0][v]);
  }
}

template <int V>
__attribute__((target("avx2,fma"))) void tile_avx2(Expert& e) {
  constexpr int T = 8 * V;
  spmm_tile_avx2<V>(e.gate, e.xt.data(), e.g.data());
  spmm_tile_avx2<V>(e.up, e.xt.data(), e.u.data());
  sy::swiglu256(e.g.data(), e.u.data(), static_cast<size_t>(e.ffn) * T);
  spmm_tile_avx2<V>(e.down, e.g.data(), e.yt.data());
}

#endif

// ---- driver -----------------------------------------------------------------------------------------------------

template <int V>
void run_tile(Expert& e, const float* x, float* y, uint32_t t0, uint32_t count) {
  constexpr int T = 8 * V;
  const uint32_t d = e.hidden;
  float* xt = e.xt.data();
  for (uint32_t k = 0; k < d; k++)
    for (int t = 0; t < T; t++) xt[static_cast<size_t>(k) * T + t] = static_cast<uint32_t>(t) < count ? x[static_cast<size_t>(t0 + t) * d + k] : 0.0f;
#if SY_X86
  if (g_avx2) tile_avx2<V>(e);
  else tile_portable<T>(e);
#else
  tile_portable<T>(e);
#endif
  const float* yt = e.yt.data();
  for (uint32_t t = 0; t < count; t++) {
    float* row = y + static_cast<size_t>(t0 + t) * d;
    for (uint32_t i = 0; i < d; i++) row[i] = yt[static_cast<size_t>(i) * T + t];
  }
}

void run_expert(Expert& e, const float* x, float* y, uint32_t tokens) {
  if (tokens <= g_per_token_max) {
    for (uint32_t t = 0; t < tokens; t++) {
      const float* xr = x + static_cast<size_t>(t) * e.hidden;
      float* yr = y + static_cast<size_t>(t) * e.hidden;
#if SY_X86
      if (g_avx2) {
        one_token_avx2(e, xr, yr);
        continue;
      }
#endif
      one_token_portable(e, xr, yr);
    }
    return;
  }
  uint32_t t = 0;
  while (t < tokens) {
    const uint32_t left = tokens - t;
    if (left > 16 && g_avx2) { run_tile<4>(e, x, y, t, left < 32 ? left : 32); t += left < 32 ? left : 32; }
    else if (left > 16) { run_tile<2>(e, x, y, t, 16); t += 16; }
    else if (left > 8) { run_tile<2>(e, x, y, t, left); t += left; }
    else { run_tile<1>(e, x, y, t, left); t += left; }
  }
}

// ---- N-API glue -------------------------------------------------------------------------------------------------

// Builds the padded CSR from (values, column indices, row offsets) as given by JS; returns an error or "".
std::string build_csr(napi_env env, napi_value* a, uint32_t rows, uint32_t cols, Csr& m) {
  void *vp, *ip, *pp;
  size_t vn, in, pn;
  if (!sy::typed_array(env, a[0], napi_float32_array, &vp, &vn)) return "values must be a Float32Array";
  if (!sy::typed_array(env, a[1], napi_uint16_array, &ip, &in)) return "column indices must be a Uint16Array";
  if (!sy::typed_array(env, a[2], napi_uint32_array, &pp, &pn)) return "row offsets must be a Uint32Array";
  if (vn != in) return "values and column indices differ in length";
  if (pn != static_cast<size_t>(rows) + 1) return "row offsets must hold rows + 1 entries";
  const float* v = static_cast<const float*>(vp);
  const uint16_t* ix = static_cast<const uint16_t*>(ip);
  const uint32_t* p = static_cast<const uint32_t*>(pp);
  if (p[0] != 0 || p[rows] != vn) return "row offsets must start at 0 and end at the number of values";
  m.rows = rows;
  m.cols = cols;
  m.ptr.assign(rows + 1, 0);
  for (uint32_t r = 0; r < rows; r++) {
    if (p[r + 1] < p[r]) return "row offsets must not decrease";
    const uint32_t n = p[r + 1] - p[r];
    m.ptr[r + 1] = m.ptr[r] + ((n + kPad - 1) / kPad) * kPad;
  }
  m.end.resize(rows);
  for (uint32_t r = 0; r < rows; r++) m.end[r] = m.ptr[r] + (p[r + 1] - p[r]);
  m.idx.assign(m.ptr[rows], 0);
  m.val.assign(m.ptr[rows], 0.0f);
  for (uint32_t r = 0; r < rows; r++) {
    for (uint32_t k = p[r], o = m.ptr[r]; k < p[r + 1]; k++, o++) {
      if (ix[k] >= cols) return "a column index is out of range";
      m.idx[o] = ix[k];
      m.val[o] = v[k];
    }
  }
  return "";
}

void free_storage(napi_env env, Expert& e) {
  if (e.released) return;
  e.released = true;
  Csr none;
  e.gate = none;
  e.up = none;
  e.down = none;
  std::vector<float>().swap(e.xt);
  std::vector<float>().swap(e.g);
  std::vector<float>().swap(e.u);
  std::vector<float>().swap(e.yt);
  int64_t now;
  napi_adjust_external_memory(env, -e.bytes, &now);
}

void finalize_expert(napi_env env, void* data, void*) {
  Expert* e = static_cast<Expert*>(data);
  free_storage(env, *e);
  delete e;
}

template <typename T>
int64_t bytes_of(const std::vector<T>& v) { return static_cast<int64_t>(v.capacity() * sizeof(T)); }

// create(hidden, ffn, gateValues, gateCols, gateRows, upValues, upCols, upRows, downValues, downCols, downRows)
napi_value Create(napi_env env, napi_callback_info info) {
  size_t argc = 11;
  napi_value a[11];
  SY_CHECK(napi_get_cb_info(env, info, &argc, a, nullptr, nullptr));
  if (argc != 11) {
    napi_throw_type_error(env, nullptr, "create(hidden, ffn, gate CSR ×3, up CSR ×3, down CSR ×3) takes 11 arguments");
    return nullptr;
  }
  uint32_t hidden, ffn;
  if (!sy::whole(env, a[0], 1, 65535, &hidden) || !sy::whole(env, a[1], 1, 65535, &ffn)) {
    napi_throw_range_error(env, nullptr, "hidden and ffn must be integers in 1..65535 (16-bit column indices)");
    return nullptr;
  }
  Expert* e = new (std::nothrow) Expert();
  if (!e) {
    napi_throw_error(env, nullptr, "out of memory");
    return nullptr;
  }
  e->hidden = hidden;
  e->ffn = ffn;
  std::string err = build_csr(env, a + 2, ffn, hidden, e->gate);
  if (err.empty()) err = build_csr(env, a + 5, ffn, hidden, e->up);
  if (err.empty()) err = build_csr(env, a + 8, hidden, ffn, e->down);
  if (!err.empty()) {
    delete e;
    napi_throw_type_error(env, nullptr, ("create: " + err).c_str());
    return nullptr;
  }
  const size_t tile = 32;
  e->xt.assign(static_cast<size_t>(hidden) * tile, 0.0f);
  e->g.assign(static_cast<size_t>(ffn + 8) * tile, 0.0f);
  e->u.assign(static_cast<size_t>(ffn + 8) * tile, 0.0f);
  e->yt.assign(static_cast<size_t>(hidden) * tile, 0.0f);
  for (const Csr* m : {&e->gate, &e->up, &e->down}) e->bytes += bytes_of(m->ptr) + bytes_of(m->end) + bytes_of(m->idx) + bytes_of(m->val);
  e->bytes += bytes_of(e->xt) + bytes_of(e->g) + bytes_of(e->u) + bytes_of(e->yt);
  int64_t now;
  napi_adjust_external_memory(env, e->bytes, &now);
  napi_value handle;
  if (!sy::make_handle(env, e, finalize_expert, &kTag, &handle)) {
    free_storage(env, *e);
    delete e;
    napi_throw_error(env, nullptr, "create: cannot make the handle");
    return nullptr;
  }
  return handle;
}

// perTokenMax(n?): batches of at most n tokens (≥ 1) use the per-token gather path; returns the value in force.
napi_value PerTokenMax(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value a[1];
  SY_CHECK(napi_get_cb_info(env, info, &argc, a, nullptr, nullptr));
  uint32_t n;
  if (argc >= 1 && napi_get_value_uint32(env, a[0], &n) == napi_ok && n >= 1) g_per_token_max = n;
  napi_value out;
  SY_CHECK(napi_create_uint32(env, g_per_token_max, &out));
  return out;
}

}  // namespace

NAPI_MODULE_INIT() {
  g_avx2 = sy::cpu_has_avx2();
  return sy::define(env, exports, {
      {"create", Create},
      {"run", sy::run_ffn<Expert, &kTag, run_expert>},
      {"release", sy::release<Expert, free_storage, &kTag>},
      {"info", sy::info<&g_avx2>},
      {"perTokenMax", PerTokenMax},
      {"setSimd", sy::set_simd<&g_avx2>},
  });
}
