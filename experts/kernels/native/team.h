// A compute team: the calling thread and a few helper threads run the units of one parallel loop, then return.
// llama.cpp's model of a decode step (ggml's thread pool): no thread sleeps inside a step. Helpers spin for `spin_us`
// after a loop ends, so the next loop of the same step (the next stage, the next layer) finds them awake; after that
// they sleep on a condition variable, so an idle gateway costs no CPU.
//
// Units are claimed with one 64-bit compare-and-swap over (generation, next unit): a helper that wakes late, after its
// loop has ended, can never claim a unit of the next loop with the previous loop's body. The caller waits for its
// units to be done, not for every helper to check in, so a helper that is slow to wake (its core busy) delays nothing.
// One loop at a time per team: parallel_for from a second thread while one runs waits on the team's mutex.
#pragma once

#include <node_api.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define SY_PAUSE() _mm_pause()
#else
#define SY_PAUSE() std::this_thread::yield()
#endif

namespace sy {

class Team {
  using Body = void (*)(void*, uint32_t);

 public:
  // helpers: threads besides the caller (0: every loop runs on the caller alone); spin_us: how long a helper stays
  // awake after a loop. Helpers are started once and live as long as the process (they are detached: the addon may be
  // unloaded only with the process).
  void configure(uint32_t helpers, uint32_t spin_us) {
    std::lock_guard<std::mutex> run(run_);
    spin_us_.store(spin_us, std::memory_order_relaxed);
    while (started_ < helpers) {
      std::thread(&Team::helper, this, started_).detach();
      started_++;
    }
    helpers_.store(helpers, std::memory_order_relaxed);
  }

  uint32_t helpers() const { return helpers_.load(std::memory_order_relaxed); }
  uint32_t spin_us() const { return spin_us_.load(std::memory_order_relaxed); }

  // body(unit) for every unit in [0, units), on this thread and the helpers; returns when all have run.
  template <typename F>
  void parallel_for(uint32_t units, F& body) {
    if (units == 0) return;
    std::lock_guard<std::mutex> run(run_);
    if (units == 1 || (helpers_.load(std::memory_order_relaxed) == 0 && joiners_.load(std::memory_order_acquire) == 0)) {
      for (uint32_t u = 0; u < units; u++) body(u);
      return;
    }
    // First close the previous loop: its ticket moves to a generation whose every unit is taken. A thread that read
    // the old ticket, and then reads this loop's units, fn or ctx below (release/acquire), fails its claim because
    // the ticket has changed, so no unit ever runs with another loop's body or count. Helpers that wake on the
    // closing generation find nothing to claim and wait for the next.
    const uint64_t closing = (ticket_.load(std::memory_order_relaxed) >> 32) + 1;
    ticket_.store((closing << 32) | kTaken, std::memory_order_seq_cst);
    fn_.store([](void* ctx, uint32_t u) { (*static_cast<F*>(ctx))(u); }, std::memory_order_release);
    ctx_.store(&body, std::memory_order_release);
    units_.store(units, std::memory_order_release);
    done_.store(0, std::memory_order_relaxed);
    const uint64_t gen = closing + 1;
    {
      std::lock_guard<std::mutex> lock(sleep_);
      ticket_.store(gen << 32, std::memory_order_release);
      if (sleepers_ > 0) wake_.notify_all();
    }
    work(gen);
    while (done_.load(std::memory_order_acquire) < units) SY_PAUSE();
  }

  // ---- a job: a whole piece of work (a model's forward) that helper 0 drives while the submitting thread is free ----
  //
  // begin(job) hands `job` to helper 0 and returns at once; helper 0 runs it as the caller of its parallel loops (the
  // other helpers help as usual). The submitting thread then does other work (the gateway's I/O) and calls join(),
  // which claims units of the job's loops until the job has returned, so every core computes again. If helper 0
  // has not taken the job by then, or there are no helpers, join() runs it on the joining thread. One job at a
  // time; join() returns its error, or "".
  using Job = std::string (*)(void*);
  void begin(Job job, void* ctx) {
    job_fn_ = job;
    job_ctx_ = ctx;
    job_error_.clear();
    job_done_.store(false, std::memory_order_release);
    if (helpers_.load(std::memory_order_relaxed) == 0) return;  // join() runs it
    std::lock_guard<std::mutex> lock(sleep_);
    job_pending_.store(true, std::memory_order_release);
    if (sleepers_ > 0) wake_.notify_all();
  }

  std::string join() {
    if (helpers_.load(std::memory_order_relaxed) == 0) {
      run_job();
      return job_error_;
    }
    // Helper 0 may not have woken yet (it sleeps between steps, and waking a thread can take longer than the
    // caller's I/O): then this thread runs the job itself and helper 0, once awake, helps as any helper.
    if (job_pending_.exchange(false, std::memory_order_acq_rel)) {
      run_job();
      return job_error_;
    }
    joiners_.fetch_add(1, std::memory_order_acq_rel);
    while (!job_done_.load(std::memory_order_acquire)) {
      const uint64_t t = ticket_.load(std::memory_order_acquire);
      if (static_cast<uint32_t>(t) < units_.load(std::memory_order_acquire)) work(t >> 32);
      else SY_PAUSE();
    }
    joiners_.fetch_sub(1, std::memory_order_acq_rel);
    return job_error_;
  }

 private:
  void run_job() {
    job_error_ = job_fn_(job_ctx_);
    job_done_.store(true, std::memory_order_release);
  }

  // Claims and runs units of generation `gen` until none are left (or a newer loop has started).
  void work(uint64_t gen) {
    for (;;) {
      uint64_t t = ticket_.load(std::memory_order_acquire);
      if ((t >> 32) != gen) return;
      // Read before the claim; a successful claim proves they belong to `gen`: they change only after its loop is done
      // and its ticket closed (parallel_for), which makes this claim fail.
      const uint32_t units = units_.load(std::memory_order_acquire);
      Body fn = fn_.load(std::memory_order_acquire);
      void* ctx = ctx_.load(std::memory_order_acquire);
      const uint32_t unit = static_cast<uint32_t>(t);
      if (unit >= units) return;
      if (!ticket_.compare_exchange_weak(t, t + 1, std::memory_order_acq_rel)) continue;
      fn(ctx, unit);
      done_.fetch_add(1, std::memory_order_release);
    }
  }

  // Helper `index` takes part while index < helpers (configure may lower the count; threads are never stopped).
  void helper(uint32_t index) {
    uint64_t seen = ticket_.load(std::memory_order_acquire) >> 32;
    for (;;) {
      const auto start = std::chrono::steady_clock::now();
      const auto spin = std::chrono::microseconds(spin_us_.load(std::memory_order_relaxed));
      uint32_t polls = 0;
      const auto idle = [&] { return (ticket_.load(std::memory_order_acquire) >> 32) == seen && !(index == 0 && job_pending_.load(std::memory_order_acquire)); };
      while (idle()) {
        SY_PAUSE();
        if ((++polls & 63) == 0 && std::chrono::steady_clock::now() - start > spin) {
          std::unique_lock<std::mutex> lock(sleep_);
          sleepers_++;
          wake_.wait(lock, [&] { return !idle(); });
          sleepers_--;
          break;
        }
      }
      if (index == 0 && job_pending_.exchange(false, std::memory_order_acq_rel)) {
        run_job();
        seen = ticket_.load(std::memory_order_acquire) >> 32;
        continue;
      }
      seen = ticket_.load(std::memory_order_acquire) >> 32;
      if (index < helpers_.load(std::memory_order_relaxed)) work(seen);
    }
  }

  // The unit field of a closed generation's ticket: no unit is left to claim.
  static constexpr uint64_t kTaken = 0xFFFFFFFFu;
  std::mutex run_;  // one loop at a time
  std::atomic<uint32_t> helpers_{0}, spin_us_{0};
  uint32_t started_ = 0;
  // (generation << 32) | next unit to claim.
  std::atomic<uint64_t> ticket_{0};
  std::atomic<uint32_t> done_{0};
  std::atomic<uint32_t> units_{0};
  std::atomic<Body> fn_{nullptr};
  std::atomic<void*> ctx_{nullptr};
  std::mutex sleep_;
  std::condition_variable wake_;
  uint32_t sleepers_ = 0;
  // The job (begin/join): threads claiming units in join(), and the job helper 0 runs.
  std::atomic<uint32_t> joiners_{0};
  std::atomic<bool> job_pending_{false}, job_done_{true};
  Job job_fn_ = nullptr;
  void* job_ctx_ = nullptr;
  std::string job_error_;
};

// The type tag of a team handle (an external whose data is a Team*): the addon that owns the team (dense_ffn) hands it
// out; the trunk and attention addons take it as an argument and refuse anything else. The team is never freed, so
// a handle stays valid for the life of the process.
inline const napi_type_tag kTeamTag = {0x5377697463687961ULL, 0x7465616d5f746561ULL};

// The team behind `value`: a handle from the dense_ffn addon's teamHandle(), or null for undefined/null (the caller's
// thread alone). False for anything else (the caller throws).
inline bool team_arg(napi_env env, napi_value value, Team** out) {
  napi_valuetype type = napi_undefined;
  if (napi_typeof(env, value, &type) != napi_ok) return false;
  if (type == napi_undefined || type == napi_null) {
    *out = nullptr;
    return true;
  }
  bool tagged = false;
  void* data = nullptr;
  if (napi_check_object_type_tag(env, value, &kTeamTag, &tagged) != napi_ok || !tagged || napi_get_value_external(env, value, &data) != napi_ok) return false;
  *out = static_cast<Team*>(data);
  return true;
}

// body(unit) for each unit on `team`, or here in order when there is none.
template <typename F>
void parallel_for(Team* team, uint32_t units, F& body) {
  if (team) return team->parallel_for(units, body);
  for (uint32_t u = 0; u < units; u++) body(u);
}

}  // namespace sy
