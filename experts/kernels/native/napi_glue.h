// N-API glue shared by the native kernels: argument checks, errors, and the run-time choice of the AVX2 path.
#pragma once

#include <node_api.h>

#include <initializer_list>
#include <utility>
#include <vector>

#include "simd.h"

// Returns from an N-API callback with a JS error when an N-API call fails.
#define SY_CHECK(call)                                                          \
  do {                                                                          \
    if ((call) != napi_ok) {                                                    \
      napi_throw_error(env, nullptr, "switchyard kernel: N-API call failed: " #call); \
      return nullptr;                                                           \
    }                                                                           \
  } while (0)

namespace sy {

// A whole number in [min, max] from `value`: 1.5, NaN, negative or 2^32 are refused, not truncated.
inline bool whole(napi_env env, napi_value value, double min, double max, uint32_t* out) {
  double d;
  if (napi_get_value_double(env, value, &d) != napi_ok || !(d >= min && d <= max) || d != static_cast<double>(static_cast<uint64_t>(d))) return false;
  *out = static_cast<uint32_t>(d);
  return true;
}

// Kernel handles are externals tagged with their addon's kind: a handle of one kernel passed to another is refused
// (napi_check_object_type_tag), never read as the wrong struct.
template <typename T>
bool make_handle(napi_env env, T* data, napi_finalize finalize, const napi_type_tag* tag, napi_value* out) {
  return napi_create_external(env, data, finalize, nullptr, out) == napi_ok && napi_type_tag_object(env, *out, tag) == napi_ok;
}

// The T behind a handle made by make_handle with `tag`, or nullptr for anything else.
template <typename T>
T* handle_of(napi_env env, napi_value value, const napi_type_tag* tag) {
  bool tagged = false;
  void* data = nullptr;
  if (napi_check_object_type_tag(env, value, tag, &tagged) != napi_ok || !tagged) return nullptr;
  if (napi_get_value_external(env, value, &data) != napi_ok) return nullptr;
  return static_cast<T*>(data);
}

// True when `value` is a typed array of type `want`; sets its data pointer and element count.
template <typename T>
bool typed_array(napi_env env, napi_value value, napi_typedarray_type want, T** data, size_t* length) {
  bool is = false;
  if (napi_is_typedarray(env, value, &is) != napi_ok || !is) return false;
  napi_typedarray_type type;
  napi_value buffer;
  size_t offset;
  void* raw = nullptr;
  if (napi_get_typedarray_info(env, value, &type, length, &raw, &buffer, &offset) != napi_ok || type != want) return false;
  *data = static_cast<T*>(raw);
  return true;
}

inline napi_value throw_type(napi_env env, const char* message) {
  napi_throw_type_error(env, nullptr, message);
  return nullptr;
}
inline napi_value throw_range(napi_env env, const char* message) {
  napi_throw_range_error(env, nullptr, message);
  return nullptr;
}
inline napi_value throw_error(napi_env env, const char* message) {
  napi_throw_error(env, nullptr, message);
  return nullptr;
}

inline bool cpu_has_avx2() {
#if SY_X86
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

// info() of a kernel addon: { simd: 'avx2-fma' | 'portable' }.
inline napi_value simd_info(napi_env env, bool avx2) {
  napi_value out, simd;
  SY_CHECK(napi_create_object(env, &out));
  SY_CHECK(napi_create_string_utf8(env, avx2 ? "avx2-fma" : "portable", NAPI_AUTO_LENGTH, &simd));
  SY_CHECK(napi_set_named_property(env, out, "simd", simd));
  return out;
}

// info() → { simd }: which path the addon whose AVX2 flag is *Flag runs.
template <bool* Flag>
napi_value info(napi_env env, napi_callback_info) {
  return simd_info(env, *Flag);
}

// setSimd(enabled = true) → info(): the AVX2 path when asked for and the CPU has it, else the portable one (tests and
// benchmarks compare both; process-wide for the addon).
template <bool* Flag>
napi_value set_simd(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value a[1];
  bool want = true;
  if (napi_get_cb_info(env, info, &argc, a, nullptr, nullptr) == napi_ok && argc >= 1 && napi_get_value_bool(env, a[0], &want) != napi_ok)
    return throw_type(env, "setSimd(enabled): enabled must be a boolean");
  *Flag = want && cpu_has_avx2();
  return simd_info(env, *Flag);
}

// release(handle): frees what a handle of T holds now, with Free (the handle itself goes with the garbage collector).
template <typename T, void (*Free)(napi_env, T&), const napi_type_tag* Tag>
napi_value release(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value a[1];
  SY_CHECK(napi_get_cb_info(env, info, &argc, a, nullptr, nullptr));
  T* data = argc == 1 ? handle_of<T>(env, a[0], Tag) : nullptr;
  if (!data) return throw_type(env, "release(handle): a handle made by this addon's create");
  Free(env, *data);
  return nullptr;
}

// run(handle, x: Float32Array [tokens·hidden], tokens, out: Float32Array [tokens·hidden]) of an expert FFN addon
// whose handles are T (with `hidden` and `released`, made with Tag): checks the arguments, then Compute(e, x, y, n).
template <typename T, const napi_type_tag* Tag, void (*Compute)(T&, const float*, float*, uint32_t)>
napi_value run_ffn(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value a[4];
  SY_CHECK(napi_get_cb_info(env, info, &argc, a, nullptr, nullptr));
  T* handle = argc == 4 ? handle_of<T>(env, a[0], Tag) : nullptr;
  if (!handle) return throw_type(env, "run(handle, x, tokens, out): handle made by this addon's create");
  T& e = *handle;
  if (e.released) return throw_error(env, "run: this expert was released");
  uint32_t tokens;
  float *xp, *yp;
  size_t xn, yn;
  if (!whole(env, a[2], 0, 4294967295.0, &tokens) || !typed_array(env, a[1], napi_float32_array, &xp, &xn) ||
      !typed_array(env, a[3], napi_float32_array, &yp, &yn))
    return throw_type(env, "run: x and out must be Float32Arrays and tokens a non-negative integer");
  const size_t need = static_cast<size_t>(tokens) * e.hidden;
  if (xn < need || yn < need) return throw_range(env, "run: x and out must hold tokens × hidden floats");
  if (tokens > 0) Compute(e, xp, yp, tokens);
  return nullptr;
}

// The module's exports: each function under its name.
inline napi_value define(napi_env env, napi_value exports, std::initializer_list<std::pair<const char*, napi_callback>> functions) {
  std::vector<napi_property_descriptor> props;
  for (const auto& [name, fn] : functions) props.push_back({name, nullptr, fn, nullptr, nullptr, nullptr, napi_default, nullptr});
  return napi_define_properties(env, exports, props.size(), props.data()) == napi_ok ? exports : nullptr;
}

}  // namespace sy
