// The trunk's per-layer dense stages around the attention core, for a step's packed tokens x [N, d]:
//
//   project: xn = rms_norm(x) · input_norm; q = xn·Wqᵀ (+ bq), k, v likewise; q, k rms-normed over their whole width
//            where the architecture has q/k norms (OLMoE); NeoX rotary on q and k with each token's cos/sin [N, hd].
//   output:  h = x + (attended·Woᵀ) × residual_multiplier; m = rms_norm(h) · post_norm; router logits = m·Wrᵀ (fp32,
//            as Switch Transformer keeps the router); h += shared expert(m) (× sigmoid(m·Wsᵀ) when gated).
//
// The same arithmetic as the ONNX graphs of src/engine/attention.ts, which remain the reference (and the path for
// other execution providers). Why native: those graphs cost onnxruntime ~40 µs of fixed overhead per run plus a few
// µs per node, two runs per layer and step, while the arithmetic of a decode step is a few µs per layer; the ONNX
// runs also hop through setImmediate in onnxruntime-node. Every value is computed per token in a fixed order
// (matmul.h), so a token's numbers do not depend on its batch.
//
// Widths (d, kv width, shared expert width) must be multiples of 8 and the head size even: the JS side checks and
// keeps the ONNX path otherwise.
#include <node_api.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <new>
#include <string>
#include <vector>

#include "matmul.h"
#include "napi_glue.h"
#include "simd.h"
#include "team.h"

namespace sy_trunk {

bool g_avx2 = false;
const napi_type_tag kTag = {0x5377697463687961ULL, 0x7472756e6b5f6c79ULL};  // trunk layer handles
// Weight rows per unit of work on the team: 32 rows of a 256-wide matrix are 32 KiB.
constexpr uint32_t kRowsPerUnit = 32;
// Tokens per pass: bounds the scratch (shared by every layer of the thread) to kChunk rows of the widest stage.
constexpr uint32_t kChunk = 64;

struct Layer {
  uint32_t d = 0, heads = 0, kvHeads = 0, headDim = 0, kvDim = 0, experts = 0, shared = 0;
  float eps = 0, residual = 1;
  sy::Team* team = nullptr;  // the compute team its matrix products are split over, or null: the calling thread
  bool released = false, qkNorm = false, bias = false, sharedGated = false;
  int64_t bytes = 0;
  std::vector<float> inputNorm, qNorm, kNorm, postNorm, bq, bk, bv;
  sy::Matrix wq, wk, wv, wo, router, sGate, sUp, sDown, sScale;
};

// The final norm and LM head: logits = (rms_norm(x) · norm) · Wᵀ / logitsScaling.
struct Head {
  uint32_t d = 0, vocab = 0;
  float eps = 0, scaling = 1;
  sy::Team* team = nullptr;
  bool released = false;
  int64_t bytes = 0;
  std::vector<float> norm;
  sy::Matrix weight;
};
const napi_type_tag kHeadTag = {0x5377697463687961ULL, 0x7472756e6b5f6864ULL};  // head handles

// One chunk's intermediate rows, shared by every layer of a thread (calls are synchronous): kChunk × the widest.
struct Scratch {
  std::vector<float> xn, g, u, o, gateLogit;
};
thread_local Scratch t_scratch;

// Σ x² over n floats as eight lanes (x[i] into lane i mod 8) summed in matmul.h's order: one dependent chain of n/8
// adds instead of n, so a norm no longer holds up the team (it runs on the loop's caller between parallel loops).
float sum_squares_portable(const float* x, uint32_t n) {
  float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  uint32_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (uint32_t l = 0; l < 8; l++) lane[l] += x[i + l] * x[i + l];
  float sum = ((lane[0] + lane[4]) + (lane[2] + lane[6])) + ((lane[1] + lane[5]) + (lane[3] + lane[7]));
  for (; i < n; i++) sum += x[i] * x[i];
  return sum;
}

#if SY_X86
__attribute__((target("avx2,fma"))) float sum_squares_avx2(const float* x, uint32_t n) {
  __m256 acc = _mm256_setzero_ps();
  uint32_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    acc = _mm256_fmadd_ps(v, v, acc);
  }
  float sum = sy::hsum256(acc);
  for (; i < n; i++) sum += x[i] * x[i];
  return sum;
}
#endif

// y = x / sqrt(mean(x²) + eps) · w over n floats (ONNX graph: Pow, ReduceMean, Add, Sqrt, Div, Mul).
void rms_norm(const float* x, const float* w, uint32_t n, float eps, float* y) {
#if SY_X86
  const float sum = g_avx2 ? sum_squares_avx2(x, n) : sum_squares_portable(x, n);
#else
  const float sum = sum_squares_portable(x, n);
#endif
  const float rms = std::sqrt(sum / static_cast<float>(n) + eps);
  for (uint32_t i = 0; i < n; i++) y[i] = x[i] / rms * w[i];
}

// NeoX rotary over each head of a row: out = x·cos + rotate_half(x)·sin, rotate_half(x) = [−x₂, x₁].
void rotary(float* row, uint32_t heads, uint32_t headDim, const float* cos, const float* sin) {
  const uint32_t half = headDim / 2;
  for (uint32_t h = 0; h < heads; h++) {
    float* x = row + static_cast<size_t>(h) * headDim;
    for (uint32_t j = 0; j < half; j++) {
      const float a = x[j], b = x[j + half];
      x[j] = a * cos[j] + (-b) * sin[j];
      x[j + half] = b * cos[j + half] + a * sin[j + half];
    }
  }
}

// One product of several that read the same input rows: out[t·outStride + r] = W[r] · in[t·inStride].
struct Product {
  const sy::Matrix* m;
  float* out;
  uint32_t outStride;
};

// The products over `n` input rows, split by blocks of weight rows over the compute team (each value computed as
// sy::matmul computes it, so the split changes nothing).
void matmuls(sy::Team* team, std::initializer_list<Product> products, const float* in, uint32_t inStride, uint32_t n) {
  const Product* list = products.begin();
  uint32_t units = 0, bounds[8];
  const uint32_t count = static_cast<uint32_t>(products.size());
  for (uint32_t i = 0; i < count; i++) bounds[i] = (units += (list[i].m->rows + kRowsPerUnit - 1) / kRowsPerUnit);
  auto body = [&](uint32_t u) {
    uint32_t i = 0;
    while (u >= bounds[i]) i++;
    const Product& p = list[i];
    const uint32_t r0 = (u - (i ? bounds[i - 1] : 0)) * kRowsPerUnit;
    const uint32_t r1 = r0 + kRowsPerUnit < p.m->rows ? r0 + kRowsPerUnit : p.m->rows;
    sy::matmul_rows(g_avx2, *p.m, r0, r1, in, inStride, n, p.out, p.outStride);
  };
  sy::parallel_for(team, units, body);
}

void grow(std::vector<float>& v, size_t n) {
  if (v.size() < n) v.assign(n, 0.0f);
}

// One chunk of at most kChunk tokens.
void project(Layer& L, const float* x, uint32_t n, const float* cos, const float* sin, float* q, float* k, float* v) {
  const uint32_t d = L.d;
  std::vector<float>& xn = t_scratch.xn;
  grow(xn, static_cast<size_t>(n) * d);
  for (uint32_t t = 0; t < n; t++) rms_norm(x + static_cast<size_t>(t) * d, L.inputNorm.data(), d, L.eps, xn.data() + static_cast<size_t>(t) * d);
  matmuls(L.team, {{&L.wq, q, d}, {&L.wk, k, L.kvDim}, {&L.wv, v, L.kvDim}}, xn.data(), d, n);
  for (uint32_t t = 0; t < n; t++) {
    float* qt = q + static_cast<size_t>(t) * d;
    float* kt = k + static_cast<size_t>(t) * L.kvDim;
    float* vt = v + static_cast<size_t>(t) * L.kvDim;
    if (L.bias) {
      for (uint32_t i = 0; i < d; i++) qt[i] += L.bq[i];
      for (uint32_t i = 0; i < L.kvDim; i++) kt[i] += L.bk[i];
      for (uint32_t i = 0; i < L.kvDim; i++) vt[i] += L.bv[i];
    }
    if (L.qkNorm) {
      rms_norm(qt, L.qNorm.data(), d, L.eps, qt);
      rms_norm(kt, L.kNorm.data(), L.kvDim, L.eps, kt);
    }
    const float* c = cos + static_cast<size_t>(t) * L.headDim;
    const float* s = sin + static_cast<size_t>(t) * L.headDim;
    rotary(qt, L.heads, L.headDim, c, s);
    rotary(kt, L.kvHeads, L.headDim, c, s);
  }
}

// One chunk of at most kChunk tokens.
void output(Layer& L, const float* x, const float* attended, uint32_t n, float* h, float* m, float* logits) {
  const uint32_t d = L.d;
  Scratch& s = t_scratch;
  grow(s.o, static_cast<size_t>(n) * d);
  matmuls(L.team, {{&L.wo, s.o.data(), d}}, attended, d, n);
  for (size_t i = 0, total = static_cast<size_t>(n) * d; i < total; i++) h[i] = x[i] + (L.residual == 1.0f ? s.o[i] : s.o[i] * L.residual);
  for (uint32_t t = 0; t < n; t++) rms_norm(h + static_cast<size_t>(t) * d, L.postNorm.data(), d, L.eps, m + static_cast<size_t>(t) * d);
  sy::matmul(g_avx2, L.router, m, d, n, logits, L.experts);
  if (L.shared == 0) return;
  // h += down(silu(gate·m) ⊙ up·m) (× sigmoid(m·Wsᵀ)), as withSharedExpert in src/engine/attention.ts.
  const uint32_t w = L.shared;
  grow(s.g, static_cast<size_t>(n) * w);
  grow(s.u, static_cast<size_t>(n) * w);
  matmuls(L.team, {{&L.sGate, s.g.data(), w}, {&L.sUp, s.u.data(), w}}, m, d, n);
  sy::swiglu(g_avx2, s.g.data(), s.u.data(), static_cast<size_t>(n) * w);
  matmuls(L.team, {{&L.sDown, s.o.data(), d}}, s.g.data(), w, n);
  if (L.sharedGated) {
    grow(s.gateLogit, n);
    sy::matmul(g_avx2, L.sScale, m, d, n, s.gateLogit.data(), 1);
  }
  for (uint32_t t = 0; t < n; t++) {
    const float scale = L.sharedGated ? 1.0f / (1.0f + std::exp(-s.gateLogit[t])) : 1.0f;
    float* ht = h + static_cast<size_t>(t) * d;
    const float* ot = s.o.data() + static_cast<size_t>(t) * d;
    for (uint32_t i = 0; i < d; i++) ht[i] += L.sharedGated ? ot[i] * scale : ot[i];
  }
}

// One chunk of at most kChunk tokens: x [n, d] → logits [n, vocab].
void head(Head& H, const float* x, uint32_t n, float* logits) {
  std::vector<float>& xn = t_scratch.xn;
  grow(xn, static_cast<size_t>(n) * H.d);
  for (uint32_t t = 0; t < n; t++) rms_norm(x + static_cast<size_t>(t) * H.d, H.norm.data(), H.d, H.eps, xn.data() + static_cast<size_t>(t) * H.d);
  matmuls(H.team, {{&H.weight, logits, H.vocab}}, xn.data(), H.d, n);
  if (H.scaling != 1.0f)
    for (size_t i = 0, total = static_cast<size_t>(n) * H.vocab; i < total; i++) logits[i] /= H.scaling;
}

// ---- N-API glue -------------------------------------------------------------------------------------------------

void free_storage(napi_env env, Layer& L) {
  if (L.released) return;
  L.released = true;
  for (sy::Matrix* m : {&L.wq, &L.wk, &L.wv, &L.wo, &L.router, &L.sGate, &L.sUp, &L.sDown, &L.sScale}) std::vector<float>().swap(m->w);
  for (std::vector<float>* v : {&L.inputNorm, &L.qNorm, &L.kNorm, &L.postNorm, &L.bq, &L.bk, &L.bv}) std::vector<float>().swap(*v);
  int64_t now;
  napi_adjust_external_memory(env, -L.bytes, &now);
}

void finalize_layer(napi_env env, void* data, void*) {
  Layer* L = static_cast<Layer*>(data);
  free_storage(env, *L);
  delete L;
}

bool get_uint(napi_env env, napi_value obj, const char* name, uint32_t* out) {
  napi_value v;
  return napi_get_named_property(env, obj, name, &v) == napi_ok && sy::whole(env, v, 0, 1 << 20, out);
}
bool get_float(napi_env env, napi_value obj, const char* name, float* out) {
  napi_value v;
  double d;
  if (napi_get_named_property(env, obj, name, &v) != napi_ok || napi_get_value_double(env, v, &d) != napi_ok) return false;
  *out = static_cast<float>(d);
  return true;
}
bool get_bool(napi_env env, napi_value obj, const char* name, bool* out) {
  napi_value v;
  return napi_get_named_property(env, obj, name, &v) == napi_ok && napi_get_value_bool(env, v, out) == napi_ok;
}

// The Float32Array `name` of `obj` with exactly `count` floats; "" or the error.
std::string get_floats(napi_env env, napi_value obj, const char* name, size_t count, const float** data) {
  napi_value v;
  size_t n = 0;
  float* p = nullptr;
  if (napi_get_named_property(env, obj, name, &v) != napi_ok || !sy::typed_array(env, v, napi_float32_array, &p, &n))
    return std::string(name) + " must be a Float32Array";
  if (n != count) return std::string(name) + " must hold " + std::to_string(count) + " floats";
  *data = p;
  return "";
}

std::string vec(napi_env env, napi_value obj, const char* name, size_t count, std::vector<float>& out) {
  const float* p;
  std::string err = get_floats(env, obj, name, count, &p);
  if (err.empty()) out.assign(p, p + count);
  return err;
}

std::string mat(napi_env env, napi_value obj, const char* name, uint32_t rows, uint32_t cols, sy::Matrix& out) {
  const float* p;
  std::string err = get_floats(env, obj, name, static_cast<size_t>(rows) * cols, &p);
  if (err.empty()) sy::fill(out, p, rows, cols);
  return err;
}

// createLayer({d, heads, kvHeads, experts, eps, residual, qkNorm, bias, shared, sharedGated, inputNorm, q, k, v,
//              qNorm?, kNorm?, qBias?, kBias?, vBias?, o, postNorm, router, sharedGate?, sharedUp?, sharedDown?,
//              sharedScale?, team?}) → handle. Weights in torch Linear layout [out, in], copied. `team`: a compute
//              team handle (dense_ffn's teamHandle()) the layer's matrix products are split over; absent: this thread.
napi_value CreateLayer(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value spec;
  SY_CHECK(napi_get_cb_info(env, info, &argc, &spec, nullptr, nullptr));
  if (argc != 1) return sy::throw_type(env, "createLayer(spec) takes one object");
  Layer* L = new (std::nothrow) Layer();
  if (!L) return sy::throw_error(env, "createLayer: out of memory");
  std::string err;
  if (!get_uint(env, spec, "d", &L->d) || !get_uint(env, spec, "heads", &L->heads) || !get_uint(env, spec, "kvHeads", &L->kvHeads) ||
      !get_uint(env, spec, "experts", &L->experts) || !get_uint(env, spec, "shared", &L->shared) || !get_float(env, spec, "eps", &L->eps) ||
      !get_float(env, spec, "residual", &L->residual) || !get_bool(env, spec, "qkNorm", &L->qkNorm) || !get_bool(env, spec, "bias", &L->bias) ||
      !get_bool(env, spec, "sharedGated", &L->sharedGated)) {
    err = "d, heads, kvHeads, experts, shared (whole numbers up to 2^20), eps, residual (numbers), qkNorm, bias, sharedGated (booleans) are required";
  } else if (L->d == 0 || L->heads == 0 || L->kvHeads == 0 || L->d % L->heads != 0 || L->heads % L->kvHeads != 0 || L->experts == 0) {
    err = "d, heads, kvHeads and experts must be positive, heads must divide d and kvHeads heads";
  } else {
    L->headDim = L->d / L->heads;
    L->kvDim = L->kvHeads * L->headDim;
    if (L->d % 8 || L->kvDim % 8 || L->shared % 8 || L->headDim % 2) err = "d, the kv width and the shared expert width must be multiples of 8 and the head size even";
  }
  const uint32_t d = L->d, kv = L->kvDim, s = L->shared;
  napi_value teamValue;
  if (err.empty() && (napi_get_named_property(env, spec, "team", &teamValue) != napi_ok || !sy::team_arg(env, teamValue, &L->team)))
    err = "team must be a handle from the dense_ffn addon's teamHandle(), or absent";
  if (err.empty()) err = vec(env, spec, "inputNorm", d, L->inputNorm);
  if (err.empty()) err = mat(env, spec, "q", d, d, L->wq);
  if (err.empty()) err = mat(env, spec, "k", kv, d, L->wk);
  if (err.empty()) err = mat(env, spec, "v", kv, d, L->wv);
  if (err.empty() && L->qkNorm) err = vec(env, spec, "qNorm", d, L->qNorm);
  if (err.empty() && L->qkNorm) err = vec(env, spec, "kNorm", kv, L->kNorm);
  if (err.empty() && L->bias) err = vec(env, spec, "qBias", d, L->bq);
  if (err.empty() && L->bias) err = vec(env, spec, "kBias", kv, L->bk);
  if (err.empty() && L->bias) err = vec(env, spec, "vBias", kv, L->bv);
  if (err.empty()) err = mat(env, spec, "o", d, d, L->wo);
  if (err.empty()) err = vec(env, spec, "postNorm", d, L->postNorm);
  if (err.empty()) err = mat(env, spec, "router", L->experts, d, L->router);
  if (err.empty() && s > 0) err = mat(env, spec, "sharedGate", s, d, L->sGate);
  if (err.empty() && s > 0) err = mat(env, spec, "sharedUp", s, d, L->sUp);
  if (err.empty() && s > 0) err = mat(env, spec, "sharedDown", d, s, L->sDown);
  if (err.empty() && s > 0 && L->sharedGated) err = mat(env, spec, "sharedScale", 1, d, L->sScale);
  if (!err.empty()) {
    delete L;
    return sy::throw_type(env, ("createLayer: " + err).c_str());
  }
  for (sy::Matrix* m : {&L->wq, &L->wk, &L->wv, &L->wo, &L->router, &L->sGate, &L->sUp, &L->sDown, &L->sScale})
    L->bytes += static_cast<int64_t>(m->w.capacity() * sizeof(float));
  int64_t now;
  napi_adjust_external_memory(env, L->bytes, &now);
  napi_value handle;
  if (!sy::make_handle(env, L, finalize_layer, &kTag, &handle)) {
    free_storage(env, *L);
    delete L;
    return sy::throw_error(env, "createLayer: cannot make the handle");
  }
  return handle;
}

bool floats_arg(napi_env env, napi_value v, size_t need, float** out);

void free_head(napi_env env, Head& H) {
  if (H.released) return;
  H.released = true;
  std::vector<float>().swap(H.weight.w);
  std::vector<float>().swap(H.norm);
  int64_t now;
  napi_adjust_external_memory(env, -H.bytes, &now);
}

void finalize_head(napi_env env, void* data, void*) {
  Head* H = static_cast<Head*>(data);
  free_head(env, *H);
  delete H;
}

// createHead({d, vocab, eps, scaling, norm [d], weight [vocab·d], team?}) → handle: the final norm and LM head.
napi_value CreateHead(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value spec;
  SY_CHECK(napi_get_cb_info(env, info, &argc, &spec, nullptr, nullptr));
  if (argc != 1) return sy::throw_type(env, "createHead(spec) takes one object");
  Head* H = new (std::nothrow) Head();
  if (!H) return sy::throw_error(env, "createHead: out of memory");
  std::string err;
  napi_value teamValue;
  if (!get_uint(env, spec, "d", &H->d) || !get_uint(env, spec, "vocab", &H->vocab) || !get_float(env, spec, "eps", &H->eps) ||
      !get_float(env, spec, "scaling", &H->scaling) || H->d == 0 || H->vocab == 0 || H->scaling == 0.0f)
    err = "d, vocab (positive whole numbers up to 2^20), eps and scaling (numbers, scaling not 0) are required";
  else if (H->d % 8) err = "d must be a multiple of 8";
  else if (napi_get_named_property(env, spec, "team", &teamValue) != napi_ok || !sy::team_arg(env, teamValue, &H->team))
    err = "team must be a handle from the dense_ffn addon's teamHandle(), or absent";
  if (err.empty()) err = vec(env, spec, "norm", H->d, H->norm);
  if (err.empty()) err = mat(env, spec, "weight", H->vocab, H->d, H->weight);
  if (!err.empty()) {
    delete H;
    return sy::throw_type(env, ("createHead: " + err).c_str());
  }
  H->bytes = static_cast<int64_t>((H->weight.w.capacity() + H->norm.capacity()) * sizeof(float));
  int64_t now;
  napi_adjust_external_memory(env, H->bytes, &now);
  napi_value handle;
  if (!sy::make_handle(env, H, finalize_head, &kHeadTag, &handle)) {
    free_head(env, *H);
    delete H;
    return sy::throw_error(env, "createHead: cannot make the handle");
  }
  return handle;
}

// head(handle, n, x [n·d], logits [n·vocab])
napi_value RunHead(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value a[4];
  SY_CHECK(napi_get_cb_info(env, info, &argc, a, nullptr, nullptr));
  Head* H = argc == 4 ? sy::handle_of<Head>(env, a[0], &kHeadTag) : nullptr;
  uint32_t n;
  if (!H || H->released || !sy::whole(env, a[1], 0, 4294967295.0, &n)) return sy::throw_type(env, "head(handle, n, x, logits) on a live head, n a whole number");
  float *x, *logits;
  if (!floats_arg(env, a[2], size_t{n} * H->d, &x) || !floats_arg(env, a[3], size_t{n} * H->vocab, &logits))
    return sy::throw_range(env, "head: x [n·d] and logits [n·vocab] must be Float32Arrays that large");
  for (uint32_t t = 0; t < n; t += kChunk) {
    const uint32_t c = n - t < kChunk ? n - t : kChunk;
    head(*H, x + size_t{t} * H->d, c, logits + size_t{t} * H->vocab);
  }
  return nullptr;
}

Layer* layer_of(napi_env env, napi_value handle) {
  Layer* L = sy::handle_of<Layer>(env, handle, &kTag);
  return L && !L->released ? L : nullptr;
}

// A Float32Array of at least `need` floats (an empty one has no data pointer: fine when need is 0).
bool floats_arg(napi_env env, napi_value v, size_t need, float** out) {
  size_t n = 0;
  return sy::typed_array(env, v, napi_float32_array, out, &n) && n >= need;
}

// project(handle, n, x [n·d], cos [n·hd], sin [n·hd], q [n·d], k [n·kv], v [n·kv])
napi_value Project(napi_env env, napi_callback_info info) {
  size_t argc = 8;
  napi_value a[8];
  SY_CHECK(napi_get_cb_info(env, info, &argc, a, nullptr, nullptr));
  Layer* L = argc == 8 ? layer_of(env, a[0]) : nullptr;
  uint32_t n;
  if (!L || !sy::whole(env, a[1], 0, 4294967295.0, &n)) return sy::throw_type(env, "project(handle, n, x, cos, sin, q, k, v) on a live layer, n a whole number");
  const uint32_t d = L->d, hd = L->headDim, kv = L->kvDim;
  float *x, *c, *s, *q, *k, *v;
  if (!floats_arg(env, a[2], size_t{n} * d, &x) || !floats_arg(env, a[3], size_t{n} * hd, &c) || !floats_arg(env, a[4], size_t{n} * hd, &s) ||
      !floats_arg(env, a[5], size_t{n} * d, &q) || !floats_arg(env, a[6], size_t{n} * kv, &k) || !floats_arg(env, a[7], size_t{n} * kv, &v))
    return sy::throw_range(env, "project: x, q [n·d], cos, sin [n·head_dim], k, v [n·kv width] must be Float32Arrays that large");
  for (uint32_t t = 0; t < n; t += kChunk) {
    const uint32_t m = n - t < kChunk ? n - t : kChunk;
    project(*L, x + size_t{t} * d, m, c + size_t{t} * hd, s + size_t{t} * hd, q + size_t{t} * d, k + size_t{t} * kv, v + size_t{t} * kv);
  }
  return nullptr;
}

// output(handle, n, x [n·d], attended [n·d], h [n·d], moeInput [n·d], routerLogits [n·experts])
napi_value Output(napi_env env, napi_callback_info info) {
  size_t argc = 7;
  napi_value a[7];
  SY_CHECK(napi_get_cb_info(env, info, &argc, a, nullptr, nullptr));
  Layer* L = argc == 7 ? layer_of(env, a[0]) : nullptr;
  uint32_t n;
  if (!L || !sy::whole(env, a[1], 0, 4294967295.0, &n)) return sy::throw_type(env, "output(handle, n, x, attended, h, moeInput, routerLogits) on a live layer, n a whole number");
  const uint32_t d = L->d, e = L->experts;
  float *x, *att, *h, *m, *logits;
  if (!floats_arg(env, a[2], size_t{n} * d, &x) || !floats_arg(env, a[3], size_t{n} * d, &att) || !floats_arg(env, a[4], size_t{n} * d, &h) ||
      !floats_arg(env, a[5], size_t{n} * d, &m) || !floats_arg(env, a[6], size_t{n} * e, &logits))
    return sy::throw_range(env, "output: x, attended, h, moeInput [n·d], routerLogits [n·experts] must be Float32Arrays that large");
  for (uint32_t t = 0; t < n; t += kChunk) {
    const uint32_t c = n - t < kChunk ? n - t : kChunk;
    output(*L, x + size_t{t} * d, att + size_t{t} * d, c, h + size_t{t} * d, m + size_t{t} * d, logits + size_t{t} * e);
  }
  return nullptr;
}

// This part's functions, added to `exports` (model.cc makes them one addon).
napi_value init(napi_env env, napi_value exports) {
  g_avx2 = sy::cpu_has_avx2();
  return sy::define(env, exports, {
      {"createLayer", CreateLayer},
      {"project", Project},
      {"output", Output},
      {"release", sy::release<Layer, free_storage, &kTag>},
      {"createHead", CreateHead},
      {"head", RunHead},
      {"releaseHead", sy::release<Head, free_head, &kHeadTag>},
      {"info", sy::info<&g_avx2>},
      {"setSimd", sy::set_simd<&g_avx2>},
  });
}

}  // namespace sy_trunk
