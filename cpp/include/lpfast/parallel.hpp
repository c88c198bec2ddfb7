// Thread-count control and the small OpenMP helpers every kernel shares.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
#include <utility>

#ifdef LPFAST_HAVE_OPENMP
#include <omp.h>
#endif

namespace lpfast {

inline constexpr bool has_openmp() {
#ifdef LPFAST_HAVE_OPENMP
  return true;
#else
  return false;
#endif
}

namespace detail {
// 0 means "not set": fall back to OpenMP's default, which honours OMP_NUM_THREADS.
// A process-wide atomic rather than omp_set_num_threads(), whose setting is per calling
// thread and so would be invisible to calls made from other Python threads.
inline std::atomic<int>& thread_setting() {
  static std::atomic<int> n{0};
  return n;
}
}  // namespace detail

inline int get_num_threads() {
  const int n = detail::thread_setting().load(std::memory_order_relaxed);
  if (n > 0) return n;
#ifdef LPFAST_HAVE_OPENMP
  return std::max(1, omp_get_max_threads());
#else
  return 1;
#endif
}

// n <= 0 restores the default.
inline void set_num_threads(int n) {
  detail::thread_setting().store(std::max(n, 0), std::memory_order_relaxed);
}

// Threads worth using for `work` units of roughly one flop each: tiny inputs run serially
// because waking a team costs a few microseconds.
inline int threads_for(double work, double min_work_per_thread = 2.0e4) {
  const int nt = get_num_threads();
  const int useful = static_cast<int>(work / min_work_per_thread);
  return std::max(1, std::min(nt, useful));
}

inline int thread_id() {
#ifdef LPFAST_HAVE_OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

inline int team_size() {
#ifdef LPFAST_HAVE_OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}

// An exception may not leave an OpenMP region: capture the first, rethrow after the join.
class ExceptionGuard {
 public:
  template <class F>
  void run(F&& f) noexcept {
    try {
      f();
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!error_) error_ = std::current_exception();
    }
  }
  void rethrow() const {
    if (error_) std::rethrow_exception(error_);
  }

 private:
  std::exception_ptr error_;
  std::mutex mutex_;
};

// [lo, hi) of `count` items for thread `tid` of `team`: contiguous, in thread order.
inline std::pair<std::int64_t, std::int64_t> static_range(std::int64_t count, int tid, int team) {
  return {count * tid / team, count * (tid + 1) / team};
}

// Runs f(tid, team) on a team of up to nt threads (inline when nt <= 1). The first
// exception any thread throws is rethrown here after the join, so callers see the same
// exception as from serial code. f must not wait at a barrier: a thread that threw would
// never reach it.
template <class F>
void parallel_region(int nt, F&& f) {
  ExceptionGuard guard;
#pragma omp parallel num_threads(nt) if (nt > 1)
  guard.run([&] { f(thread_id(), team_size()); });
  guard.rethrow();
}

// f(i) for i in [0, count), handed out one at a time to up to nt threads (for items of
// uneven cost, e.g. restarts); exceptions as in parallel_region.
template <class F>
void parallel_for_dynamic(int nt, std::int64_t count, F&& f) {
  ExceptionGuard guard;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1)
  for (std::int64_t i = 0; i < count; ++i) guard.run([&] { f(i); });
  guard.rethrow();
}

}  // namespace lpfast
