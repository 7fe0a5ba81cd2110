// threads.h: how many threads a layer call's time loop runs on, and how a step is split between them.
// Shapes: none (policy only); callers pass per-step FLOPs, batch rows B and weight bytes.
// Included once, by ops.cpp (one translation unit; see there).
#pragma once

namespace {

// Threads for the time loop. A step whose work is small (under ~8 MFLOP) is microseconds
// long; on an idle machine splitting it over the threads still pays (S1: 1.5x faster), but on
// a busy one every parallel region waits for a descheduled thread: a scheduler quantum,
// milliseconds, per region and step (measured: 55x slower training beside another PyTorch
// job). So the kernel watches itself: when two small-step loops in a row average over 0.2 ms
// per step (more than their arithmetic needs on one thread; one alone is a hiccup), the next
// calls run on one thread (the window doubles, up to 16384 calls, while the stall persists;
// one parallel call then probes again). The time a call spends measuring a new shape's GEMM
// paths and loop structure is not the loop's and is left out (MeasuringTime).
// omp_set_num_threads(1) for the calling thread covers at::parallel_for, MKL and oneDNN,
// which all take their thread count from it. PEEPHOLE_LSTM_SERIAL_FLOPS sets the size
// threshold (per-step FLOPs; 0: never serial); PEEPHOLE_LSTM_THREADS=serial forces one thread,
// =parallel turns the switch off.
inline double serial_step_flops() { return knobs().serial_flops.load(std::memory_order_relaxed); }

inline bool forced_serial() { return knobs().threads.load(std::memory_order_relaxed) == 1; }
inline bool forced_parallel() { return knobs().threads.load(std::memory_order_relaxed) == 2; }  // never switch

// How the one-region loop shares a step between threads. By rows: each thread runs the
// whole recurrence for its own B / threads rows, every gate column, and never waits for the
// other (no barrier at all); it reads all the weights each step, so only while they fit in
// one core's L2 and each thread has at least 4 rows (below that the weights' streaming
// dominates and splitting the columns halves it). By columns otherwise (see the loop).
// Measured (AMD EPYC Zen 5, 2 threads, 200 steps, inference; benchmarks/README.md): by rows
// at B = 8-32 up to 1.5x faster (the article cell at H = 64, B = 16: 4.5 vs 6.3 us a step;
// the default cell at H = 50, B = 32, S1: 1.2 vs 1.5 ms); at B = 4 and H >= 128 1.3-1.7x
// slower; with 2 MiB of weights (the article cell at H = 256) 3-10% slower.
// PEEPHOLE_LSTM_SPLIT=rows|cols forces one (tests, benchmarks).
inline int64_t l2_bytes() {
  static const int64_t v = [] {
    const long n = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return n > 0 ? int64_t(n) : int64_t(1) << 20;
  }();
  return v;
}

inline bool split_by_rows(int64_t B, int64_t weight_bytes) {
  const int forced = knobs().split.load(std::memory_order_relaxed);
  if (forced != 0) return forced == 1;
  return B >= 4 * omp_get_max_threads() && weight_bytes <= l2_bytes();
}

inline bool fused_loop_enabled() { return knobs().fused_loop.load(std::memory_order_relaxed); }

std::atomic<int64_t> g_serial_left{0};   // calls left to run on one thread
std::atomic<int64_t> g_serial_window{0};  // the last window granted (doubles while stalls persist)
std::atomic<int64_t> g_stalls{0};         // parallel calls found stalled (blas_info reports them)
std::atomic<int64_t> g_stalled_in_a_row{0};  // stalled parallel calls since one that was not
constexpr double kStalledStep = 2e-4;     // seconds per small step that mean waiting, not work

// Seconds this thread has spent measuring (StepGemm::choose, region_wins: once per shape and
// process, milliseconds). LoopThreads leaves them out of a call's time per step: counted in,
// the first call of a new shape could read as a stalled loop (a 4-step forward: 11 ms, of
// which the loop's own is under 0.1) and send the next 256 calls, then 512, ..., to one thread.
thread_local double t_measuring = 0.0;
thread_local int measuring_depth = 0;

class MeasuringTime {  // adds its scope's time to t_measuring (the outermost scope only)
 public:
  MeasuringTime() : start_(std::chrono::steady_clock::now()) { ++measuring_depth; }
  ~MeasuringTime() {
    if (--measuring_depth == 0) {
      t_measuring += std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    }
  }
  MeasuringTime(const MeasuringTime&) = delete;
  MeasuringTime& operator=(const MeasuringTime&) = delete;

 private:
  std::chrono::steady_clock::time_point start_;
};

// The last parallel small-step call's timing on this thread (last_loop_timing() reports it):
// its whole time, the part spent measuring a new shape, and its steps.
struct LoopTiming {
  double elapsed = 0.0, measuring = 0.0;
  int64_t steps = 0;
};
thread_local LoopTiming t_last_loop;

// The stall policy, given a parallel call's loop time (measuring left out) and its steps;
// returns whether the call counted as stalled. Over kStalledStep a step: stalled. Two stalled
// calls in a row open a one-thread window of 256 calls (doubling while the stall persists, up
// to 16384); a call that is not stalled closes the streak and resets the window.
inline bool record_loop(double loop_seconds, int64_t steps) {
  const bool stalled = loop_seconds / double(steps) > kStalledStep;
  if (stalled) {
    g_stalls.fetch_add(1, std::memory_order_relaxed);
    // Two stalled parallel calls in a row: one alone is a hiccup (a page fault, the thread
    // pool waking, one descheduling) that a busy machine repeats and an idle one does not.
    if (g_stalled_in_a_row.fetch_add(1, std::memory_order_relaxed) + 1 >= 2) {
      const int64_t w = std::min<int64_t>(16384, std::max<int64_t>(256, 2 * g_serial_window.load()));
      g_serial_window.store(w);
      g_serial_left.store(w);
    }
  } else {
    g_stalled_in_a_row.store(0, std::memory_order_relaxed);
    g_serial_window.store(0);
  }
  return stalled;
}

// Back to a fresh process's policy state (tests).
inline void reset_stall_policy() {
  g_serial_left.store(0);
  g_serial_window.store(0);
  g_stalls.store(0);
  g_stalled_in_a_row.store(0);
  t_last_loop = LoopTiming{};
}

class LoopThreads {
 public:
  explicit LoopThreads(double step_flops)
      : small_(step_flops < serial_step_flops() && omp_get_max_threads() > 1) {
    if (!small_) return;
    serial_ = forced_serial();
    if (!serial_ && !forced_parallel() && g_serial_left.load(std::memory_order_relaxed) > 0) {
      serial_ = g_serial_left.fetch_sub(1, std::memory_order_relaxed) > 0;
    }
    if (serial_) {
      saved_ = omp_get_max_threads();
      omp_set_num_threads(1);
    }
    start_ = std::chrono::steady_clock::now();
    measured_ = t_measuring;
  }
  // After the loop of a parallel call: was it stalled? (Time spent measuring is not the loop's.)
  void done(int64_t steps) {
    if (!small_ || serial_ || steps <= 0 || forced_parallel()) return;
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    const double measuring = t_measuring - measured_;
    t_last_loop = {elapsed, measuring, steps};
    record_loop(elapsed - measuring, steps);
  }
  bool serial() const { return serial_; }
  bool small() const { return small_; }
  ~LoopThreads() {
    if (serial_) omp_set_num_threads(saved_);
  }
  LoopThreads(const LoopThreads&) = delete;
  LoopThreads& operator=(const LoopThreads&) = delete;

 private:
  bool small_;
  bool serial_ = false;
  int saved_ = 1;
  std::chrono::steady_clock::time_point start_;
  double measured_ = 0.0;  // t_measuring at the start
};

}  // namespace
