// Dense SwiGLU expert FFN for the small batches of decoding: y = down · (silu(gate · x) ⊙ (up · x)), fp32 weights as
// stored (gate, up [ffn, hidden]; down [hidden, ffn], torch Linear layout).
//
// Why native: at decode an expert sees 1–32 tokens per step, where onnxruntime's fixed cost per run and its GEMM
// packing are a large part of the time (bench/RESULTS.md, "expert kernels"). The matrix products (matmul.h) compute
// every output value the same way whatever the batch, so a token's output is bit for bit the same in any batch.
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
#include <string>
#include <vector>

#include "matmul.h"
#include "napi_glue.h"
#include "simd.h"
#include "team.h"

namespace sy_dense {

constexpr uint32_t kChunk = 64;

struct Expert {
  uint32_t hidden = 0, ffn = 0;
  bool released = false;
  int64_t bytes = 0;  // reported to V8 as external memory
  sy::Matrix gate, up, down;
  // Scratch for one chunk of tokens, reused across calls (a handle belongs to one JS thread).
  std::vector<float> x, g, u;
};

bool g_avx2 = false;
const napi_type_tag kTag = {0x5377697463687961ULL, 0x64656e73655f6666ULL};  // dense_ffn handles

// ---- driver -----------------------------------------------------------------------------------------------------

void run_chunk(Expert& e, const float* x, float* y, uint32_t tokens) {
  const uint32_t hs = e.gate.stride, fs = e.down.stride;
  const float* xin = x;
  if (hs != e.hidden) {  // rows of x padded with zeros to the weights' stride
    for (uint32_t t = 0; t < tokens; t++) std::memcpy(e.x.data() + static_cast<size_t>(t) * hs, x + static_cast<size_t>(t) * e.hidden, e.hidden * sizeof(float));
    xin = e.x.data();
  }
  // g and u hold [tokens, fs] with zero padding beyond ffn (silu(0) · 0 = 0 keeps it zero for the down projection).
  sy::matmul(g_avx2, e.gate, xin, hs, tokens, e.g.data(), fs);
  sy::matmul(g_avx2, e.up, xin, hs, tokens, e.u.data(), fs);
  sy::swiglu(g_avx2, e.g.data(), e.u.data(), static_cast<size_t>(tokens) * fs);
  sy::matmul(g_avx2, e.down, e.g.data(), fs, tokens, y, e.hidden);
}

void run_expert(Expert& e, const float* x, float* y, uint32_t tokens) {
  for (uint32_t t = 0; t < tokens; t += kChunk) {
    const uint32_t n = tokens - t < kChunk ? tokens - t : kChunk;
    run_chunk(e, x + static_cast<size_t>(t) * e.hidden, y + static_cast<size_t>(t) * e.hidden, n);
  }
}

// ---- a layer's batches on the compute team ------------------------------------------------------------------------

// Weight rows per unit of work: 64 rows of gate and up (2 × 64 KiB at hidden 256) or of down.
constexpr uint32_t kRowsPerUnit = 64;

sy::Team& team() {
  static sy::Team* t = new sy::Team();  // never destroyed: its helper threads live as long as the process
  return *t;
}

struct Batch {
  Expert* e;
  const float* x;  // [tokens, hidden]
  float* y;        // [tokens, hidden]
  uint32_t tokens;
};

// Every batch through its expert, on the team: per chunk of kChunk tokens, one parallel loop over blocks of gate/up
// rows (with the SwiGLU on those rows), then one over blocks of down rows. Each output value is the same dot product
// as in run_expert, so the result is bit for bit the one-thread result.
void run_batches(std::vector<Batch>& batches) {
  uint32_t most = 0;
  for (const Batch& b : batches) most = b.tokens > most ? b.tokens : most;
  struct Unit {
    uint32_t batch, r0, r1;
  };
  std::vector<Unit> up, down;
  for (uint32_t c = 0; c < most; c += kChunk) {
    up.clear();
    down.clear();
    for (uint32_t i = 0; i < batches.size(); i++) {
      Batch& b = batches[i];
      if (b.tokens <= c) continue;
      Expert& e = *b.e;
      for (uint32_t r = 0; r < e.ffn; r += kRowsPerUnit) up.push_back({i, r, r + kRowsPerUnit < e.ffn ? r + kRowsPerUnit : e.ffn});
      for (uint32_t r = 0; r < e.hidden; r += kRowsPerUnit) down.push_back({i, r, r + kRowsPerUnit < e.hidden ? r + kRowsPerUnit : e.hidden});
      const uint32_t n = b.tokens - c < kChunk ? b.tokens - c : kChunk;
      if (e.gate.stride != e.hidden)  // rows of x padded with zeros to the weights' stride, as run_chunk does
        for (uint32_t t = 0; t < n; t++)
          std::memcpy(e.x.data() + static_cast<size_t>(t) * e.gate.stride, b.x + (static_cast<size_t>(c) + t) * e.hidden, e.hidden * sizeof(float));
    }
    const auto chunk = [&](const Batch& b, const float** xin) {
      const Expert& e = *b.e;
      *xin = e.gate.stride != e.hidden ? e.x.data() : b.x + static_cast<size_t>(c) * e.hidden;
      return b.tokens - c < kChunk ? b.tokens - c : kChunk;
    };
    auto gate_up = [&](uint32_t u) {
      const Unit& unit = up[u];
      const Batch& b = batches[unit.batch];
      Expert& e = *b.e;
      const float* xin;
      const uint32_t n = chunk(b, &xin);
      const uint32_t fs = e.down.stride;
      sy::matmul_rows(g_avx2, e.gate, unit.r0, unit.r1, xin, e.gate.stride, n, e.g.data(), fs);
      sy::matmul_rows(g_avx2, e.up, unit.r0, unit.r1, xin, e.gate.stride, n, e.u.data(), fs);
      const uint32_t end = unit.r1 == e.ffn ? fs : unit.r1;  // the last block takes the zero padding along
      for (uint32_t t = 0; t < n; t++) sy::swiglu(g_avx2, e.g.data() + static_cast<size_t>(t) * fs + unit.r0, e.u.data() + static_cast<size_t>(t) * fs + unit.r0, end - unit.r0);
    };
    auto down_rows = [&](uint32_t u) {
      const Unit& unit = down[u];
      const Batch& b = batches[unit.batch];
      Expert& e = *b.e;
      const float* xin;
      const uint32_t n = chunk(b, &xin);
      sy::matmul_rows(g_avx2, e.down, unit.r0, unit.r1, e.g.data(), e.down.stride, n, b.y + static_cast<size_t>(c) * e.hidden, e.hidden);
    };
    team().parallel_for(static_cast<uint32_t>(up.size()), gate_up);
    team().parallel_for(static_cast<uint32_t>(down.size()), down_rows);
  }
}

// ---- N-API glue -------------------------------------------------------------------------------------------------

void free_storage(napi_env env, Expert& e) {
  if (e.released) return;
  e.released = true;
  for (sy::Matrix* m : {&e.gate, &e.up, &e.down}) std::vector<float>().swap(m->w);
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
  if (!sy::whole(env, a[0], 1, 1 << 20, &hidden) || !sy::whole(env, a[1], 1, 1 << 20, &ffn))
    return sy::throw_range(env, "create: hidden and ffn must be whole numbers in 1..1048576");
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
  sy::fill(e->gate, w[0], ffn, hidden);
  sy::fill(e->up, w[1], ffn, hidden);
  sy::fill(e->down, w[2], hidden, ffn);
  e->x.assign(static_cast<size_t>(kChunk) * sy::pad8(hidden), 0.0f);
  e->g.assign(static_cast<size_t>(kChunk) * sy::pad8(ffn), 0.0f);
  e->u.assign(static_cast<size_t>(kChunk) * sy::pad8(ffn), 0.0f);
  for (sy::Matrix* m : {&e->gate, &e->up, &e->down}) e->bytes += static_cast<int64_t>(m->w.capacity() * sizeof(float));
  for (std::vector<float>* v : {&e->x, &e->g, &e->u}) e->bytes += static_cast<int64_t>(v->capacity() * sizeof(float));
  int64_t now;
  napi_adjust_external_memory(env, e->bytes, &now);
  napi_value handle;
  if (!sy::make_handle(env, e, finalize_expert, &kTag, &handle)) {
    free_storage(env, *e);
    delete e;
    return sy::throw_error(env, "create: cannot make the handle");
  }
  return handle;
}

// residual[rows[i]] += gates[i] · y[i] for the rows of one batch's output y [n, hidden], as the JS combine does it:
// the product rounded to float, then the sum (no fused multiply-add), so a token's value is the same bits either way.
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
__attribute__((optimize("-ffp-contract=off")))
#endif
void combine_rows(float* residual, const float* y, const uint32_t* rows, const float* gates, uint32_t n, uint32_t hidden) {
  for (uint32_t i = 0; i < n; i++) {
    float* dst = residual + static_cast<size_t>(rows[i]) * hidden;
    const float* src = y + static_cast<size_t>(i) * hidden;
    const float g = gates[i];
    for (uint32_t j = 0; j < hidden; j++) {
      const float product = g * src[j];
      dst[j] = dst[j] + product;
    }
  }
}

// Batch i: tokens[i] rows of x and y after those of the batches before it, through experts[i] (empty ones left out).
std::vector<Batch> packed(const std::vector<Expert*>& experts, const uint32_t* tokens, const float* x, float* y) {
  std::vector<Batch> batches;
  batches.reserve(experts.size());
  size_t row = 0;
  for (size_t i = 0; i < experts.size(); i++) {
    const size_t at = row * experts[i]->hidden;
    if (tokens[i] > 0) batches.push_back({experts[i], x + at, y + at, tokens[i]});
    row += tokens[i];
  }
  return batches;
}

// A layer's experts with the gather and the combine: batch i takes tokens[i] of the `total` rows listed in rows (after
// those of the batches before it) of x [T, hidden] through experts[i]; residual[row] += gate × output row, batch
// after batch in the order given. On the compute team.
void run_layer_into(const std::vector<Expert*>& experts, const uint32_t* tokens, const float* x, const uint32_t* rows, const float* gates,
                    size_t total, float* residual) {
  if (experts.empty() || total == 0) return;
  const uint32_t hidden = experts.front()->hidden;
  // Gathered inputs and the outputs, packed batch after batch (scratch of this thread, reused across calls).
  thread_local std::vector<float> in, out;
  if (in.size() < total * hidden) in.resize(total * hidden);
  if (out.size() < total * hidden) out.resize(total * hidden);
  for (size_t i = 0; i < total; i++) std::memcpy(in.data() + i * hidden, x + static_cast<size_t>(rows[i]) * hidden, hidden * sizeof(float));
  std::vector<Batch> batches = packed(experts, tokens, in.data(), out.data());
  run_batches(batches);
  combine_rows(residual, out.data(), rows, gates, static_cast<uint32_t>(total), hidden);
}

// Reads handles[] as experts of one hidden width (each once): the shared checks of runBatches and runLayerInto.
bool experts_of(napi_env env, napi_value array, std::vector<Expert*>& out, std::string& err) {
  bool isArray = false;
  uint32_t count = 0;
  if (napi_is_array(env, array, &isArray) != napi_ok || !isArray || napi_get_array_length(env, array, &count) != napi_ok) {
    err = "handles must be an array";
    return false;
  }
  out.clear();
  for (uint32_t i = 0; i < count; i++) {
    napi_value h;
    Expert* e = napi_get_element(env, array, i, &h) == napi_ok ? sy::handle_of<Expert>(env, h, &kTag) : nullptr;
    if (!e) err = "every handle must be made by this addon's create";
    else if (e->released) err = "an expert was released";
    else if (!out.empty() && e->hidden != out.front()->hidden) err = "the experts must share one hidden width";
    else
      for (Expert* seen : out)
        if (seen == e) err = "a handle appears twice (its scratch is per call)";
    if (!err.empty()) return false;
    out.push_back(e);
  }
  return true;
}

// runLayerInto(handles, x: Float32Array [T, hidden], rows: Uint32Array, tokens: Uint32Array, gates: Float32Array,
// residual: Float32Array [T, hidden]): a layer's experts with the gather and the combine in here. Batch i takes
// tokens[i] rows of x, listed in rows (after those of the batches before it), through handles[i]; each output row is
// added into residual at the same row times its entry of gates, batch after batch in the order given (for top-k,
// a token's contributions in that order). On the compute team, synchronously; bit for bit what runBatches and the
// JS combine give.
napi_value RunLayerInto(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value a[6];
  SY_CHECK(napi_get_cb_info(env, info, &argc, a, nullptr, nullptr));
  if (argc != 6) return sy::throw_type(env, "runLayerInto(handles, x, rows, tokens, gates, residual) takes 6 arguments");
  std::vector<Expert*> experts;
  std::string err;
  if (!experts_of(env, a[0], experts, err)) return sy::throw_type(env, ("runLayerInto: " + err).c_str());
  float *x, *gates, *residual;
  uint32_t *rows, *tokens;
  size_t xn, rn, tn, gn, hn;
  if (!sy::typed_array(env, a[1], napi_float32_array, &x, &xn) || !sy::typed_array(env, a[5], napi_float32_array, &residual, &hn) ||
      !sy::typed_array(env, a[4], napi_float32_array, &gates, &gn) || !sy::typed_array(env, a[2], napi_uint32_array, &rows, &rn) ||
      !sy::typed_array(env, a[3], napi_uint32_array, &tokens, &tn))
    return sy::throw_type(env, "runLayerInto: x, gates and residual must be Float32Arrays, rows and tokens Uint32Arrays");
  if (tn != experts.size()) return sy::throw_type(env, "runLayerInto: tokens must hold one count per handle");
  size_t total = 0;
  for (size_t i = 0; i < tn; i++) total += tokens[i];
  if (rn != total || gn != total) return sy::throw_range(env, "runLayerInto: rows and gates must hold Σ tokens entries");
  if (experts.empty() || total == 0) return nullptr;
  const uint32_t hidden = experts.front()->hidden;
  if (xn != hn || xn % hidden != 0) return sy::throw_range(env, "runLayerInto: x and residual must both be [T, hidden]");
  const size_t T = xn / hidden;
  for (size_t i = 0; i < total; i++)
    if (rows[i] >= T) return sy::throw_range(env, "runLayerInto: a row is outside x");
  run_layer_into(experts, tokens, x, rows, gates, total, residual);
  return nullptr;
}

// runBatches(handles: object[], x: Float32Array, tokens: Uint32Array, out: Float32Array): batch i (tokens[i] rows of
// x, after the rows of the batches before it) through expert handles[i], into the same rows of out; on the compute
// team (configureTeam), synchronously. A handle may appear once per call.
napi_value RunBatches(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value a[4];
  SY_CHECK(napi_get_cb_info(env, info, &argc, a, nullptr, nullptr));
  if (argc != 4) return sy::throw_type(env, "runBatches(handles, x, tokens, out) takes 4 arguments");
  std::vector<Expert*> experts;
  std::string err;
  if (!experts_of(env, a[0], experts, err)) return sy::throw_type(env, ("runBatches: " + err).c_str());
  uint32_t* tokens;
  float *x, *y;
  size_t tn, xn, yn;
  if (!sy::typed_array(env, a[2], napi_uint32_array, &tokens, &tn) || tn != experts.size())
    return sy::throw_type(env, "runBatches: tokens must be a Uint32Array with one count per handle");
  if (!sy::typed_array(env, a[1], napi_float32_array, &x, &xn) || !sy::typed_array(env, a[3], napi_float32_array, &y, &yn))
    return sy::throw_type(env, "runBatches: x and out must be Float32Arrays");
  size_t total = 0;
  for (size_t i = 0; i < tn; i++) total += tokens[i];
  if (!experts.empty() && (xn < total * experts.front()->hidden || yn < total * experts.front()->hidden))
    return sy::throw_range(env, "runBatches: x and out must hold Σ tokens × hidden floats");
  std::vector<Batch> batches = packed(experts, tokens, x, y);
  run_batches(batches);
  return nullptr;
}

// configureTeam(helpers, spinUs) → { helpers, spinUs }: the compute team of runBatches (helper threads besides the
// caller, and how long they stay awake after a loop); process-wide. Helpers are started once and never stopped.
napi_value ConfigureTeam(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value a[2];
  SY_CHECK(napi_get_cb_info(env, info, &argc, a, nullptr, nullptr));
  uint32_t helpers, spin;
  if (argc != 2 || !sy::whole(env, a[0], 0, 256, &helpers) || !sy::whole(env, a[1], 0, 1000000, &spin))
    return sy::throw_range(env, "configureTeam(helpers, spinUs): helpers a whole number in 0..256, spinUs in 0..1000000");
  team().configure(helpers, spin);
  napi_value out, hv, sv;
  SY_CHECK(napi_create_object(env, &out));
  SY_CHECK(napi_create_uint32(env, team().helpers(), &hv));
  SY_CHECK(napi_create_uint32(env, team().spin_us(), &sv));
  SY_CHECK(napi_set_named_property(env, out, "helpers", hv));
  SY_CHECK(napi_set_named_property(env, out, "spinUs", sv));
  return out;
}

// teamHandle() → the compute team as a tagged external, for the trunk and attention addons' useTeam.
napi_value TeamHandle(napi_env env, napi_callback_info) {
  napi_value handle;
  SY_CHECK(napi_create_external(env, &team(), nullptr, nullptr, &handle));
  SY_CHECK(napi_type_tag_object(env, handle, &sy::kTeamTag));
  return handle;
}

// This part's functions, added to `exports` (model.cc makes them one addon).
napi_value init(napi_env env, napi_value exports) {
  g_avx2 = sy::cpu_has_avx2();
  return sy::define(env, exports, {
      {"create", Create},
      {"run", sy::run_ffn<Expert, &kTag, run_expert>},
      {"runBatches", RunBatches},
      {"runLayerInto", RunLayerInto},
      {"configureTeam", ConfigureTeam},
      {"teamHandle", TeamHandle},
      {"release", sy::release<Expert, free_storage, &kTag>},
      {"info", sy::info<&g_avx2>},
      {"setSimd", sy::set_simd<&g_avx2>},
  });
}

}  // namespace sy_dense
