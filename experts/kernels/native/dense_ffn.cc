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
#include <vector>

#include "matmul.h"
#include "napi_glue.h"
#include "simd.h"

namespace {

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

}  // namespace

NAPI_MODULE_INIT() {
  g_avx2 = sy::cpu_has_avx2();
  return sy::define(env, exports, {
      {"create", Create},
      {"run", sy::run_ffn<Expert, &kTag, run_expert>},
      {"release", sy::release<Expert, free_storage, &kTag>},
      {"info", sy::info<&g_avx2>},
      {"setSimd", sy::set_simd<&g_avx2>},
  });
}
