// Process-wide malloc tuning for the gateway (glibc only): a fixed mmap threshold.
//
// Why: onnxruntime (arena off, see src/engine/model.ts) allocates each run's intermediate tensors with malloc from
// whichever thread runs it (libuv pool, intra-op threads, expert workers), and their sizes change every step with the
// batch and its KV lengths. glibc's dynamic mmap threshold rises to the largest block freed, after which such blocks
// come from per-thread arenas that fragment and are never returned: the resident set crept by 100+ MB over thousands
// of requests (bench/RESULTS.md, soak). A fixed threshold (mallopt M_MMAP_THRESHOLD, which also turns the dynamic
// adjustment off) serves large blocks with mmap and returns them to the system on free.
#include <node_api.h>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace {

// setMmapThreshold(bytes: number) -> boolean: true when applied, false where the C library has no such setting.
napi_value SetMmapThreshold(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_value result;
  uint32_t bytes = 0;
  if (napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr) != napi_ok || argc < 1 ||
      napi_get_value_uint32(env, argv[0], &bytes) != napi_ok) {
    napi_throw_type_error(env, nullptr, "setMmapThreshold(bytes): bytes must be a non-negative integer");
    return nullptr;
  }
  bool applied = false;
#if defined(__GLIBC__)
  applied = mallopt(M_MMAP_THRESHOLD, static_cast<int>(bytes)) == 1;
#endif
  napi_get_boolean(env, applied, &result);
  return result;
}

}  // namespace

NAPI_MODULE_INIT() {
  napi_property_descriptor props[] = {
      {"setMmapThreshold", nullptr, SetMmapThreshold, nullptr, nullptr, nullptr, napi_default, nullptr},
  };
  if (napi_define_properties(env, exports, 1, props) != napi_ok) return nullptr;
  return exports;
}
