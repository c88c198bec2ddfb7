// Thread-count control and the small OpenMP helpers every kernel shares.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>

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

}  // namespace lpfast
