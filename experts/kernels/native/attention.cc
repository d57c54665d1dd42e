// Causal attention of a step's new tokens over each sequence's KV cache, read in place: no padded copy, no mask.
//
// For sequence s with `past` cached positions and `n` new tokens (rows packed back to back in q and out), query
// token i (position past + i) of head h attends to positions 0..past + i of key/value head h / (heads / kvHeads)
// (grouped-query attention, Hugging Face's repeat_kv order):
//   out = softmax(q · Kᵀ · scale) · V
// Keys and values are the KvCache's own arrays, head-major [kvHeads, capacity, head_dim] (src/engine/kv-cache.ts).
//
// Why native: onnxruntime needs the keys padded into one [B, heads, Tk, head_dim] tensor and a mask per run (a copy
// of every sequence's past per layer, or a second cache kept in step), and its batched MatMuls with one query row
// cost ~1 ms per layer at batch 32 (bench/RESULTS.md); its GroupQueryAttention contrib op measured slower still. Here
// each query row is computed on its own, in the same order whatever else is in the step: a sequence's numbers do
// not depend on its batch, nor on how its prompt was split into chunks.
//
// The AVX2/FMA path (chosen at run time, as in sparse_ffn.cc) needs head_dim % 8 == 0; the portable loops serve the
// rest. Query rows are spread over the compute team when the call passes one (team.h), else run on the calling thread.
#include <node_api.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "napi_glue.h"
#include "simd.h"
#include "team.h"

namespace sy_attention {

bool g_avx2 = false;

struct Shape {
  uint32_t heads, kvHeads, headDim;
  float scale;
};

// scores[0..len) → softmax weights in place (max subtracted; weights divided by their sum).
void softmax_portable(float* scores, uint32_t len) {
  float m = -FLT_MAX;
  for (uint32_t t = 0; t < len; t++) m = std::max(m, scores[t]);
  float sum = 0;
  for (uint32_t t = 0; t < len; t++) sum += (scores[t] = std::exp(scores[t] - m));
  const float inv = 1.0f / sum;
  for (uint32_t t = 0; t < len; t++) scores[t] *= inv;
}

void row_portable(const Shape& sh, const float* q, const float* k, const float* v, uint32_t len, float* scores, float* o) {
  const uint32_t hd = sh.headDim;
  for (uint32_t t = 0; t < len; t++) {
    float acc = 0;
    for (uint32_t j = 0; j < hd; j++) acc += q[j] * k[static_cast<size_t>(t) * hd + j];
    scores[t] = acc * sh.scale;
  }
  softmax_portable(scores, len);
  for (uint32_t j = 0; j < hd; j++) o[j] = 0;
  for (uint32_t t = 0; t < len; t++)
    for (uint32_t j = 0; j < hd; j++) o[j] += scores[t] * v[static_cast<size_t>(t) * hd + j];
}

#if SY_X86
// One query row: scores for `len` keys (4 keys at a time for independent FMA chains; each key's dot product is the
// same chain over head_dim whether it falls in a group of 4 or the tail), softmax with a vectorised exp, then the
// weighted sum of values in blocks of 64 floats held in 8 registers. `scores` has room for len rounded up to 8.
__attribute__((target("avx2,fma"))) void row_avx2(const Shape& sh, const float* q, const float* k, const float* v, uint32_t len,
                                                  float* scores, float* o) {
  const uint32_t hd = sh.headDim;
  uint32_t t = 0;
  for (; t + 4 <= len; t += 4) {
    const float* k0 = k + static_cast<size_t>(t) * hd;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    for (uint32_t j = 0; j < hd; j += 8) {
      const __m256 qj = _mm256_loadu_ps(q + j);
      a0 = _mm256_fmadd_ps(qj, _mm256_loadu_ps(k0 + j), a0);
      a1 = _mm256_fmadd_ps(qj, _mm256_loadu_ps(k0 + hd + j), a1);
      a2 = _mm256_fmadd_ps(qj, _mm256_loadu_ps(k0 + 2 * hd + j), a2);
      a3 = _mm256_fmadd_ps(qj, _mm256_loadu_ps(k0 + 3 * hd + j), a3);
    }
    scores[t] = sy::hsum256(a0) * sh.scale;
    scores[t + 1] = sy::hsum256(a1) * sh.scale;
    scores[t + 2] = sy::hsum256(a2) * sh.scale;
    scores[t + 3] = sy::hsum256(a3) * sh.scale;
  }
  for (; t < len; t++) {
    const float* kt = k + static_cast<size_t>(t) * hd;
    __m256 a = _mm256_setzero_ps();
    for (uint32_t j = 0; j < hd; j += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(q + j), _mm256_loadu_ps(kt + j), a);
    scores[t] = sy::hsum256(a) * sh.scale;
  }

  // Softmax over scores[0..len): the padding lanes up to a multiple of 8 are -FLT_MAX (exp → 0, left out of the sum).
  const uint32_t padded = (len + 7) & ~7u;
  for (uint32_t p = len; p < padded; p++) scores[p] = -FLT_MAX;
  __m256 mv = _mm256_set1_ps(-FLT_MAX);
  for (uint32_t p = 0; p < padded; p += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(scores + p));
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mv), _mm256_extractf128_ps(mv, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
  const __m256 m = _mm256_set1_ps(_mm_cvtss_f32(m4));
  __m256 sum = _mm256_setzero_ps();
  for (uint32_t p = 0; p < padded; p += 8) {
    __m256 e = sy::exp256(_mm256_sub_ps(_mm256_loadu_ps(scores + p), m));
    if (p + 8 > len) e = _mm256_and_ps(e, _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(len - p)),
                                                                                 _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))));
    _mm256_storeu_ps(scores + p, e);
    sum = _mm256_add_ps(sum, e);
  }
  const float inv = 1.0f / sy::hsum256(sum);

  uint32_t j = 0;
  for (; j + 64 <= hd; j += 64) {
    __m256 o0 = _mm256_setzero_ps(), o1 = _mm256_setzero_ps(), o2 = _mm256_setzero_ps(), o3 = _mm256_setzero_ps();
    __m256 o4 = _mm256_setzero_ps(), o5 = _mm256_setzero_ps(), o6 = _mm256_setzero_ps(), o7 = _mm256_setzero_ps();
    for (uint32_t u = 0; u < len; u++) {
      const __m256 w = _mm256_set1_ps(scores[u] * inv);
      const float* vt = v + static_cast<size_t>(u) * hd + j;
      o0 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vt), o0);
      o1 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vt + 8), o1);
      o2 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vt + 16), o2);
      o3 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vt + 24), o3);
      o4 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vt + 32), o4);
      o5 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vt + 40), o5);
      o6 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vt + 48), o6);
      o7 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vt + 56), o7);
    }
    _mm256_storeu_ps(o + j, o0);
    _mm256_storeu_ps(o + j + 8, o1);
    _mm256_storeu_ps(o + j + 16, o2);
    _mm256_storeu_ps(o + j + 24, o3);
    _mm256_storeu_ps(o + j + 32, o4);
    _mm256_storeu_ps(o + j + 40, o5);
    _mm256_storeu_ps(o + j + 48, o6);
    _mm256_storeu_ps(o + j + 56, o7);
  }
  for (; j < hd; j += 8) {
    __m256 acc = _mm256_setzero_ps();
    for (uint32_t u = 0; u < len; u++)
      acc = _mm256_fmadd_ps(_mm256_set1_ps(scores[u] * inv), _mm256_loadu_ps(v + static_cast<size_t>(u) * hd + j), acc);
    _mm256_storeu_ps(o + j, acc);
  }
}
#endif

// The step's sequences as attend() reads them: S entries each (keys[s], values[s]: Float32 [kvHeads, caps[s], head_dim]).
struct Sequences {
  uint32_t count;
  const uint32_t *caps, *pasts, *counts;
  float* const* keys;
  float* const* values;
};

// out [N, heads·head_dim] = attention of q [N, heads·head_dim] over each sequence's cache (positions 0..past + i),
// N = Σ counts; newK/newV [N, kvHeads·head_dim] (both or neither) are written into the caches first. On `team`.
void attend(sy::Team* team, const Shape& sh, const float* q, float* out, const Sequences& seq, const float* newK, const float* newV) {
  const uint32_t sequences = seq.count;
  const uint32_t *caps = seq.caps, *pasts = seq.pasts, *counts = seq.counts;
  float* const* keys = seq.keys;
  float* const* values = seq.values;
  size_t tokens = 0;
  uint32_t longest = 0;
  for (uint32_t s = 0; s < sequences; s++) {
    tokens += counts[s];
    longest = std::max(longest, pasts[s] + counts[s]);
  }
  const size_t rowFloats = static_cast<size_t>(sh.heads) * sh.headDim;
  const size_t kvFloats = static_cast<size_t>(sh.kvHeads) * sh.headDim;
  // The new rows go in before they are read: a query row attends to its own position and, in a prefill chunk, to the
  // rows before it. A sequence of one new row is written by the unit that attends with it (that head's key and
  // value, in parallel); those of several rows first, here, since other units read them.
  const uint32_t hd = sh.headDim;
  const auto put = [&](uint32_t s, uint32_t i, size_t row, uint32_t h) {
    const size_t at = (static_cast<size_t>(h) * caps[s] + pasts[s] + i) * hd;
    std::memcpy(keys[s] + at, newK + row * kvFloats + static_cast<size_t>(h) * hd, hd * sizeof(float));
    std::memcpy(values[s] + at, newV + row * kvFloats + static_cast<size_t>(h) * hd, hd * sizeof(float));
  };
  if (newK) {
    for (uint32_t s = 0, row = 0; s < sequences; row += counts[s], s++)
      if (counts[s] > 1)
        for (uint32_t i = 0; i < counts[s]; i++)
          for (uint32_t h = 0; h < sh.kvHeads; h++) put(s, i, row + i, h);
  }
  const uint32_t group = sh.heads / sh.kvHeads;
#if SY_X86
  const bool simd = g_avx2 && sh.headDim % 8 == 0;
#endif
  // One unit per query row and key/value head (its group of query heads): rows are independent, and a row's
  // heads read separate keys and values, so on a team the work spreads evenly even when rows' pasts differ. Each
  // query head is computed the same way on any thread.
  std::vector<uint32_t> rowSequence(tokens);
  for (uint32_t s = 0, row = 0; s < sequences; s++)
    for (uint32_t i = 0; i < counts[s]; i++) rowSequence[row++] = s;
  std::vector<uint32_t> firstRow(sequences);
  for (uint32_t s = 0, row = 0; s < sequences; s++) {
    firstRow[s] = row;
    row += counts[s];
  }
  auto body = [&](uint32_t unit) {
    thread_local std::vector<float> scores;
    if (scores.size() < (longest + 7u) / 8 * 8) scores.resize((longest + 7u) / 8 * 8);
    const uint32_t row = unit / sh.kvHeads, kv = unit % sh.kvHeads;
    const uint32_t s = rowSequence[row];
    const uint32_t len = pasts[s] + (row - firstRow[s]) + 1;
    const size_t head = static_cast<size_t>(kv) * caps[s] * sh.headDim;
    if (newK && counts[s] == 1) put(s, 0, row, kv);
    for (uint32_t h = kv * group; h < (kv + 1) * group; h++) {
      const float* qh = q + row * rowFloats + static_cast<size_t>(h) * sh.headDim;
      float* oh = out + row * rowFloats + static_cast<size_t>(h) * sh.headDim;
#if SY_X86
      if (simd) {
        row_avx2(sh, qh, keys[s] + head, values[s] + head, len, scores.data(), oh);
        continue;
      }
#endif
      row_portable(sh, qh, keys[s] + head, values[s] + head, len, scores.data(), oh);
    }
  };
  sy::parallel_for(team, static_cast<uint32_t>(tokens * sh.kvHeads), body);
}

// ---- N-API glue -------------------------------------------------------------------------------------------------

bool float_array(napi_env env, napi_value value, float** data, size_t* length) {
  return sy::typed_array(env, value, napi_float32_array, data, length);
}

bool uint32_array(napi_env env, napi_value value, uint32_t** data, size_t* length) {
  return sy::typed_array(env, value, napi_uint32_array, data, length);
}

napi_value fail(napi_env env, const std::string& message) {
  napi_throw_range_error(env, nullptr, ("attend: " + message).c_str());
  return nullptr;
}

// attend(q, out, keys[], values[], capacities, pasts, counts, heads, kvHeads, headDim, scale, team?) -> undefined
//   q, out: Float32Array [N, heads · head_dim], N = Σ counts (the step's new tokens, sequence by sequence)
//   keys[s], values[s]: Float32Array [kvHeads, capacities[s], head_dim], positions 0..pasts[s] + counts[s] written
//   capacities, pasts, counts: Uint32Array [S]
//   team: a compute team handle (dense_ffn's teamHandle()) the query rows are spread over; absent or null: this thread
//   newK, newV (optional, both or neither): Float32Array [N, kvHeads · head_dim], the step's new key/value rows
//     (position-major, as the projections give them); written into keys[s]/values[s] at positions pasts[s].. first
napi_value Attend(napi_env env, napi_callback_info info) {
  size_t argc = 14;
  napi_value a[14];
  if (napi_get_cb_info(env, info, &argc, a, nullptr, nullptr) != napi_ok || argc < 11 || argc == 13) {
    napi_throw_type_error(env, nullptr, "attend(q, out, keys, values, capacities, pasts, counts, heads, kvHeads, headDim, scale, team?, newK?, newV?) takes 11, 12 or 14 arguments");
    return nullptr;
  }
  sy::Team* team = nullptr;
  if (argc >= 12 && !sy::team_arg(env, a[11], &team)) return fail(env, "team must be a handle from the dense_ffn addon's teamHandle(), or null");
  float *q, *out;
  size_t qn, on, sn, pn, cn;
  uint32_t *caps, *pasts, *counts;
  Shape sh;
  double scale;
  if (!float_array(env, a[0], &q, &qn) || !float_array(env, a[1], &out, &on)) return fail(env, "q and out must be Float32Arrays");
  if (!uint32_array(env, a[4], &caps, &cn) || !uint32_array(env, a[5], &pasts, &pn) || !uint32_array(env, a[6], &counts, &sn))
    return fail(env, "capacities, pasts and counts must be Uint32Arrays");
  if (napi_get_value_uint32(env, a[7], &sh.heads) != napi_ok || napi_get_value_uint32(env, a[8], &sh.kvHeads) != napi_ok ||
      napi_get_value_uint32(env, a[9], &sh.headDim) != napi_ok || napi_get_value_double(env, a[10], &scale) != napi_ok)
    return fail(env, "heads, kvHeads and headDim must be integers and scale a number");
  sh.scale = static_cast<float>(scale);
  if (sh.heads == 0 || sh.kvHeads == 0 || sh.headDim == 0 || sh.heads % sh.kvHeads != 0)
    return fail(env, "heads and kvHeads must be positive with heads a multiple of kvHeads, and headDim positive");
  bool isArray = false;
  uint32_t sequences = 0, valueCount = 0;
  if (napi_is_array(env, a[2], &isArray) != napi_ok || !isArray || napi_get_array_length(env, a[2], &sequences) != napi_ok ||
      napi_is_array(env, a[3], &isArray) != napi_ok || !isArray || napi_get_array_length(env, a[3], &valueCount) != napi_ok)
    return fail(env, "keys and values must be arrays of Float32Arrays");
  if (valueCount != sequences || cn != sequences || pn != sequences || sn != sequences)
    return fail(env, "keys, values, capacities, pasts and counts must have one entry per sequence");
  const size_t rowFloats = static_cast<size_t>(sh.heads) * sh.headDim;
  size_t tokens = 0;
  for (uint32_t s = 0; s < sequences; s++) tokens += counts[s];
  if (qn != tokens * rowFloats || on != qn) return fail(env, "q and out must hold Σ counts × heads × headDim floats");

  const size_t kvFloats = static_cast<size_t>(sh.kvHeads) * sh.headDim;
  float *newK = nullptr, *newV = nullptr;
  if (argc == 14) {
    size_t nk, nv;
    if (!float_array(env, a[12], &newK, &nk) || !float_array(env, a[13], &newV, &nv) || nk != tokens * kvFloats || nv != nk)
      return fail(env, "newK and newV must be Float32Arrays of Σ counts × kvHeads × headDim floats");
  }
  std::vector<float*> keys(sequences), values(sequences);
  for (uint32_t s = 0; s < sequences; s++) {
    napi_value kv, vv;
    float *kp, *vp;
    size_t kn, vn;
    if (napi_get_element(env, a[2], s, &kv) != napi_ok || napi_get_element(env, a[3], s, &vv) != napi_ok ||
        !float_array(env, kv, &kp, &kn) || !float_array(env, vv, &vp, &vn))
      return fail(env, "sequence " + std::to_string(s) + ": keys and values must be Float32Arrays");
    if (static_cast<uint64_t>(pasts[s]) + counts[s] > caps[s])
      return fail(env, "sequence " + std::to_string(s) + ": past + count exceeds its capacity");
    const size_t need = static_cast<size_t>(sh.kvHeads) * caps[s] * sh.headDim;
    if (kn < need || vn < need) return fail(env, "sequence " + std::to_string(s) + ": keys and values must hold kvHeads × capacity × headDim floats");
    keys[s] = kp;
    values[s] = vp;
  }

  attend(team, sh, q, out, Sequences{sequences, caps, pasts, counts, keys.data(), values.data()}, newK, newV);
  return nullptr;
}

// This part's functions, added to `exports` (model.cc makes them one addon).
napi_value init(napi_env env, napi_value exports) {
  g_avx2 = sy::cpu_has_avx2();
  return sy::define(env, exports, {
      {"attend", Attend},
      {"info", sy::info<&g_avx2>},
  });
}

}  // namespace sy_attention
