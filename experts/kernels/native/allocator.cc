// Process and thread tuning for the gateway: a fixed glibc mmap threshold, and the expert workers' scheduling policy.
//
// The mmap threshold, why: onnxruntime (arena off, see src/engine/model.ts) allocates each run's intermediate tensors with malloc from
// whichever thread runs it (libuv pool, intra-op threads, expert workers), and their sizes change every step with the
// batch and its KV lengths. glibc's dynamic mmap threshold rises to the largest block freed, after which such blocks
// come from per-thread arenas that fragment and are never returned: the resident set crept by 100+ MB over thousands
// of requests (bench/RESULTS.md, soak). A fixed threshold (mallopt M_MMAP_THRESHOLD, which also turns the dynamic
// adjustment off) serves large blocks with mmap and returns them to the system on free.
#include <node_api.h>

#include <cstring>

#if defined(__GLIBC__)
#include <malloc.h>
#endif
#if defined(__linux__)
#include <sched.h>
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

// setThreadScheduling(policy: 'batch' | 'other') -> boolean: the calling thread's Linux scheduling policy
// (sched_setscheduler on this thread, priority 0); false where there is no such call or it was refused.
//
// Why: the expert workers are woken by the main thread once per layer. Under SCHED_OTHER a woken worker may preempt
// the main thread on its own core (wakeup preemption), stalling it inside Atomics.notify while it still has to post
// to the other worker and serve HTTP. SCHED_BATCH threads never preempt on wakeup; they run on a free core or when
// the main thread waits. Any thread may move itself between these two policies without privileges.
napi_value SetThreadScheduling(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  char policy[8] = {0};
  size_t len = 0;
  if (napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr) != napi_ok || argc < 1 ||
      napi_get_value_string_utf8(env, argv[0], policy, sizeof policy, &len) != napi_ok ||
      (std::strcmp(policy, "batch") != 0 && std::strcmp(policy, "other") != 0)) {
    napi_throw_type_error(env, nullptr, "setThreadScheduling(policy): policy must be 'batch' or 'other'");
    return nullptr;
  }
  bool applied = false;
#if defined(__linux__)
  sched_param param{};
  param.sched_priority = 0;
  applied = sched_setscheduler(0, std::strcmp(policy, "batch") == 0 ? SCHED_BATCH : SCHED_OTHER, &param) == 0;
#endif
  napi_value result;
  napi_get_boolean(env, applied, &result);
  return result;
}

}  // namespace

NAPI_MODULE_INIT() {
  napi_property_descriptor props[] = {
      {"setMmapThreshold", nullptr, SetMmapThreshold, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"setThreadScheduling", nullptr, SetThreadScheduling, nullptr, nullptr, nullptr, napi_default, nullptr},
  };
  if (napi_define_properties(env, exports, 2, props) != napi_ok) return nullptr;
  return exports;
}
