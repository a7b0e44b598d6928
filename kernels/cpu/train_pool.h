// A small persistent thread pool for the CPU training kernels (kernels/cpu/training.cc).
//
// One pool per process, created on first use with one thread per CPU this process may run on
// (sched_getaffinity, so `taskset` and container CPU sets count), or PANGU_MS_KERNEL_THREADS if
// set. The calling thread works too, so the pool starts n - 1 workers; they sleep on a condition
// variable between launches (no spinning: MindSpore's own threads share the same cores).
//
// Work is split into numbered tasks that the threads take in turn. Kernels make the task split a
// function of the shapes only, never of the thread count, and reduce per-task partial results in
// task order, so their results are bitwise the same whatever the number of threads.
#pragma once

#include <pthread.h>
#include <sched.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace pangu_pool {

inline int detect_threads() {
  if (const char* env = std::getenv("PANGU_MS_KERNEL_THREADS")) {
    const int n = std::atoi(env);
    if (n >= 1) return n;
  }
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n >= 1) return n;
  }
  const unsigned hw = std::thread::hardware_concurrency();
  return hw ? static_cast<int>(hw) : 1;
}

class Pool {
 public:
  explicit Pool(int threads) : threads_(threads < 1 ? 1 : threads) {
    for (int i = 1; i < threads_; ++i) workers_.emplace_back([this] { work(); });
    for (auto& w : workers_) w.detach();  // lives as long as the process (see instance())
  }

  int threads() const { return threads_; }

  // Runs fn(t) for every t in [0, tasks) and returns when all are done. A launch from a second
  // thread while one is in flight runs serially on that thread (MindSpore runs one CPU op at a
  // time, so this is the rare case).
  void run(int64_t tasks, const std::function<void(int64_t)>& fn) {
    if (tasks <= 0) return;
    std::unique_lock<std::mutex> busy(launch_, std::try_to_lock);
    if (threads_ == 1 || tasks == 1 || !busy.owns_lock()) {
      for (int64_t t = 0; t < tasks; ++t) fn(t);
      return;
    }
    {
      std::lock_guard<std::mutex> lk(m_);
      fn_ = &fn;
      tasks_ = tasks;
      next_.store(0);
      done_.store(0);
      ++generation_;
    }
    wake_.notify_all();
    drain();
    std::unique_lock<std::mutex> lk(m_);
    finished_.wait(lk, [this] { return done_.load() == tasks_ && active_ == 0; });
    fn_ = nullptr;
  }

  static Pool& instance();

 private:
  void drain() {
    for (;;) {
      const int64_t t = next_.fetch_add(1);
      if (t >= tasks_) return;
      (*fn_)(t);
      if (done_.fetch_add(1) + 1 == tasks_) {
        std::lock_guard<std::mutex> lk(m_);
        finished_.notify_all();
      }
    }
  }

  void work() {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lk(m_);
        wake_.wait(lk, [&] { return generation_ != seen && fn_ != nullptr; });
        seen = generation_;
        ++active_;
      }
      drain();
      std::lock_guard<std::mutex> lk(m_);
      if (--active_ == 0) finished_.notify_all();
    }
  }

  const int threads_;
  std::vector<std::thread> workers_;
  std::mutex launch_;  // one launch at a time
  std::mutex m_;
  std::condition_variable wake_, finished_;
  const std::function<void(int64_t)>* fn_ = nullptr;
  int64_t tasks_ = 0;
  std::atomic<int64_t> next_{0}, done_{0};
  uint64_t generation_ = 0;
  int active_ = 0;
};

// The process's pool. A forked child (a data-loader worker, say) does not inherit the parent's
// threads, so it drops the parent's pool (leaked on purpose: its mutexes may be held) and builds
// its own on first use.
inline Pool*& pool_slot() {
  static Pool* pool = nullptr;
  return pool;
}

inline void forget_pool_after_fork() { pool_slot() = nullptr; }

inline Pool& Pool::instance() {
  static std::once_flag registered;
  std::call_once(registered, [] { pthread_atfork(nullptr, nullptr, forget_pool_after_fork); });
  static std::mutex create;
  std::lock_guard<std::mutex> lk(create);
  if (pool_slot() == nullptr) pool_slot() = new Pool(detect_threads());
  return *pool_slot();
}

// Runs fn(t) for t in [0, tasks) over the process's pool.
inline void parallel_for(int64_t tasks, const std::function<void(int64_t)>& fn) {
  Pool::instance().run(tasks, fn);
}

}  // namespace pangu_pool
