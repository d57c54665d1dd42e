// The in-process model's native parts as one addon (model.node): the trunk's dense stages (trunk.cc), the attention
// core (attention.cc), the dense expert FFN and the compute team (dense_ffn.cc), and here a whole forward pass over
// them. The parts are compiled as one translation unit so the forward calls each directly; each keeps its own
// N-API functions, exported under its name (exports.trunk, exports.attention, exports.dense).
//
// The forward is llama.cpp's model of a decode step, one function top to bottom:
//
//   for each layer:  q, k, v = project(x)                      (input norm, q/k/v, q/k norms, rotary)
//                    attended = attention(q, KV caches)         (the new k/v rows written into the caches first)
//                    h = x + o_proj(attended); m = norm(h); router logits = m · Wrᵀ   (+ shared expert)
//                    top-k of softmax(logits) (dropped experts masked), rows per expert in expert order
//                    h += Σ gate · expert(m)                    (gather, experts, combine)
//                    x = h
//   logits = head(x) at the rows that need them
//
// Why: with the forward in JavaScript the gateway's thread has to drive every stage, so the step's I/O (HTTP, SSE
// writes, tokenizing) and the forward take turns on that thread while the other core waits. forwardBegin hands the
// whole forward to the team's helper 0 and returns; the gateway's thread serves its I/O, then forwardJoin makes it
// one more thread of the team until the forward is done (team.h, begin/join). Each value is computed by the same
// functions, in the same order, as the JavaScript-driven path (MoeModel.forward over these parts), so the results
// are bit for bit the same; test/fused-forward.test.ts checks that.
#include "trunk.cc"
#include "attention.cc"
#include "dense_ffn.cc"

#include <chrono>

namespace sy_forward {

const napi_type_tag& kLayerTag = sy_trunk::kTag;
const napi_type_tag& kHeadTag = sy_trunk::kHeadTag;
const napi_type_tag& kExpertTag = sy_dense::kTag;

struct Forward {
  // Geometry and routing.
  uint32_t T = 0, S = 0, L = 0, E = 0, k = 0, d = 0, kvDim = 0, vocab = 0;
  bool renormalize = false;
  double residualScale = 1;
  sy_attention::Shape shape{};
  // Weights (handles the JavaScript side keeps alive while the forward runs).
  std::vector<sy_trunk::Layer*> layers;
  sy_trunk::Head* head = nullptr;
  std::vector<sy_dense::Expert*> experts;  // [L, E], null where pruning dropped the expert
  // The step: inputs and the caches, in JavaScript arrays that nothing else touches until forwardJoin returns.
  std::vector<float*> keys, values;  // [L, S]
  std::vector<uint32_t> caps;        // [L, S]
  const uint32_t *pasts = nullptr, *counts = nullptr, *headRows = nullptr;
  uint32_t rows = 0;
  const float *x0 = nullptr, *cos = nullptr, *sin = nullptr;
  // Outputs.
  float* logits = nullptr;  // [rows, vocab]
  int32_t* choices = nullptr;  // [L, T, k]
  float* gates = nullptr;      // [L, T, k]
  double* moeMs = nullptr;     // [L]: the MoE half of each layer (routing, experts, combine), ms
  // Scratch, reused from step to step.
  std::vector<float> x, h, q, kNew, vNew, attended, m, routerLogits, headIn, probs, gateRows;
  std::vector<uint32_t> rowsOf, tokensOf;
  std::vector<double> exps;
  std::vector<sy_dense::Expert*> batch;
};

Forward g_forward;

// router/gate.ts topK, value for value: softmax in double (one exp per logit), probabilities rounded to fp32, k
// choices by repeated argmax (ties to the lower index), gates renormalised over the chosen k (in double) if asked.
void top_k(Forward& f, const float* logits, int32_t* choice, float* gate) {
  const uint32_t E = f.E, k = f.k;
  f.exps.resize(E);
  f.probs.resize(E);
  for (uint32_t t = 0; t < f.T; t++) {
    const float* l = logits + static_cast<size_t>(t) * E;
    double max = -INFINITY;
    for (uint32_t e = 0; e < E; e++) max = std::max(max, static_cast<double>(l[e]));
    double total = 0;
    for (uint32_t e = 0; e < E; e++) total += (f.exps[e] = std::exp(static_cast<double>(l[e]) - max));
    for (uint32_t e = 0; e < E; e++) f.probs[e] = static_cast<float>(f.exps[e] / total);
    int32_t* c = choice + static_cast<size_t>(t) * k;
    float* g = gate + static_cast<size_t>(t) * k;
    double chosen = 0;
    for (uint32_t j = 0; j < k; j++) {
      int32_t best = -1;
      for (uint32_t e = 0; e < E; e++) {
        bool taken = false;
        for (uint32_t i = 0; i < j; i++) taken = taken || c[i] == static_cast<int32_t>(e);
        if (taken) continue;
        if (best < 0 || f.probs[e] > f.probs[best]) best = static_cast<int32_t>(e);
      }
      c[j] = best;
      g[j] = f.probs[best];
      chosen += f.probs[best];
    }
    if (f.renormalize)
      for (uint32_t j = 0; j < k; j++) g[j] = static_cast<float>(static_cast<double>(g[j]) / chosen);
  }
}

// moe_layer (src/engine/moe-layer.ts with the in-process runner): route, rows per expert in expert order (no capacity
// limit), then the experts with the gather and the combine into h.
void moe(Forward& f, uint32_t layer, float* h) {
  const uint32_t T = f.T, E = f.E, k = f.k;
  float* logits = f.routerLogits.data();
  for (uint32_t e = 0; e < E; e++)
    if (!f.experts[static_cast<size_t>(layer) * E + e])
      for (uint32_t t = 0; t < T; t++) logits[static_cast<size_t>(t) * E + e] = -INFINITY;
  int32_t* choice = f.choices + static_cast<size_t>(layer) * T * k;
  float* gate = f.gates + static_cast<size_t>(layer) * T * k;
  top_k(f, logits, choice, gate);
  // planDispatch: each expert's rows in slot order; the batches in expert order; each row's gate × residual scale.
  f.batch.clear();
  f.tokensOf.clear();
  f.rowsOf.resize(static_cast<size_t>(T) * k);
  f.gateRows.resize(static_cast<size_t>(T) * k);
  size_t at = 0;
  for (uint32_t e = 0; e < E; e++) {
    const size_t first = at;
    for (uint32_t slot = 0; slot < T * k; slot++) {
      if (choice[slot] != static_cast<int32_t>(e)) continue;
      const float g = gate[slot];
      f.rowsOf[at] = slot / k;
      f.gateRows[at++] = f.residualScale == 1 ? g : static_cast<float>(static_cast<double>(g) * f.residualScale);
    }
    if (at > first) {
      f.batch.push_back(f.experts[static_cast<size_t>(layer) * E + e]);
      f.tokensOf.push_back(static_cast<uint32_t>(at - first));
    }
  }
  sy_dense::run_layer_into(f.batch, f.tokensOf.data(), f.m.data(), f.rowsOf.data(), f.gateRows.data(), at, h);
}

// The whole forward on the calling thread as the team's caller (team.h's job body).
std::string run(void* ctx) {
  Forward& f = *static_cast<Forward*>(ctx);
  sy::Team* team = &sy_dense::team();
  const uint32_t T = f.T, d = f.d, kv = f.kvDim, hd = f.shape.headDim;
  constexpr uint32_t chunk = sy_trunk::kChunk;
  sy_trunk::grow(f.x, static_cast<size_t>(T) * d);
  sy_trunk::grow(f.h, static_cast<size_t>(T) * d);
  sy_trunk::grow(f.q, static_cast<size_t>(T) * d);
  sy_trunk::grow(f.attended, static_cast<size_t>(T) * d);
  sy_trunk::grow(f.m, static_cast<size_t>(T) * d);
  sy_trunk::grow(f.kNew, static_cast<size_t>(T) * kv);
  sy_trunk::grow(f.vNew, static_cast<size_t>(T) * kv);
  sy_trunk::grow(f.routerLogits, static_cast<size_t>(T) * f.E);
  std::memcpy(f.x.data(), f.x0, static_cast<size_t>(T) * d * sizeof(float));
  float* x = f.x.data();
  float* h = f.h.data();
  for (uint32_t layer = 0; layer < f.L; layer++) {
    sy_trunk::Layer& L = *f.layers[layer];
    for (uint32_t t = 0; t < T; t += chunk) {
      const uint32_t n = T - t < chunk ? T - t : chunk;
      sy_trunk::project(L, x + size_t{t} * d, n, f.cos + size_t{t} * hd, f.sin + size_t{t} * hd, f.q.data() + size_t{t} * d,
                        f.kNew.data() + size_t{t} * kv, f.vNew.data() + size_t{t} * kv);
    }
    const size_t at = static_cast<size_t>(layer) * f.S;
    sy_attention::attend(team, f.shape, f.q.data(), f.attended.data(),
                         sy_attention::Sequences{f.S, f.caps.data() + at, f.pasts, f.counts, f.keys.data() + at, f.values.data() + at},
                         f.kNew.data(), f.vNew.data());
    for (uint32_t t = 0; t < T; t += chunk) {
      const uint32_t n = T - t < chunk ? T - t : chunk;
      sy_trunk::output(L, x + size_t{t} * d, f.attended.data() + size_t{t} * d, n, h + size_t{t} * d, f.m.data() + size_t{t} * d,
                       f.routerLogits.data() + size_t{t} * f.E);
    }
    const auto started = std::chrono::steady_clock::now();
    moe(f, layer, h);
    f.moeMs[layer] = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count();
    std::swap(x, h);
  }
  sy_trunk::grow(f.headIn, static_cast<size_t>(f.rows) * d);
  for (uint32_t r = 0; r < f.rows; r++) std::memcpy(f.headIn.data() + size_t{r} * d, x + size_t{f.headRows[r]} * d, d * sizeof(float));
  for (uint32_t r = 0; r < f.rows; r += chunk) {
    const uint32_t n = f.rows - r < chunk ? f.rows - r : chunk;
    sy_trunk::head(*f.head, f.headIn.data() + size_t{r} * d, n, f.logits + size_t{r} * f.vocab);
  }
  return "";
}

// ---- N-API glue -------------------------------------------------------------------------------------------------

bool g_running = false;

napi_value fail(napi_env env, const std::string& message) {
  napi_throw_range_error(env, nullptr, ("forwardBegin: " + message).c_str());
  return nullptr;
}

template <typename T>
bool array_of(napi_env env, napi_value v, napi_typedarray_type type, size_t need, T** out) {
  size_t n = 0;
  return sy::typed_array(env, v, type, out, &n) && n >= need;
}

bool uint_prop(napi_env env, napi_value obj, const char* name, uint32_t* out) {
  napi_value v;
  return napi_get_named_property(env, obj, name, &v) == napi_ok && sy::whole(env, v, 0, 4294967295.0, out);
}

// forwardBegin(model, step) starts the forward on the team and returns; forwardJoin() finishes it.
//   model: { layers: trunk layer handles [L], head: trunk head handle, experts: dense handles or null [L·E],
//            heads, kvHeads, headDim, scale, k, renormalize, residualScale }
//   step:  { x [T·d] (embedded), cos, sin [T·head_dim], keys, values: Float32Array [L·S] (layer-major),
//            caps: Uint32Array [L·S], pasts, counts: Uint32Array [S], headRows: Uint32Array [R],
//            logits [R·vocab], choices: Int32Array [L·T·k], gates [L·T·k], moeMs: Float64Array [L] }
// Every array must stay alive and untouched until forwardJoin returns; one forward at a time (throws otherwise).
napi_value ForwardBegin(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value a[2];
  SY_CHECK(napi_get_cb_info(env, info, &argc, a, nullptr, nullptr));
  if (argc != 2) return sy::throw_type(env, "forwardBegin(model, step) takes 2 arguments");
  if (g_running) return sy::throw_error(env, "forwardBegin: a forward is running; call forwardJoin first");
  Forward& f = g_forward;
  napi_value model = a[0], step = a[1], v;
  uint32_t heads, kvHeads, headDim, k;
  double scale, residualScale;
  bool renormalize;
  if (!uint_prop(env, model, "heads", &heads) || !uint_prop(env, model, "kvHeads", &kvHeads) || !uint_prop(env, model, "headDim", &headDim) ||
      !uint_prop(env, model, "k", &k) || napi_get_named_property(env, model, "scale", &v) != napi_ok || napi_get_value_double(env, v, &scale) != napi_ok ||
      napi_get_named_property(env, model, "residualScale", &v) != napi_ok || napi_get_value_double(env, v, &residualScale) != napi_ok ||
      napi_get_named_property(env, model, "renormalize", &v) != napi_ok || napi_get_value_bool(env, v, &renormalize) != napi_ok)
    return fail(env, "model needs heads, kvHeads, headDim, k (whole numbers), scale, residualScale (numbers) and renormalize (boolean)");
  if (heads == 0 || kvHeads == 0 || heads % kvHeads != 0 || headDim == 0) return fail(env, "heads must be a positive multiple of kvHeads, headDim positive");
  f.shape = sy_attention::Shape{heads, kvHeads, headDim, static_cast<float>(scale)};
  f.renormalize = renormalize;
  f.residualScale = residualScale;
  f.k = k;

  napi_value layers, experts, head;
  uint32_t L = 0, LE = 0;
  bool isArray = false;
  if (napi_get_named_property(env, model, "layers", &layers) != napi_ok || napi_is_array(env, layers, &isArray) != napi_ok || !isArray ||
      napi_get_array_length(env, layers, &L) != napi_ok || L == 0)
    return fail(env, "model.layers must be a non-empty array of trunk layer handles");
  f.layers.resize(L);
  for (uint32_t l = 0; l < L; l++) {
    napi_value e;
    sy_trunk::Layer* layer = napi_get_element(env, layers, l, &e) == napi_ok ? sy::handle_of<sy_trunk::Layer>(env, e, &kLayerTag) : nullptr;
    if (!layer || layer->released) return fail(env, "model.layers must hold live trunk layer handles");
    f.layers[l] = layer;
  }
  const sy_trunk::Layer& first = *f.layers[0];
  f.L = L;
  f.d = first.d;
  f.E = first.experts;
  f.kvDim = first.kvDim;
  if (first.heads != heads || first.kvHeads != kvHeads || first.headDim != headDim) return fail(env, "the attention shape differs from the layers'");
  if (k == 0 || k > f.E) return fail(env, "k must be in 1..experts");
  if (napi_get_named_property(env, model, "head", &head) != napi_ok || !(f.head = sy::handle_of<sy_trunk::Head>(env, head, &kHeadTag)) || f.head->released)
    return fail(env, "model.head must be a live trunk head handle");
  f.vocab = f.head->vocab;
  for (const sy_trunk::Layer* layer : f.layers)
    if (layer->d != f.d || layer->kvDim != f.kvDim || layer->experts != f.E) return fail(env, "model.layers must share one geometry");
  if (f.head->d != f.d) return fail(env, "model.head's width differs from the layers'");
  if (napi_get_named_property(env, model, "experts", &experts) != napi_ok || napi_is_array(env, experts, &isArray) != napi_ok || !isArray ||
      napi_get_array_length(env, experts, &LE) != napi_ok || LE != L * f.E)
    return fail(env, "model.experts must hold layers × experts entries");
  f.experts.assign(LE, nullptr);
  for (uint32_t i = 0; i < LE; i++) {
    napi_value e;
    napi_valuetype type;
    if (napi_get_element(env, experts, i, &e) != napi_ok || napi_typeof(env, e, &type) != napi_ok) return fail(env, "cannot read model.experts");
    if (type == napi_null) continue;
    sy_dense::Expert* expert = sy::handle_of<sy_dense::Expert>(env, e, &kExpertTag);
    if (!expert || expert->released || expert->hidden != f.d) return fail(env, "model.experts must hold live dense expert handles of the model's width, or null");
    f.experts[i] = expert;
  }

  napi_value pv, cv, keys, values;
  size_t S = 0, T = 0;
  if (napi_get_named_property(env, step, "pasts", &pv) != napi_ok || !sy::typed_array(env, pv, napi_uint32_array, const_cast<uint32_t**>(&f.pasts), &S) ||
      napi_get_named_property(env, step, "counts", &cv) != napi_ok || !array_of(env, cv, napi_uint32_array, S, const_cast<uint32_t**>(&f.counts)))
    return fail(env, "step.pasts and step.counts must be Uint32Arrays of one entry per sequence");
  for (size_t s = 0; s < S; s++) T += f.counts[s];
  f.S = static_cast<uint32_t>(S);
  f.T = static_cast<uint32_t>(T);
  if (T == 0) return fail(env, "the step has no tokens");
  uint32_t* capsOf;
  if (napi_get_named_property(env, step, "caps", &v) != napi_ok || !array_of(env, v, napi_uint32_array, size_t{L} * S, &capsOf))
    return fail(env, "step.caps must be a Uint32Array [layers · sequences]");
  f.caps.assign(capsOf, capsOf + size_t{L} * S);
  if (napi_get_named_property(env, step, "keys", &keys) != napi_ok || napi_get_named_property(env, step, "values", &values) != napi_ok)
    return fail(env, "step.keys and step.values are required");
  f.keys.resize(size_t{L} * S);
  f.values.resize(size_t{L} * S);
  for (uint32_t i = 0; i < L * S; i++) {
    napi_value kv, vv;
    const uint32_t s = i % S;
    const size_t need = size_t{kvHeads} * f.caps[i] * headDim;
    if (static_cast<uint64_t>(f.pasts[s]) + f.counts[s] > f.caps[i]) return fail(env, "a sequence's past + count exceeds its cache capacity");
    if (napi_get_element(env, keys, i, &kv) != napi_ok || napi_get_element(env, values, i, &vv) != napi_ok ||
        !array_of(env, kv, napi_float32_array, need, &f.keys[i]) || !array_of(env, vv, napi_float32_array, need, &f.values[i]))
      return fail(env, "step.keys[i] and step.values[i] must be Float32Arrays of kvHeads × caps[i] × headDim floats");
  }
  const size_t hd = headDim;
  float *x0, *cosv, *sinv;
  if (napi_get_named_property(env, step, "x", &v) != napi_ok || !array_of(env, v, napi_float32_array, T * f.d, &x0) ||
      napi_get_named_property(env, step, "cos", &v) != napi_ok || !array_of(env, v, napi_float32_array, T * hd, &cosv) ||
      napi_get_named_property(env, step, "sin", &v) != napi_ok || !array_of(env, v, napi_float32_array, T * hd, &sinv))
    return fail(env, "step.x [T·d], step.cos and step.sin [T·head_dim] must be Float32Arrays that large");
  f.x0 = x0;
  f.cos = cosv;
  f.sin = sinv;
  size_t rows = 0;
  uint32_t* headRows;
  if (napi_get_named_property(env, step, "headRows", &v) != napi_ok || !sy::typed_array(env, v, napi_uint32_array, &headRows, &rows))
    return fail(env, "step.headRows must be a Uint32Array");
  for (size_t r = 0; r < rows; r++)
    if (headRows[r] >= T) return fail(env, "step.headRows holds a row outside the step");
  f.headRows = headRows;
  f.rows = static_cast<uint32_t>(rows);
  if (napi_get_named_property(env, step, "logits", &v) != napi_ok || !array_of(env, v, napi_float32_array, rows * f.vocab, &f.logits) ||
      napi_get_named_property(env, step, "choices", &v) != napi_ok || !array_of(env, v, napi_int32_array, size_t{L} * T * k, &f.choices) ||
      napi_get_named_property(env, step, "gates", &v) != napi_ok || !array_of(env, v, napi_float32_array, size_t{L} * T * k, &f.gates) ||
      napi_get_named_property(env, step, "moeMs", &v) != napi_ok || !array_of(env, v, napi_float64_array, L, &f.moeMs))
    return fail(env, "step.logits [R·vocab], step.choices (Int32Array), step.gates [L·T·k] and step.moeMs (Float64Array [L]) must be that large");
  g_running = true;
  sy_dense::team().begin(run, &f);
  return nullptr;
}

// forwardJoin(): this thread joins the team until the forward started by forwardBegin is done; throws its error.
napi_value ForwardJoin(napi_env env, napi_callback_info) {
  if (!g_running) return sy::throw_error(env, "forwardJoin: no forward is running (call forwardBegin first)");
  const std::string error = sy_dense::team().join();
  g_running = false;
  if (!error.empty()) return sy::throw_error(env, ("forward: " + error).c_str());
  return nullptr;
}

}  // namespace sy_forward

NAPI_MODULE_INIT() {
  napi_value trunk, attention, dense;
  if (napi_create_object(env, &trunk) != napi_ok || napi_create_object(env, &attention) != napi_ok || napi_create_object(env, &dense) != napi_ok ||
      !sy_trunk::init(env, trunk) || !sy_attention::init(env, attention) || !sy_dense::init(env, dense) ||
      napi_set_named_property(env, exports, "trunk", trunk) != napi_ok || napi_set_named_property(env, exports, "attention", attention) != napi_ok ||
      napi_set_named_property(env, exports, "dense", dense) != napi_ok)
    return nullptr;
  return sy::define(env, exports, {
      {"info", sy::info<&sy_trunk::g_avx2>},
      {"forwardBegin", sy_forward::ForwardBegin},
      {"forwardJoin", sy_forward::ForwardJoin},
  });
}
