// Fused peephole-LSTM recurrence for CPU: one layer's time loop and its backward (BPTT) in C++.
//
// Algorithm. The caller computes xw = x W_ih^T for every step (one GEMM). Per step t:
//   z   = xw_t + bias + h_{t-1} W_hh^T                     one GEMM (B x P x 4H)
//   full peepholes: z_{i,f,g} += c_{t-1} [W_ci; W_cf; W_cc]^T  one GEMM (B x H x 3H); on the
//                   kernel's own GEMM the same pass as h_{t-1} W_hh^T (k = P + H for i, f, g)
//   i, f, g, c_t = ... (fused element-wise kernel; diagonal peepholes w ⊙ c inside it;
//                      c_t clipped to [-cell_clip, cell_clip] when a clip is set)
//   full peepholes: z_o += c_t W_co^T                      one GEMM (B x H x H)
//   o, h_t = o tanh(c_t) (W_hr^T when projected)           element-wise (+ one GEMM)
// Inference with large steps may pass x and W_ih instead of xw (forward_x): each step's
// x_t W_ih^T (B x I x 4H) is written into the step's gate rows and the step's GEMM adds
// h_{t-1} W_hh^T onto it, so the (T, B, 4H) product never goes through memory.
// The backward walks the steps in reverse with the mirror-image GEMMs and element-wise
// kernels, then forms dW_hh, dW_hr and the full peephole grads with one GEMM each over all
// steps; the bias and diagonal peephole grads are summed in the element-wise kernel (per
// fixed chunk of rows, then over the chunks). Small steps run the backward's loop in one
// OpenMP region too, split by rows as the forward's.
//
// Memory layout. Row-major, time-major. Unpacked: xw (T, B, 4H), out (T, B, P), saved
// gates (T, B, 4H) = activated [i, f, g, o], cs (T, B, H). Packed (batch_sizes given, as
// in a PackedSequence sorted by decreasing length): step t owns rows off_t .. off_t + n_t
// of xw (N, 4H), out (N, P), gates (N, 4H), cs (N, H), n_t = batch_sizes[t], and only those
// rows are computed (as cuDNN and oneDNN do); a sequence's state stops at its last step.
//
// GEMM path. Per shape the kernel measures, once per process, MKL's packed sgemm, the
// plain BLAS sgemm, oneDNN's matmul (through ATen's mkldnn op) and its own register-blocked
// at::vec GEMM (VecGemm), and keeps the fastest: MKL's sgemm takes about twice oneDNN's time
// on AMD at the larger sizes, and oneDNN's per-call overhead loses at the small ones.
// PEEPHOLE_LSTM_GEMM=packed|blas|onednn|vec forces one (benchmarks, tests). Small steps (no
// projection) run the whole forward loop in one OpenMP region on VecGemm where that measures
// faster than the per-step loop on the measured path (region_wins, per shape): with at least 4
// rows a thread and weights that fit one core's L2, each thread runs the recurrence of its
// own rows with no barrier (S1, S3; packed batches too: the rows a step still has);
// otherwise (unpacked, H a multiple of the vector width) each thread owns a block of hidden units, computes their gate columns (and
// full-peephole columns) and their cell update, and one barrier ends each step (two with a
// full W_co, which needs all of c_t). The weight gradients over all steps (A^T B) use GemmTN, timed
// against ATen's mm on the first calls.
//
// Built on first use by peephole_lstm/_backend.py (torch.utils.cpp_extension, no fast-math),
// registered as torch.ops.peephole_lstm_cpp.{forward,backward}; the public op with its
// autograd formula and fake kernel is peephole_lstm::recurrence (peephole_lstm/_fused.py).
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <dlfcn.h>
#include <immintrin.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

namespace {

using at::Tensor;

template <typename T>
const T* ptr_or_null(const std::optional<Tensor>& w) {
  return (w.has_value() && w->defined()) ? w->data_ptr<T>() : nullptr;
}

// Grain so that small batches stay on one thread: parallel_for costs more than it saves
// below a few tens of thousands of elements per step.
inline int64_t grain_rows(int64_t H) {
  return std::max<int64_t>(1, 4096 / std::max<int64_t>(1, 4 * H));
}

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
inline double serial_step_flops() {
  static const double v = [] {
    const char* env = std::getenv("PEEPHOLE_LSTM_SERIAL_FLOPS");
    return env != nullptr ? std::atof(env) : double(1 << 23);
  }();
  return v;
}

inline const std::string& threads_env() {  // PEEPHOLE_LSTM_THREADS, "" when unset
  static const std::string v = [] {
    const char* env = std::getenv("PEEPHOLE_LSTM_THREADS");
    return std::string(env != nullptr ? env : "");
  }();
  return v;
}
inline bool forced_serial() { return threads_env() == "serial"; }
inline bool forced_parallel() { return threads_env() == "parallel"; }  // never switch to one thread

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
  static const int forced = [] {
    const char* env = std::getenv("PEEPHOLE_LSTM_SPLIT");
    return env == nullptr ? 0 : std::string(env) == "rows" ? 1 : std::string(env) == "cols" ? 2 : 0;
  }();
  if (forced != 0) return forced == 1;
  return B >= 4 * omp_get_max_threads() && weight_bytes <= l2_bytes();
}

inline bool fused_loop_enabled() {
  static const bool v = [] {
    const char* env = std::getenv("PEEPHOLE_LSTM_FUSED_LOOP");
    return env == nullptr || std::string(env) != "0";
  }();
  return v;
}

// Buffer pool for the large per-call buffers (saved gates and cell states, gate gradients,
// dH). glibc serves an allocation over its mmap threshold (at most 32 MiB) with fresh mmap'd
// pages on every call, and faulting them in was ~23% of an S4 training step (perf, AMD EPYC).
// Buffers of at least kPoolMinBytes come from here instead: a tensor's deleter returns its
// block, and the next call of the same size (rounded up to 64 KiB; or up to 1/8 larger) takes
// it back with its pages already mapped. The pool keeps at most PEEPHOLE_LSTM_POOL_MB
// (default 1024; 0 turns it off) of free blocks, more are freed at once; release_pool()
// (peephole_lstm.release_buffers() in Python) frees them all. A leaked singleton: tensors
// may outlive static destruction.
class BufferPool {
 public:
  static BufferPool& get() {
    static BufferPool* p = new BufferPool();
    return *p;
  }

  Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& opt) {
    int64_t numel = 1;
    for (int64_t d : sizes) numel *= d;
    const size_t want = size_t(numel) * c10::elementSize(c10::typeMetaToScalarType(opt.dtype()));
    if (want < kPoolMinBytes || cap_ == 0) return at::empty(sizes, opt);
    size_t bytes = (want + kRound - 1) / kRound * kRound;
    void* ptr = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.lower_bound(bytes);
      if (it != free_.end() && it->first <= bytes + bytes / 8) {
        bytes = it->first;
        ptr = it->second;
        cached_ -= bytes;
        free_.erase(it);
      }
    }
    if (ptr == nullptr) {
      ptr = std::aligned_alloc(kAlign, bytes);
      TORCH_CHECK(ptr != nullptr, "peephole_lstm: out of memory allocating ", bytes, " bytes");
    }
    return at::from_blob(ptr, sizes, [bytes](void* q) { BufferPool::get().put(q, bytes); }, opt);
  }

  void put(void* ptr, size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (cached_ + bytes <= cap_) {
        free_.emplace(bytes, ptr);
        cached_ += bytes;
        return;
      }
    }
    std::free(ptr);
  }

  int64_t release() {
    std::multimap<size_t, void*> blocks;
    size_t bytes;
    {
      std::lock_guard<std::mutex> lock(mu_);
      blocks.swap(free_);
      bytes = cached_;
      cached_ = 0;
    }
    for (auto& b : blocks) std::free(b.second);
    return int64_t(bytes);
  }

  int64_t cached() {
    std::lock_guard<std::mutex> lock(mu_);
    return int64_t(cached_);
  }

 private:
  BufferPool() {
    const char* env = std::getenv("PEEPHOLE_LSTM_POOL_MB");
    cap_ = size_t(env != nullptr ? std::max(0.0, std::atof(env)) : 1024.0) << 20;
  }
  static constexpr size_t kPoolMinBytes = size_t(4) << 20;
  static constexpr size_t kRound = size_t(64) << 10;
  static constexpr size_t kAlign = 64;
  std::mutex mu_;
  std::multimap<size_t, void*> free_;  // size -> block
  size_t cached_ = 0;
  size_t cap_ = 0;
};

inline Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& opt) {
  return BufferPool::get().empty(sizes, opt);
}

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
    const double loop = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count() -
                        (t_measuring - measured_);
    const double per_step = loop / double(steps);
    if (per_step > kStalledStep) {
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

// at::vec::Vectorized is AVX2 (SLEEF exp/tanh, the kernels ATen itself uses) when the
// build passes -DCPU_CAPABILITY_AVX2 (done when the CPU has it), else portable scalar code.
template <typename T>
using Vec = at::vec::Vectorized<T>;

// exp. SLEEF's (at::vec's exp) is an out-of-line call, and every call makes the element-wise
// kernel spill its live vector registers (all caller-saved); for float on AVX-512 an inline
// one instead: n = round(x / ln 2), r = x - n ln 2 (Cody-Waite, two parts), e^r by Cephes'
// degree-6 polynomial, 2^n by scalef (which gives inf and 0 past the range). Within 1.25 ulp
// of exp over [-87, 88.5] (SLEEF's: 1 ulp); NaN, ±inf and the range ends as exp.
template <typename T>
inline Vec<T> vexp(const Vec<T>& x) {
  return x.exp();
}
#if defined(CPU_CAPABILITY_AVX512)
template <>
inline Vec<float> vexp<float>(const Vec<float>& xv) {
  // max/min return their second operand when either is NaN: a NaN x stays NaN
  const __m512 x = _mm512_min_ps(_mm512_set1_ps(89.f), _mm512_max_ps(_mm512_set1_ps(-104.f), __m512(xv)));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);  // exact: n has <= 8 bits
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(p, n);
}
#endif

template <typename T>
inline Vec<T> sigmoid(const Vec<T>& x) {
  return (Vec<T>(T(1)) + vexp(x.neg())).reciprocal();  // as ATen's sigmoid kernel
}

// tanh through expm1, which keeps full relative accuracy near 0 (a few ulp everywhere) and
// is faster than SLEEF's vectorised tanh: tanh|x| = -m / (2 + m), m = expm1(-2|x|).
template <typename T>
inline Vec<T> tanh(const Vec<T>& x) {
  const Vec<T> m = (x.abs() * Vec<T>(T(-2))).expm1();
  const Vec<T> t = m.neg() / (Vec<T>(T(2)) + m);
  return Vec<T>::blendv(t, t.neg(), x < Vec<T>(T(0)));
}

// float: cheaper still and as accurate (about 1 ulp). For |x| >= 0.625,
// tanh|x| = 1 - 2 / (1 + exp(2|x|)) (no cancellation: the subtracted term is <= 0.45);
// below, the odd Taylor series to x^17 (the first omitted term is < 1 ulp at 0.625).
template <>
inline Vec<float> tanh<float>(const Vec<float>& x) {
  using V = Vec<float>;
  const V ax = x.abs();
  const V big = V(1.f) - V(2.f) / (V(1.f) + vexp(ax + ax));
  const V x2 = ax * ax;
  // Horner in x^2: 1 - x2/3 + 2x2^2/15 - 17x2^3/315 + 62x2^4/2835 - 1382x2^5/155925
  //               + 21844x2^6/6081075 - 929569x2^7/638512875 + 6404582x2^8/10854718875
  V p(6404582.f / 10854718875.f);
  p = at::vec::fmadd(p, x2, V(-929569.f / 638512875.f));
  p = at::vec::fmadd(p, x2, V(21844.f / 6081075.f));
  p = at::vec::fmadd(p, x2, V(-1382.f / 155925.f));
  p = at::vec::fmadd(p, x2, V(62.f / 2835.f));
  p = at::vec::fmadd(p, x2, V(-17.f / 315.f));
  p = at::vec::fmadd(p, x2, V(2.f / 15.f));
  p = at::vec::fmadd(p, x2, V(-1.f / 3.f));
  const V small = ax + ax * x2 * p;
  const V t = V::blendv(small, big, ax >= V(0.625f));
  return V::blendv(t, t.neg(), x < V(0.f));
}

// Loads and stores of n <= Vec::size() elements (the row tail uses n < size).
template <typename T>
inline Vec<T> load(const T* p, int64_t n) {
  return n == Vec<T>::size() ? Vec<T>::loadu(p) : Vec<T>::loadu(p, n);
}
template <typename T>
inline Vec<T> load_or(const T* p, int64_t n, T dflt) {
  return p ? load(p, n) : Vec<T>(dflt);
}
template <typename T>
inline void store(const Vec<T>& v, T* p, int64_t n) {
  if (n == Vec<T>::size()) {
    v.store(p);
  } else {
    v.store(p, n);
  }
}

// unit(j, n) for the vectors of hidden units [j_begin, j_end): whole ones with n the vector
// width as a compile-time constant (so each load's tail test folds away), then the tail.
template <typename T, typename F>
__attribute__((always_inline)) inline void for_vectors(int64_t j_begin, int64_t j_end, const F& unit) {
  constexpr int64_t W = Vec<T>::size();
  int64_t j = j_begin;
  for (; j + W <= j_end; j += W) unit(j, std::integral_constant<int64_t, W>());
  if (j < j_end) unit(j, j_end - j);
}

// ----------------------------------------------------------------------- element-wise
// One step's gates for rows [0, B): xw (B, 4H) this step's input projection (null: already in
// hw); hw (B, 4H) = h_{t-1} W_hh^T (may alias gates); pc
// (B, kc*H) or null = c_{t-1} [W_ci; W_cf; (W_cc)]^T (full peepholes, kc = 2 or 3). Writes
// the activations [i, f, g, o] to gates, c_t to c and r = o tanh(c_t) to r. With split_o
// (full W_co, which needs c_t first) o and r are left to forward_out. Absent diagonal
// peepholes load as 0, which adds exactly nothing.
template <typename T>
void forward_cell(const T* xw, const T* bias, const T* hw, const T* pc, int64_t kc, T* gates, const T* c_prev, T* c,
                  T* r, const T* w_ci, const T* w_cf, const T* w_co, const T* w_cc, bool split_o, T clip, int64_t B,
                  int64_t H, int64_t j_begin = 0, int64_t j_end = -1) {
  if (j_end < 0) j_end = H;  // hidden units [j_begin, j_end) (the fused small-step loop splits them)
  const T* bi = bias;
  const T* bf = bias ? bias + H : nullptr;
  const T* bg = bias ? bias + 2 * H : nullptr;
  const T* bo = bias ? bias + 3 * H : nullptr;
  at::parallel_for(0, B, grain_rows(H), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      T* gi = gates + b * 4 * H;
      T* gf = gi + H;
      T* gg = gf + H;
      T* go = gg + H;
      const T* hi = hw + b * 4 * H;
      const T* hf = hi + H;
      const T* hg = hf + H;
      const T* ho = hg + H;
      const T* xi = xw ? xw + b * 4 * H : nullptr;  // null: x W_ih^T is in hw already (forward_x)
      const T* xf = xw ? xi + H : nullptr;
      const T* xg = xw ? xf + H : nullptr;
      const T* xo = xw ? xg + H : nullptr;
      const T* pi = pc ? pc + b * kc * H : nullptr;
      const T* pf = pc ? pi + H : nullptr;
      const T* pg = (pc && kc == 3) ? pi + 2 * H : nullptr;
      const T* cp = c_prev + b * H;
      T* cb = c + b * H;
      T* rb = r + b * H;
      for_vectors<T>(j_begin, j_end, [&](int64_t j, auto n) __attribute__((always_inline)) {
        const Vec<T> cpj = load(cp + j, n);
        const Vec<T> zo =
            load_or(xo ? xo + j : nullptr, n, T(0)) + load_or(bo ? bo + j : nullptr, n, T(0)) + load(ho + j, n);
        const Vec<T> i = sigmoid(load_or(xi ? xi + j : nullptr, n, T(0)) + load_or(bi ? bi + j : nullptr, n, T(0)) +
                                 load(hi + j, n) +
                                 load_or(w_ci ? w_ci + j : nullptr, n, T(0)) * cpj +
                                 load_or(pi ? pi + j : nullptr, n, T(0)));
        const Vec<T> f = sigmoid(load_or(xf ? xf + j : nullptr, n, T(0)) + load_or(bf ? bf + j : nullptr, n, T(0)) +
                                 load(hf + j, n) +
                                 load_or(w_cf ? w_cf + j : nullptr, n, T(0)) * cpj +
                                 load_or(pf ? pf + j : nullptr, n, T(0)));
        const Vec<T> g = tanh(load_or(xg ? xg + j : nullptr, n, T(0)) + load_or(bg ? bg + j : nullptr, n, T(0)) +
                              load(hg + j, n) +
                              load_or(w_cc ? w_cc + j : nullptr, n, T(0)) * cpj +
                              load_or(pg ? pg + j : nullptr, n, T(0)));
        Vec<T> cj = f * cpj + i * g;
        if (clip > T(0)) cj = at::vec::clamp(cj, Vec<T>(-clip), Vec<T>(clip));  // cell_clip
        store(i, gi + j, n);
        store(f, gf + j, n);
        store(g, gg + j, n);
        store(cj, cb + j, n);
        if (split_o) {
          store(zo, go + j, n);  // pre-activation, finished by forward_out
        } else {
          // the output gate sees the new cell state
          const Vec<T> o = sigmoid(zo + load_or(w_co ? w_co + j : nullptr, n, T(0)) * cj);
          store(o, go + j, n);
          store(o * tanh(cj), rb + j, n);
        }
      });
    }
  });
}

// The rest of a split step: o = σ(z_o + po), po (B, H) = c_t W_co^T; r = o tanh(c_t).
template <typename T>
void forward_out(T* gates, const T* po, const T* c, T* r, int64_t B, int64_t H, int64_t j_begin = 0,
                 int64_t j_end = -1) {
  if (j_end < 0) j_end = H;
  at::parallel_for(0, B, grain_rows(H), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      T* go = gates + b * 4 * H + 3 * H;
      for_vectors<T>(j_begin, j_end, [&](int64_t j, auto n) __attribute__((always_inline)) {
        const Vec<T> cj = load(c + b * H + j, n);
        const Vec<T> o = sigmoid(load(go + j, n) + load(po + b * H + j, n));
        store(o, go + j, n);
        store(o * tanh(cj), r + b * H + j, n);
      });
    }
  });
}

// Accumulator rows of backward_cell: the bias grad (4H: d_i, d_f, d_g, d_o) and the diagonal
// peephole grads d_i c_{t-1}, d_f c_{t-1}, d_o c_t, d_g c_{t-1}: 8H per chunk of rows. The rows
// are split into fixed chunks of chunk_rows (not per thread), so the sums do not depend on
// the thread count.
constexpr int64_t kAcc = 8;
constexpr int64_t kChunkRows = 4;  // at most: whole chunks per thread in the one-region backward

// dc: (B, H) gradient w.r.t. c_t in, w.r.t. c_{t-1} out. dgates: (B, 4H) pre-activation grads.
// phase 0 does the whole step; a full W_co splits it: phase 1 computes d_o and leaves
// dc = dL/dc_t without the W_co term (the caller adds d_o W_co), phase 2 the rest. With a
// cell clip, no gradient flows through a c_t at the bound (it was clipped).
template <typename T>
void backward_cell(const T* gates, const T* c, const T* c_prev, const T* dr, T* dc, T* dgates, const T* w_ci,
                   const T* w_cf, const T* w_co, const T* w_cc, int phase, T clip, int64_t B, int64_t H,
                   int64_t chunk_rows, T* acc, int64_t row0 = 0) {
  constexpr int64_t W = Vec<T>::size();
  const Vec<T> one(T(1));
  // rows [0, B) here are rows [row0, row0 + B) of the batch; chunk k holds batch rows
  // [k chunk_rows, (k + 1) chunk_rows), whoever runs them
  const int64_t k_begin = row0 / chunk_rows, k_end = (row0 + B + chunk_rows - 1) / chunk_rows;
  // a thread's share at least grain_rows(H) rows: small batches stay on one thread
  const int64_t grain = std::max<int64_t>(1, grain_rows(H) / chunk_rows);
  at::parallel_for(k_begin, k_end, grain, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      T* a = acc + k * kAcc * H;
      for (int64_t b = std::max<int64_t>(0, k * chunk_rows - row0); b < std::min(B, (k + 1) * chunk_rows - row0);
           ++b) {
        const T* gi = gates + b * 4 * H;
        const T* gf = gi + H;
        const T* gg = gf + H;
        const T* go = gg + H;
        T* di = dgates + b * 4 * H;
        T* df = di + H;
        T* dg = df + H;
        T* dout = dg + H;
        const T* cb = c + b * H;
        const T* cp = c_prev + b * H;
        const T* drb = dr + b * H;
        T* dcb = dc + b * H;
        for (int64_t j = 0; j < H; j += W) {
          const int64_t n = std::min<int64_t>(W, H - j);
          const Vec<T> cj = load(cb + j, n);
          Vec<T> dcj = load(dcb + j, n);
          if (phase != 2) {
            const Vec<T> o = load(go + j, n);
            const Vec<T> tc = tanh(cj);
            const Vec<T> drj = load(drb + j, n);
            const Vec<T> d_o = drj * tc * o * (one - o);
            dcj = dcj + drj * o * (one - tc * tc) + d_o * load_or(w_co ? w_co + j : nullptr, n, T(0));
            store(d_o, dout + j, n);
            store(load(a + 3 * H + j, n) + d_o, a + 3 * H + j, n);
            store(load(a + 6 * H + j, n) + d_o * cj, a + 6 * H + j, n);
            if (phase == 1) {
              store(dcj, dcb + j, n);
              continue;
            }
          }
          if (clip > T(0)) dcj = Vec<T>::blendv(Vec<T>(T(0)), dcj, cj.abs() < Vec<T>(clip));
          const Vec<T> i = load(gi + j, n), f = load(gf + j, n), g = load(gg + j, n);
          const Vec<T> cpj = load(cp + j, n);
          const Vec<T> d_i = dcj * g * i * (one - i);
          const Vec<T> d_f = dcj * cpj * f * (one - f);
          const Vec<T> d_g = dcj * i * (one - g * g);
          const Vec<T> dcp = dcj * f + d_i * load_or(w_ci ? w_ci + j : nullptr, n, T(0)) +
                             d_f * load_or(w_cf ? w_cf + j : nullptr, n, T(0)) +
                             d_g * load_or(w_cc ? w_cc + j : nullptr, n, T(0));
          store(d_i, di + j, n);
          store(d_f, df + j, n);
          store(d_g, dg + j, n);
          store(dcp, dcb + j, n);
          store(load(a + j, n) + d_i, a + j, n);
          store(load(a + H + j, n) + d_f, a + H + j, n);
          store(load(a + 2 * H + j, n) + d_g, a + 2 * H + j, n);
          store(load(a + 4 * H + j, n) + d_i * cpj, a + 4 * H + j, n);
          store(load(a + 5 * H + j, n) + d_f * cpj, a + 5 * H + j, n);
          store(load(a + 7 * H + j, n) + d_g * cpj, a + 7 * H + j, n);
        }
      }
    }
  });
}

// ------------------------------------------------------------------------------- GEMM
// Per step we multiply small matrices; ATen's addmm costs several microseconds of dispatch
// and checks around the BLAS call, a large share of a step at small sizes. So we call the
// Fortran BLAS that libtorch exports (MKL's sgemm_/dgemm_ in the x86 wheels) directly, found
// at run time (torch_symbol), MKL's packed sgemm, or oneDNN's matmul: whichever measures fastest.
using sgemm_t = void (*)(const char*, const char*, const int*, const int*, const int*, const float*,
                         const float*, const int*, const float*, const int*, const float*, float*,
                         const int*);
using dgemm_t = void (*)(const char*, const char*, const int*, const int*, const int*, const double*,
                         const double*, const int*, const double*, const int*, const double*, double*,
                         const int*);

// A symbol of the process, else of the library that holds ATen's operators (libtorch_cpu),
// in case that library was loaded without RTLD_GLOBAL; nullptr when neither has it.
void* torch_symbol(const char* name) {
  if (void* p = dlsym(RTLD_DEFAULT, name)) return p;
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&at::_ops::mm::call), &info) != 0 && info.dli_fname != nullptr) {
    if (void* lib = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD)) {
      void* p = dlsym(lib, name);
      dlclose(lib);  // RTLD_NOLOAD took a reference; the library stays loaded
      return p;
    }
  }
  return nullptr;
}

template <typename T>
struct Blas;
template <>
struct Blas<float> {
  static sgemm_t fn() {
    static sgemm_t f = reinterpret_cast<sgemm_t>(torch_symbol("sgemm_"));
    return f;
  }
};
template <>
struct Blas<double> {
  static dgemm_t fn() {
    static dgemm_t f = reinterpret_cast<dgemm_t>(torch_symbol("dgemm_"));
    return f;
  }
};

// Row-major C (m x n) = beta * C + A (m x k, row stride lda) @ op(Bm), op(Bm) = Bm^T with Bm
// (n x k) when b_transposed, else Bm (k x n); Bm and C contiguous. Column-major BLAS sees
// C^T = op(Bm)^T A^T.
template <typename T>
void gemm(bool b_transposed, int64_t m, int64_t n, int64_t k, const T* A, int64_t lda, const T* Bm, T beta, T* C) {
  if (m == 0 || n == 0) return;
  auto f = Blas<T>::fn();
  if (f != nullptr && k > 0 && m < INT32_MAX && n < INT32_MAX && k < INT32_MAX && lda < INT32_MAX) {
    const int M = static_cast<int>(n), N = static_cast<int>(m), K = static_cast<int>(k);
    const int ldb_ = b_transposed ? K : M, lda_ = static_cast<int>(lda), ldc = M;
    const T one(1);
    f(b_transposed ? "T" : "N", "N", &M, &N, &K, &one, Bm, &ldb_, A, &lda_, &beta, C, &ldc);
    return;
  }
  auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  Tensor a = at::from_blob(const_cast<T*>(A), {m, k}, {lda, 1}, opts);
  Tensor b = b_transposed ? at::from_blob(const_cast<T*>(Bm), {n, k}, opts).t()
                          : at::from_blob(const_cast<T*>(Bm), {k, n}, opts);
  Tensor c = at::from_blob(C, {m, n}, opts);
  if (beta == T(0)) {
    at::mm_out(c, a, b);
  } else {
    c.addmm_(a, b);
  }
}

using pack_size_t = size_t (*)(int, int, int, int);
using pack_t = void (*)(int, int, int, int, int, int, float, const float*, int, float*);
using compute_t = void (*)(int, int, int, int, int, int, const float*, int, const float*, int, float, float*, int);
enum { kRowMajor = 101, kNoTrans = 111, kTrans = 112, kPacked = 151, kBMatrix = 162 };

struct MklPack {
  pack_size_t get_size = reinterpret_cast<pack_size_t>(torch_symbol("cblas_sgemm_pack_get_size"));
  pack_t pack = reinterpret_cast<pack_t>(torch_symbol("cblas_sgemm_pack"));
  compute_t compute = reinterpret_cast<compute_t>(torch_symbol("cblas_sgemm_compute"));
  bool ok() const { return get_size && pack && compute; }
  static const MklPack& get() {
    static const MklPack p;
    return p;
  }
};

// oneDNN's matmul as ATen exposes it (mkldnn::_linear_pointwise, with the weight reordered
// once per layer call by mkldnn::_reorder_linear_weight); float only.
struct OneDnn {
  std::optional<c10::OperatorHandle> linear, reorder;
  OneDnn() {
    if (!at::hasMKLDNN()) return;
    linear = c10::Dispatcher::singleton().findSchema({"mkldnn::_linear_pointwise", ""});
    reorder = c10::Dispatcher::singleton().findSchema({"mkldnn::_reorder_linear_weight", ""});
  }
  bool ok() const { return linear.has_value() && reorder.has_value(); }
  static const OneDnn& get() {
    static const OneDnn d;
    return d;
  }
  Tensor pack(const Tensor& w, int64_t m_max) const {  // w: (n, k)
    std::vector<c10::IValue> stack{w, c10::IValue(m_max)};
    reorder->callBoxed(&stack);
    return stack[0].toTensor();
  }
  Tensor run(const Tensor& a, const Tensor& w) const {
    std::vector<c10::IValue> stack{a, w, c10::IValue(), c10::IValue(std::string("none")),
                                   c10::IValue(c10::List<std::optional<c10::Scalar>>()), c10::IValue()};
    linear->callBoxed(&stack);
    return stack[0].toTensor();
  }
};

// GemmTN's k block: np panels x kc rows of V elements of B in about 24 KiB (half an L1), so
// that slice stays in L1 while the rows of A stream past it.
template <typename T>
constexpr int64_t l1_k_block(int64_t np) {
  return std::max<int64_t>(16, (24 * 1024) / (np * Vec<T>::size() * int64_t(sizeof(T))));
}
// VecGemm's k block: the rows of packed B (np panels of V columns) that one register block
// runs through before the next row block starts over: a quarter of one core's L2, so the
// slice stays in L2 beside A's rows and C (K up to 1024 in one block on a 1 MiB L2).
// Measured (AMD EPYC Zen 5, alternating processes, 3 rounds): against a 24 KiB L1 slice
// (k = 96), which sent the partial sums through C every 96 rows of k and paid the block's
// set-up each time, the article cell's S4 inference 135-138 -> 123-133 ms, the default S4's
// 76-78 -> 70-74 ms, the small sizes level. PEEPHOLE_LSTM_VEC_KC sets it in rows of k (tests).
template <typename T>
int64_t vec_k_block(int64_t np) {
  static const int64_t rows = [] {
    const char* env = std::getenv("PEEPHOLE_LSTM_VEC_KC");
    return env != nullptr ? int64_t(std::atol(env)) : int64_t(0);
  }();
  if (rows > 0) return rows;
  return std::max<int64_t>(16, l2_bytes() / 4 / (np * Vec<T>::size() * int64_t(sizeof(T))));
}

// Our own GEMM for the small per-step products: op(B) packed once per layer call into panels
// of V = Vec<T>::size() columns (Bp[panel][kk][0..V), zero past n), an MR x NP register block
// of V-wide accumulators (6 x 4 = 24 of AVX-512's 32 registers), threads over column panels
// with a grain that keeps small products on one thread. Each output element is one thread's
// dot product in k order, so results do not depend on the thread count.
template <typename T>
class VecGemm {
 public:
  static constexpr int64_t V = Vec<T>::size();
  static constexpr int64_t kNP = 4;  // panels per register block
  void pack(const T* Bm, bool bt, int64_t n, int64_t k) { pack2(Bm, bt, n, k, nullptr, 0, 0); }
  // Two right-hand matrices stacked along k: C = [A, A2] [op(Bm); op(B2)] with B2 (n2 x k2,
  // transposed) feeding only the first n2 columns (zero past them). The k rows of a panel
  // are Bm's k then B2's k2; groups of panels wholly past n2 skip B2's rows. The article
  // cell's step: h_{t-1} W_hh^T + c_{t-1} [W_ci; W_cf; W_cc]^T in one pass over the gates.
  void pack2(const T* Bm, bool bt, int64_t n, int64_t k, const T* B2, int64_t n2, int64_t k2) {
    n_ = n;
    k1_ = k;
    k_ = k + (B2 ? k2 : 0);
    panels_ = (n + V - 1) / V;
    panels2_ = B2 ? (n2 + V - 1) / V : 0;
    packed_ = pooled_empty({panels_ * k_ * V}, at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
    T* d = packed_.data_ptr<T>();
    // Every element written once (zero past n, and past n2 in B2's rows), a panel's k rows in
    // tiles of kTile (kTile x V values: 4 KiB in float) so that one column's strided writes
    // stay in L1 for the next column's. The weights are packed on every layer call: 8 MiB
    // for the article cell at H = 512, where a column's whole k at a time took 25% of a
    // one-step call (perf), against 14% now.
    constexpr int64_t kTile = 64;  // packed rows [0, k) come from Bm, [k, k_) from B2
    at::parallel_for(0, panels_, 1, [&](int64_t p_begin, int64_t p_end) {
      for (int64_t p = p_begin; p < p_end; ++p)
        for (int64_t k0 = 0; k0 < k_; k0 += kTile) {
          const int64_t k1 = std::min(k_, k0 + kTile), a1 = std::min(k1, k), b0 = std::max(k0, k);
          for (int64_t v = 0; v < V; ++v) {
            const int64_t col = p * V + v;
            T* dst = d + p * k_ * V + v;  // packed row kk of this column: dst[kk * V]
            if (col >= n) {
              for (int64_t kk = k0; kk < a1; ++kk) dst[kk * V] = T(0);
            } else if (bt) {
              const T* src = Bm + col * k;
              for (int64_t kk = k0; kk < a1; ++kk) dst[kk * V] = src[kk];
            } else {
              for (int64_t kk = k0; kk < a1; ++kk) dst[kk * V] = Bm[kk * n + col];
            }
            if (col < n2) {
              const T* src = B2 + col * k2;
              for (int64_t kk = b0; kk < k1; ++kk) dst[kk * V] = src[kk - k];
            } else {
              for (int64_t kk = b0; kk < k1; ++kk) dst[kk * V] = T(0);
            }
          }
        }
    });
  }
  // C = A op(B) (+ A2 op(B2) after pack2; A2's row stride lda2). Threads take runs of panel
  // groups of about equal multiply-adds: with two sources the groups past B2's columns have
  // k1_ rows, not k_, and an even split of the groups would leave one thread more work (the
  // article cell on 2 threads: 8 x 512 rows against 4 x 512 + 4 x 256). At least ~32k
  // multiply-adds per task: below that a thread hand-off costs more.
  void run(const T* A, int64_t m, int64_t lda, bool accumulate, T* C, const T* A2 = nullptr,
           int64_t lda2 = 0) const {
    const int64_t groups = (panels_ + kNP - 1) / kNP;
    const int64_t g2 = std::min(groups, (panels2_ + kNP - 1) / kNP);  // groups with k_ rows, then k1_
    const int64_t total = g2 * k_ + (groups - g2) * k1_;
    const int64_t tasks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), m * total * kNP * V >> 15));
    // task i starts at the first group whose rows before it reach i * total / tasks
    auto first = [&](int64_t i) {
      const int64_t x = i * total / tasks;
      return x <= g2 * k_ ? (x + k_ - 1) / k_ : g2 + (x - g2 * k_ + k1_ - 1) / k1_;
    };
    at::parallel_for(0, tasks, 1, [&](int64_t i0, int64_t i1) {
      for (int64_t g = first(i0); g < first(i1); ++g) {
        const int64_t p0 = g * kNP;
        panel_group(A, m, lda, A2, lda2, p0, std::min(kNP, panels_ - p0), accumulate, C);
      }
    });
  }
  bool two_sources() const { return k_ > k1_; }
  int64_t panels() const { return panels_; }

  // Panels [p_begin, p_end) only, on the calling thread (C = A op(B) in those columns).
  void run_panels(const T* A, int64_t m, int64_t lda, int64_t p_begin, int64_t p_end, T* C, const T* A2 = nullptr,
                  int64_t lda2 = 0, bool accumulate = false) const {
    for (int64_t p0 = p_begin; p0 < p_end; p0 += kNP)
      panel_group(A, m, lda, A2, lda2, p0, std::min(kNP, p_end - p0), accumulate, C);
  }

 private:
  // Up to kNP panels from p0, every row: k in blocks of kc (vec_k_block), so that the panels'
  // slice of packed B (kNP * kc * V) stays in L2 across all row blocks; the partial sums go through C
  // (the k order is unchanged). Packed rows [0, k1_) multiply A, rows [k1_, k_) A2 (only for
  // groups that reach into B2's n2 columns).
  void panel_group(const T* A, int64_t m, int64_t lda, const T* A2, int64_t lda2, int64_t p0, int64_t np,
                   bool accumulate, T* C) const {
    const int64_t kc = vec_k_block<T>(kNP);
    const int64_t k_end = p0 < panels2_ ? k_ : k1_;
    for (int src = 0; src < 2; ++src) {
      const int64_t kb = src ? k1_ : 0, ke = src ? k_end : k1_, koff = kb;
      const T* a = src ? A2 : A;
      const int64_t ld = src ? lda2 : lda;
      for (int64_t k0 = kb; k0 < ke; k0 += kc) {
        const int64_t k1 = std::min(ke, k0 + kc);
        const bool acc = accumulate || k0 > 0;
        int64_t r = 0;
        for (; r + 6 <= m; r += 6) block<6>(a, ld, koff, r, p0, np, k0, k1, acc, C);
        switch (m - r) {
          case 5: block<5>(a, ld, koff, r, p0, np, k0, k1, acc, C); break;
          case 4: block<4>(a, ld, koff, r, p0, np, k0, k1, acc, C); break;
          case 3: block<3>(a, ld, koff, r, p0, np, k0, k1, acc, C); break;
          case 2: block<2>(a, ld, koff, r, p0, np, k0, k1, acc, C); break;
          case 1: block<1>(a, ld, koff, r, p0, np, k0, k1, acc, C); break;
          default: break;
        }
      }
    }
  }
  template <int MR>
  void block(const T* A, int64_t lda, int64_t koff, int64_t r0, int64_t p0, int64_t np, int64_t k0, int64_t k1,
             bool accumulate, T* C) const {
    if (np == kNP) {
      kernel<MR, kNP>(A, lda, koff, r0, p0, k0, k1, accumulate, C);
    } else {
      for (int64_t p = p0; p < p0 + np; ++p) kernel<MR, 1>(A, lda, koff, r0, p, k0, k1, accumulate, C);
    }
  }
  // C rows r0.., panels p0.. (+)= A[:, k0 - koff .. k1 - koff) times packed rows [k0, k1).
  template <int MR, int NP>
  void kernel(const T* A, int64_t lda, int64_t koff, int64_t r0, int64_t p0, int64_t k0, int64_t k1,
              bool accumulate, T* C) const {
    Vec<T> acc[MR][NP];
    for (int r = 0; r < MR; ++r)
      for (int p = 0; p < NP; ++p) acc[r][p] = Vec<T>(T(0));
    const T* bp = packed_.data_ptr<T>() + p0 * k_ * V;
    const T* a = A + r0 * lda;
    for (int64_t kk = k0; kk < k1; ++kk) {
      Vec<T> b[NP];
      for (int p = 0; p < NP; ++p) b[p] = Vec<T>::loadu(bp + (p * k_ + kk) * V);
      for (int r = 0; r < MR; ++r) {
        const Vec<T> ar(a[r * lda + kk - koff]);
        for (int p = 0; p < NP; ++p) acc[r][p] = at::vec::fmadd(ar, b[p], acc[r][p]);
      }
    }
    for (int r = 0; r < MR; ++r) {
      T* c = C + (r0 + r) * n_;
      for (int p = 0; p < NP; ++p) {
        const int64_t col = (p0 + p) * V, w = std::min<int64_t>(V, n_ - col);
        Vec<T> v = acc[r][p];
        if (accumulate) v = v + load(c + col, w);
        store(v, c + col, w);
      }
    }
  }
  int64_t n_ = 0, k_ = 0, k1_ = 0, panels_ = 0, panels2_ = 0;
  Tensor packed_;
};

enum class Path { kBlas = 0, kPacked = 1, kOneDnn = 2, kVec = 3 };
const char* path_name(Path p) {
  switch (p) {
    case Path::kPacked: return "mkl-packed";
    case Path::kOneDnn: return "onednn";
    case Path::kVec: return "vec";
    default: return "blas";
  }
}

// Forward layer calls that ran h W_hh^T and the full peepholes on c_{t-1} as one GEMM (blas_info).
std::atomic<int64_t> g_merged_calls{0};
// Layer calls (forward, backward) whose step loop ran in one parallel region (blas_info).
std::atomic<int64_t> g_region_calls[2] = {0, 0};

// The one-region rule. Small steps (under the serial bound) with more than one thread can run
// the whole loop in one parallel region on our own GEMM: no fork/join per GEMM and element-wise
// kernel. Whether that beats the per-step loop on the GEMM path measured per call is measured
// too (region_wins, below): a per-call timing cannot see the fork/joins. On an Intel Xeon (2
// threads) it chose MKL's packed sgemm for S1's 32 x 200 x 50, and the per-step loop on it took
// 1.3-1.8x the one-region loop's time (article cell, S1 training 23-25 vs 14-17 ms, inference
// 8.1-8.7 vs 3.8-4.4 ms); but at B = 8, H = 256 (4 rows a thread, 1 MiB of W_hh each thread
// streams every step) the per-step loop on MKL was 1.2-1.4x faster (benchmarks/README.md). On
// the AMD EPYC the per-call timing chose our GEMM for every such shape anyway.

// The measured choice per (dtype, shape), once per process.
std::mutex g_choice_mutex;
// (element size, B transposed, m, n, k, lda, threads): a call in a one-thread window (a busy
// machine, LoopThreads) measures for one thread, apart from the parallel calls' choice.
std::map<std::tuple<int, bool, int64_t, int64_t, int64_t, int64_t, int>, Path> g_choice;

std::optional<Path> forced_path() {
  static const std::optional<Path> forced = []() -> std::optional<Path> {
    const char* env = std::getenv("PEEPHOLE_LSTM_GEMM");
    if (env == nullptr) return std::nullopt;
    const std::string v(env);
    if (v == "packed") return Path::kPacked;
    if (v == "blas") return Path::kBlas;
    if (v == "onednn") return Path::kOneDnn;
    if (v == "vec") return Path::kVec;
    TORCH_CHECK(v.empty() || v == "auto", "PEEPHOLE_LSTM_GEMM must be one of auto, packed, blas, onednn, vec; got '",
                v, "'");
    return std::nullopt;  // "auto": measure
  }();
  return forced;
}

// A right-hand matrix used at every step (W_hh, W_hr, the full peepholes): set up once per
// layer call for the path chosen for its shape. C (m x n) = A (m x k, row stride lda) @ op(Bm).
template <typename T>
class StepGemm {
 public:
  // B2 (n2 x k2, transposed), when given, is merged into the same pass if the path measured
  // for Bm's shape is our own GEMM (merged() says so): the caller then passes A2 with every
  // call and C gets A op(Bm) + [A2 B2^T, 0] (VecGemm::pack2).
  // region: the caller's loop runs in one parallel region if every step GEMM takes our own GEMM
  // (region_wins said so): take it without measuring, unless a path is forced.
  StepGemm(const T* Bm, bool b_transposed, int64_t n, int64_t k, int64_t m_max, int64_t lda = -1,
           const T* B2 = nullptr, int64_t n2 = 0, int64_t k2 = 0, bool region = false)
      : Bm_(Bm), bt_(b_transposed), n_(n), k_(k), lda_(lda < 0 ? k : lda) {
    if (m_max <= 0 || n <= 0 || k <= 0) return;
    path_ = region && !forced_path() ? Path::kVec : choose(m_max);
    if (B2 != nullptr && n2 > 0 && k2 > 0 && path_ == Path::kVec) {
      vec_.pack2(Bm_, bt_, n_, k_, B2, n2, k2);
      return;
    }
    setup(path_, m_max);
  }
  bool merged() const { return path_ == Path::kVec && vec_.two_sources(); }
  // C = A op(B) (accumulate: C += A op(B)); A has m rows (merged: + A2 B2^T, A2's row stride lda2).
  void operator()(const T* A, int64_t m, bool accumulate, T* C, const T* A2 = nullptr, int64_t lda2 = 0) const {
    if (m <= 0) return;
    if (path_ == Path::kVec) {
      vec_.run(A, m, lda_, accumulate, C, merged() ? A2 : nullptr, lda2);
      return;
    }
    if (path_ == Path::kOneDnn) {
      const Tensor y = onednn(A, m);
      const T* s = y.data_ptr<T>();
      const int64_t total = m * n_;
      if (accumulate) {
        at::parallel_for(0, total, 16384, [&](int64_t i0, int64_t i1) {
          for (int64_t i = i0; i < i1; ++i) C[i] += s[i];
        });
      } else {
        std::memcpy(C, s, sizeof(T) * total);
      }
      return;
    }
    raw(path_, A, m, accumulate ? T(1) : T(0), C);
  }
  // A op(B) without a copy where the path allows: the result lives in C or in hold.
  const T* view(const T* A, int64_t m, T* C, Tensor& hold, const T* A2 = nullptr, int64_t lda2 = 0) const {
    if (path_ == Path::kOneDnn && m > 0) {
      hold = onednn(A, m);
      return hold.data_ptr<T>();
    }
    (*this)(A, m, false, C, A2, lda2);
    return C;
  }
  Path path() const { return path_; }
  const VecGemm<T>& vec() const { return vec_; }

 private:
  Tensor onednn(const T* A, int64_t m) const {
    const Tensor a = at::from_blob(const_cast<T*>(A), {m, k_}, {lda_, 1}, at::TensorOptions().dtype(at::kFloat));
    return OneDnn::get().run(lda_ == k_ ? a : a.contiguous(), w_dnn_);
  }
  void raw(Path p, const T* A, int64_t m, T beta, T* C) const {
    if constexpr (std::is_same_v<T, float>) {
      if (p == Path::kPacked) {
        MklPack::get().compute(kRowMajor, kNoTrans, kPacked, int(m), int(n_), int(k_), A, int(lda_),
                               packed_.data_ptr<float>(), int(n_), beta, C, int(n_));
        return;
      }
    }
    gemm<T>(bt_, m, n_, k_, A, lda_, Bm_, beta, C);
  }
  void setup(Path p, int64_t m_max) {
    if (p == Path::kVec) {
      vec_.pack(Bm_, bt_, n_, k_);
      return;
    }
    if constexpr (std::is_same_v<T, float>) {
      if (p == Path::kPacked) {
        const auto& mkl = MklPack::get();
        const size_t bytes = mkl.get_size(kBMatrix, int(m_max), int(n_), int(k_));
        packed_ = at::empty({int64_t((bytes + sizeof(float) - 1) / sizeof(float))}, at::kFloat);
        mkl.pack(kRowMajor, kBMatrix, bt_ ? kTrans : kNoTrans, int(m_max), int(n_), int(k_), 1.0f, Bm_,
                 bt_ ? int(k_) : int(n_), packed_.data_ptr<float>());
      } else if (p == Path::kOneDnn) {
        Tensor w = at::from_blob(const_cast<T*>(Bm_), bt_ ? at::IntArrayRef{n_, k_} : at::IntArrayRef{k_, n_},
                                 at::TensorOptions().dtype(at::kFloat));
        w_dnn_ = OneDnn::get().pack(bt_ ? w : w.t().contiguous(), m_max);  // (n, k)
      }
    }
  }
  std::vector<Path> candidates(int64_t m_max) const {
    std::vector<Path> c{Path::kBlas, Path::kVec};
    if constexpr (std::is_same_v<T, float>) {
      if (MklPack::get().ok() && std::max({m_max, n_, k_, lda_}) < (int64_t(1) << 30)) c.push_back(Path::kPacked);
      if (OneDnn::get().ok()) c.push_back(Path::kOneDnn);
    }
    return c;
  }
  Path choose(int64_t m_max) {
    const auto cands = candidates(m_max);
    if (auto f = forced_path()) {
      if (std::find(cands.begin(), cands.end(), *f) != cands.end()) return *f;
      return Path::kBlas;
    }
    if (cands.size() == 1) return cands[0];
    const auto key = std::make_tuple(int(sizeof(T)), bt_, m_max, n_, k_, lda_, omp_get_max_threads());
    {
      std::lock_guard<std::mutex> lock(g_choice_mutex);
      auto it = g_choice.find(key);
      if (it != g_choice.end()) return it->second;
    }
    // Measure: the fastest of several calls of each candidate on scratch data of this shape,
    // the candidates interleaved round by round, so that a burst of load from elsewhere (a
    // shared VM) does not fall on one candidate alone; the first round warms up.
    const MeasuringTime measuring;
    const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
    const Tensor a = at::full({m_max, lda_}, T(0.5), opts);
    Tensor c = at::empty({m_max, n_}, opts);
    for (Path p : cands) setup(p, m_max);  // each path keeps its own packed weights
    std::vector<double> t_min(cands.size(), 1e30);
    for (int round = 0; round < 12; ++round) {
      for (size_t i = 0; i < cands.size(); ++i) {
        path_ = cands[i];
        const auto t0 = std::chrono::steady_clock::now();
        (*this)(a.data_ptr<T>(), m_max, false, c.data_ptr<T>());
        const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (round > 0) t_min[i] = std::min(t_min[i], dt);
      }
    }
    Path best = cands[0];
    double best_t = t_min[0];
    for (size_t i = 1; i < cands.size(); ++i) {
      if (t_min[i] < best_t) {
        best_t = t_min[i];
        best = cands[i];
      }
    }
    packed_ = Tensor();
    w_dnn_ = Tensor();
    vec_ = VecGemm<T>();
    std::lock_guard<std::mutex> lock(g_choice_mutex);
    g_choice.emplace(key, best);
    return best;
  }

  const T* Bm_;
  bool bt_;
  int64_t n_, k_, lda_;
  Path path_ = Path::kBlas;
  Tensor packed_, w_dnn_;
  VecGemm<T> vec_;
};

// The one-region rule's measurement (see g_region_calls), once per shape and process: kSteps
// steps of C (B x n) = A op(Bm) as the one-region loop runs them (one parallel region; each
// thread its own rows, in whole units of row_unit rows, or by columns its own panels and a
// barrier) against the per-step loop (the path measured for the shape on all B rows, then a
// parallel_for over the rows at the element-wise kernel's grain), interleaved, best of 6 rounds.
// Element-wise work is left out of both: it is the same in both.
std::mutex g_region_mutex;
std::map<std::tuple<int, bool, int64_t, int64_t, int64_t, int64_t, bool, int>, bool> g_region_choice;

template <typename T>
bool region_wins(const T* Bm, bool bt, int64_t n, int64_t k, int64_t B, int64_t H, bool by_rows,
                 int64_t row_unit) {
  if (auto f = forced_path()) return *f == Path::kVec;
  const int nt = omp_get_max_threads();
  const auto key = std::make_tuple(int(sizeof(T)), bt, n, k, B, H, by_rows, nt);
  {
    std::lock_guard<std::mutex> lock(g_region_mutex);
    auto it = g_region_choice.find(key);
    if (it != g_region_choice.end()) return it->second;
  }
  const MeasuringTime measuring;
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  const Tensor a_t = at::full({B, k}, T(0.5), opts);
  Tensor c_t = at::empty({B, n}, opts);
  const T* a = a_t.data_ptr<T>();
  T* c = c_t.data_ptr<T>();
  const StepGemm<T> own(Bm, bt, n, k, B, -1, nullptr, 0, 0, /*region=*/true);
  const StepGemm<T> measured(Bm, bt, n, k, B);
  constexpr int kSteps = 32;
  const int64_t grain = grain_rows(H), units = (B + row_unit - 1) / row_unit;
  const int64_t panels = (n + Vec<T>::size() - 1) / Vec<T>::size();
  double t_region = 1e30, t_loop = 1e30;
  for (int round = 0; round < 7; ++round) {
    auto t0 = std::chrono::steady_clock::now();
    _Pragma("omp parallel") {
      const int64_t nth = omp_get_num_threads(), th = omp_get_thread_num();
      const int64_t r0 = std::min(B, units * th / nth * row_unit), r1 = std::min(B, units * (th + 1) / nth * row_unit);
      const int64_t p0 = panels * th / nth, p1 = panels * (th + 1) / nth;
      for (int s = 0; s < kSteps; ++s) {
        if (by_rows) {
          if (r1 > r0) own(a + r0 * k, r1 - r0, false, c + r0 * n);
        } else {
          if (p1 > p0) own.vec().run_panels(a, B, k, p0, p1, c);
          _Pragma("omp barrier")
        }
      }
    }
    const double dt_region = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    t0 = std::chrono::steady_clock::now();
    for (int s = 0; s < kSteps; ++s) {
      measured(a, B, false, c);
      at::parallel_for(0, B, grain, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) c[i * n] += T(1);
      });
    }
    const double dt_loop = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (round > 0) {  // the first round warms up
      t_region = std::min(t_region, dt_region);
      t_loop = std::min(t_loop, dt_loop);
    }
  }
  const bool wins = t_region <= t_loop;
  std::lock_guard<std::mutex> lock(g_region_mutex);
  g_region_choice.emplace(key, wins);
  return wins;
}

// The weight gradients over all steps, C (m x n) = A^T B with A (k x m) and B (k x n) row-major
// (A's row stride lda: a column slice of the gate gradients), e.g. dW_hh = dG^T h_prev with
// k = T*B. Neither operand is packed: for a fixed kk the MR values of A a register block
// needs are adjacent, and so are B's V-wide pieces. MR x NP register block as VecGemm; k in
// blocks of kc so the block's slice of B stays in L1 while the thread walks its row blocks;
// threads over row blocks of C. Each element is one thread's sum in k order.
template <typename T>
class GemmTN {
 public:
  static constexpr int64_t V = Vec<T>::size();
  static constexpr int64_t kNP = 4;
  GemmTN(int64_t m, int64_t n, int64_t k, const T* A, int64_t lda, const T* B, T* C)
      : m_(m), n_(n), k_(k), lda_(lda), A_(A), B_(B), C_(C) {}
  void run() const {
    if (m_ <= 0 || n_ <= 0) return;
    if (k_ <= 0) {
      std::fill(C_, C_ + m_ * n_, T(0));
      return;
    }
    const int64_t row_blocks = (m_ + 5) / 6;
    const int64_t kc = l1_k_block<T>(kNP);
    const int64_t per_block = std::max<int64_t>(1, 6 * n_ * k_);
    const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 17) / per_block);
    at::parallel_for(0, row_blocks, grain, [&](int64_t rb0, int64_t rb1) {
      const int64_t r_begin = rb0 * 6, r_end = std::min(m_, rb1 * 6);
      for (int64_t k0 = 0; k0 < k_; k0 += kc) {
        const int64_t k1 = std::min(k_, k0 + kc);
        for (int64_t c0 = 0; c0 < n_; c0 += kNP * V) {
          const int64_t full = std::min<int64_t>(kNP, (n_ - c0) / V);  // whole V-wide pieces
          const int64_t tail = full < kNP ? std::min<int64_t>(V, n_ - c0 - full * V) : 0;  // then the rest
          // a tail of up to 4 columns by vectors along m (tail_cols), a wider one as one more panel
          const int64_t wide = tail > 4 ? tail : 0;
          if (full > 0 || wide > 0) {
            int64_t r = r_begin;
            for (; r + 6 <= r_end; r += 6) cols<6>(r, c0, full, wide, k0, k1);
            switch (r_end - r) {
              case 5: cols<5>(r, c0, full, wide, k0, k1); break;
              case 4: cols<4>(r, c0, full, wide, k0, k1); break;
              case 3: cols<3>(r, c0, full, wide, k0, k1); break;
              case 2: cols<2>(r, c0, full, wide, k0, k1); break;
              case 1: cols<1>(r, c0, full, wide, k0, k1); break;
              default: break;
            }
          }
          if (tail > 0 && wide == 0) tail_cols(r_begin, r_end, c0 + full * V, tail, k0, k1);
        }
      }
    });
  }

 private:
  // The whole panels (n = 50: three) in one register block of MR rows, then a partial panel
  // of `wide` columns (if any) on its own.
  template <int MR>
  void cols(int64_t r0, int64_t c0, int64_t full, int64_t wide, int64_t k0, int64_t k1) const {
    switch (full) {
      case 4: kernel<MR, 4, false>(r0, c0, V, k0, k1); break;
      case 3: kernel<MR, 3, false>(r0, c0, V, k0, k1); break;
      case 2: kernel<MR, 2, false>(r0, c0, V, k0, k1); break;
      case 1: kernel<MR, 1, false>(r0, c0, V, k0, k1); break;
      default: break;
    }
    if (wide > 0) kernel<MR, 1, true>(r0, c0 + full * V, wide, k0, k1);
  }
  // The last n mod V columns when at most 4 (n = 50: 2; n = 1) by vectors along m instead: A's row kk holds
  // consecutive rows r of C, so NV vectors of rows times NC broadcast values of B's row kk
  // make NV x NC independent accumulators (one V-wide panel of a few columns had MR = 6 chains
  // and a masked load per k: as slow as the three whole panels of n = 50 together).
  void tail_cols(int64_t r_begin, int64_t r_end, int64_t col, int64_t w, int64_t k0, int64_t k1) const {
    switch (w) {
      case 1: tail_rows<8, 1>(r_begin, r_end, col, k0, k1); break;
      case 2: tail_rows<6, 2>(r_begin, r_end, col, k0, k1); break;
      case 3: tail_rows<4, 3>(r_begin, r_end, col, k0, k1); break;
      default: tail_rows<4, 4>(r_begin, r_end, col, k0, k1); break;
    }
  }
  template <int NV, int NC>
  void tail_rows(int64_t r_begin, int64_t r_end, int64_t col, int64_t k0, int64_t k1) const {
    for (int64_t r0 = r_begin; r0 < r_end; r0 += NV * V) {
      const int64_t rows = std::min<int64_t>(NV * V, r_end - r0);
      Vec<T> acc[NV][NC];
      for (int v = 0; v < NV; ++v)
        for (int j = 0; j < NC; ++j) acc[v][j] = Vec<T>(T(0));
      for (int64_t kk = k0; kk < k1; ++kk) {
        const T* a_row = A_ + kk * lda_ + r0;
        const T* b_row = B_ + kk * n_ + col;
        Vec<T> a[NV];
        for (int v = 0; v < NV; ++v) a[v] = load(a_row + v * V, std::clamp<int64_t>(rows - v * V, 0, V));
        for (int j = 0; j < NC; ++j) {
          const Vec<T> bj(b_row[j]);
          for (int v = 0; v < NV; ++v) acc[v][j] = at::vec::fmadd(a[v], bj, acc[v][j]);
        }
      }
      T buf[V];
      for (int v = 0; v < NV && v * V < rows; ++v)
        for (int j = 0; j < NC; ++j) {
          acc[v][j].store(buf);
          for (int64_t i = 0; i < V && v * V + i < rows; ++i) {
            T& c = C_[(r0 + v * V + i) * n_ + col + j];
            c = k0 > 0 ? c + buf[i] : buf[i];
          }
        }
    }
  }
  // C rows r0.. (+)= A^T B in NP panels from col; PARTIAL (NP = 1): w_last < V columns.
  template <int MR, int NP, bool PARTIAL>
  void kernel(int64_t r0, int64_t col, int64_t w_last, int64_t k0, int64_t k1) const {
    Vec<T> acc[MR][NP];
    for (int r = 0; r < MR; ++r)
      for (int p = 0; p < NP; ++p) acc[r][p] = Vec<T>(T(0));
    for (int64_t kk = k0; kk < k1; ++kk) {
      const T* b_row = B_ + kk * n_ + col;
      const T* a_row = A_ + kk * lda_ + r0;
      Vec<T> b[NP];
      if constexpr (PARTIAL) {
        b[0] = Vec<T>::loadu(b_row, w_last);
      } else {
        for (int p = 0; p < NP; ++p) b[p] = Vec<T>::loadu(b_row + p * V);
      }
      for (int r = 0; r < MR; ++r) {
        const Vec<T> ar(a_row[r]);
        for (int p = 0; p < NP; ++p) acc[r][p] = at::vec::fmadd(ar, b[p], acc[r][p]);
      }
    }
    for (int r = 0; r < MR; ++r) {
      T* c = C_ + (r0 + r) * n_ + col;
      for (int p = 0; p < NP; ++p) {
        const int64_t w = PARTIAL ? w_last : V;
        Vec<T> v = acc[r][p];
        if (k0 > 0) v = v + load(c + p * V, w);
        store(v, c + p * V, w);
      }
    }
  }
  int64_t m_, n_, k_, lda_;
  const T* A_;
  const T* B_;
  T* C_;
};

// A^T B (a: (k, m), any row stride, unit column stride; b: (k, n) contiguous) -> (m, n). Per
// shape (k by power of two) the first call runs ATen's mm (MKL) and the second GemmTN, each
// timed on the real product; later calls take the faster (MKL's sgemm ran these at ~200
// GFLOP/s on an AMD EPYC where oneDNN reached ~430; oneDNN cannot take a transposed A
// without a copy). PEEPHOLE_LSTM_GEMM=vec forces GemmTN, blas/packed/onednn forces ATen's.
std::mutex g_tn_mutex;
std::map<std::tuple<int, int64_t, int64_t, int>, std::pair<double, double>> g_tn_time;  // (mm, own) s per k

Tensor mm_tn(const Tensor& a, const Tensor& b) {
  TORCH_INTERNAL_ASSERT(a.dim() == 2 && b.dim() == 2 && a.size(0) == b.size(0) && a.stride(1) == 1 &&
                        b.is_contiguous());
  const int64_t k = a.size(0), m = a.size(1), n = b.size(1);
  const bool is_float = a.scalar_type() == at::kFloat;
  const bool is_double = a.scalar_type() == at::kDouble;
  if (!(is_float || is_double) || m * n * k < (int64_t(1) << 18)) return a.t().mm(b);
  int use = -1;  // 0: ATen mm, 1: own, -1: measure
  if (auto f = forced_path()) use = (*f == Path::kVec) ? 1 : 0;
  int k_bits = 0;
  for (int64_t v = k; v > 0; v >>= 1) ++k_bits;
  const auto key = std::make_tuple(int(a.element_size()), m, n, k_bits);
  if (use < 0) {
    std::lock_guard<std::mutex> lock(g_tn_mutex);
    auto& t = g_tn_time[key];
    if (t.first == 0.0) {
      use = 0;
      t.first = -1.0;  // being measured
    } else if (t.second == 0.0 && t.first > 0.0) {
      use = 1;
      t.second = -1.0;
    } else if (t.first > 0.0 && t.second > 0.0) {
      use = t.second < t.first ? 1 : 0;
    } else {
      use = 0;  // another thread is measuring
    }
  }
  const auto t0 = std::chrono::steady_clock::now();
  Tensor c;
  if (use == 0) {
    c = a.t().mm(b);
  } else {
    c = at::empty({m, n}, b.options());
    AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "peephole_lstm_mm_tn", [&] {
      GemmTN<scalar_t>(m, n, k, a.data_ptr<scalar_t>(), a.stride(0), b.data_ptr<scalar_t>(), c.data_ptr<scalar_t>())
          .run();
    });
  }
  const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / double(k);
  std::lock_guard<std::mutex> lock(g_tn_mutex);
  auto& t = g_tn_time[key];
  if (use == 0 && t.first < 0.0) t.first = dt;
  if (use == 1 && t.second < 0.0) t.second = dt;
  return c;
}

// -------------------------------------------------------------------------- arguments
bool defined(const std::optional<Tensor>& w) { return w.has_value() && w->defined(); }

// The ops are public (torch.ops.peephole_lstm_cpp.*): check every shape the loops rely on.
// Returns whether the peepholes are full matrices.
// xw: (T, B, 4H) or packed (N, 4H); or, with w_ih, the layer input x (T, B, I) / (N, I) whose
// projection x W_ih^T the kernel forms itself (forward_x).
bool check_args(const Tensor& xw, const Tensor& h0, const Tensor& c0, const Tensor& w_hh,
                const std::optional<Tensor>& bias, const std::optional<Tensor>& w_hr,
                std::initializer_list<const std::optional<Tensor>*> peeps, const std::optional<Tensor>& batch_sizes,
                const Tensor* w_ih = nullptr) {
  const bool packed = defined(batch_sizes);
  TORCH_CHECK(xw.device().is_cpu(), "the C++ kernel runs on CPU tensors only");
  const int64_t G = w_ih ? w_ih->size(0) : xw.size(-1);
  if (w_ih) {
    TORCH_CHECK(w_ih->dim() == 2 && w_ih->size(0) % 4 == 0 && w_ih->size(1) == xw.size(-1),
                "w_ih must be (4H, ", xw.size(-1), "), got ", w_ih->sizes());
    TORCH_CHECK(w_ih->scalar_type() == xw.scalar_type(), "w_ih dtype differs from x's");
  }
  if (packed) {
    TORCH_CHECK(xw.dim() == 2 && G % 4 == 0, "packed xw must be (N, 4H), got ", xw.sizes());
    TORCH_CHECK(batch_sizes->dim() == 1 && batch_sizes->scalar_type() == at::kLong && batch_sizes->device().is_cpu(),
                "batch_sizes must be a 1-D int64 CPU tensor");
  } else {
    TORCH_CHECK(xw.dim() == 3 && G % 4 == 0, "xw must be (T, B, 4H), got ", xw.sizes());
  }
  const int64_t B = packed ? h0.size(0) : xw.size(1), H = G / 4;
  const bool proj = defined(w_hr);
  const int64_t P = proj ? w_hr->size(0) : H;
  TORCH_CHECK(h0.dim() == 2 && h0.size(0) == B && h0.size(1) == P, "h0 must be (", B, ", ", P, "), got ", h0.sizes());
  TORCH_CHECK(c0.dim() == 2 && c0.size(0) == B && c0.size(1) == H, "c0 must be (", B, ", ", H, "), got ", c0.sizes());
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == 4 * H && w_hh.size(1) == P, "w_hh must be (", 4 * H, ", ", P,
              "), got ", w_hh.sizes());
  if (proj) TORCH_CHECK(w_hr->dim() == 2 && w_hr->size(1) == H, "w_hr must be (P, ", H, "), got ", w_hr->sizes());
  if (defined(bias)) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == 4 * H, "bias must be (", 4 * H, ",), got ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == xw.scalar_type(), "bias dtype differs from xw's");
  }
  int64_t dim = 0;
  for (const auto* w : peeps) {
    if (!defined(*w)) continue;
    const int64_t d = (*w)->dim();
    TORCH_CHECK(dim == 0 || d == dim, "peepholes must all be vectors (H,) or all matrices (H, H)");
    dim = d;
    TORCH_CHECK((d == 1 && (*w)->size(0) == H) || (d == 2 && (*w)->size(0) == H && (*w)->size(1) == H),
                "peepholes must be (", H, ",) or (", H, ", ", H, "), got ", (*w)->sizes());
    TORCH_CHECK((*w)->scalar_type() == xw.scalar_type(), "peephole dtype differs from xw's");
  }
  for (const Tensor* t : {&h0, &c0, &w_hh}) {
    TORCH_CHECK(t->scalar_type() == xw.scalar_type(), "all tensors must have xw's dtype ", xw.scalar_type());
  }
  if (proj) TORCH_CHECK(w_hr->scalar_type() == xw.scalar_type(), "w_hr dtype differs from xw's");
  return dim == 2;
}

// Where each step's rows lie: n[t] rows from row off[t] (unpacked: n = B, off = t B).
struct Steps {
  int64_t T = 0, B = 0, N = 0;
  bool packed = false;
  std::vector<int64_t> n, off;
  Steps(const Tensor& xw, const Tensor& h0, const std::optional<Tensor>& batch_sizes) {
    packed = defined(batch_sizes);
    if (packed) {
      const Tensor bs = batch_sizes->contiguous();
      T = bs.size(0);
      B = h0.size(0);
      const int64_t* p = bs.data_ptr<int64_t>();
      int64_t acc = 0;
      for (int64_t t = 0; t < T; ++t) {
        TORCH_CHECK(p[t] > 0 && p[t] <= B && (t == 0 || p[t] <= p[t - 1]),
                    "batch_sizes must be positive, non-increasing and at most the batch size");
        n.push_back(p[t]);
        off.push_back(acc);
        acc += p[t];
      }
      N = acc;
      TORCH_CHECK(N == xw.size(0), "packed xw has ", xw.size(0), " rows, batch_sizes sum to ", N);
      TORCH_CHECK(T == 0 || n[0] == B, "batch_sizes[0] must equal the batch size ", B);
    } else {
      T = xw.size(0);
      B = xw.size(1);
      N = T * B;
      for (int64_t t = 0; t < T; ++t) {
        n.push_back(B);
        off.push_back(t * B);
      }
    }
  }
  // Rows of step t that step `other` also has (0 when there is no such step): with
  // batch_sizes non-increasing these are the first ones, carried between the two steps.
  int64_t carried(int64_t t, int64_t other) const { return other >= 0 && other < T ? std::min(n[t], n[other]) : 0; }
};

// The state each step started from, (N, D): rows of the step before it in processing order,
// rows that start there from init (B, D). seq (N, D) holds the states each step produced.
Tensor previous_states(const Tensor& seq, const Tensor& init, const Steps& st, bool reverse) {
  Tensor prev = at::empty_like(seq);
  const int64_t D = seq.size(-1);
  const int64_t bytes_row = D * seq.element_size();
  char* dst = static_cast<char*>(prev.data_ptr());
  const char* src = static_cast<const char*>(seq.data_ptr());
  const char* ini = static_cast<const char*>(init.data_ptr());
  for (int64_t t = 0; t < st.T; ++t) {
    const int64_t n = st.n[t];
    const int64_t t_prev = reverse ? t + 1 : t - 1;
    const int64_t n_from = st.carried(t, t_prev);  // rows carried over from t_prev
    if (n_from > 0) std::memcpy(dst + st.off[t] * bytes_row, src + st.off[t_prev] * bytes_row, n_from * bytes_row);
    if (n > n_from)
      std::memcpy(dst + (st.off[t] + n_from) * bytes_row, ini + n_from * bytes_row, (n - n_from) * bytes_row);
  }
  return prev;
}

// sum_t dA_t^T prev_t, prev_t = the states that fed step t (seq of the step before, or init):
// a weight gradient over all steps. Unpacked, the previous states are seq shifted by one step,
// so the product reads seq in place (no (N, D) copy); packed, through previous_states.
Tensor weight_grad_prev(const Tensor& dA, const Tensor& seq, const Tensor& init, const Steps& st, bool reverse) {
  if (st.packed || st.T < 2) return mm_tn(dA, previous_states(seq, init, st, reverse));
  const int64_t N = st.N, B = st.B;
  if (!reverse) return mm_tn(dA.slice(0, B, N), seq.slice(0, 0, N - B)).add_(mm_tn(dA.slice(0, 0, B), init));
  return mm_tn(dA.slice(0, 0, N - B), seq.slice(0, B, N)).add_(mm_tn(dA.slice(0, N - B, N), init));
}

std::optional<Tensor> contiguous_opt(const std::optional<Tensor>& w) {
  if (defined(w)) return w->contiguous();
  return std::nullopt;
}

// A layer's weights as both drivers read them: contiguous, absent ones nullopt; for full
// peepholes wc = [W_ci; W_cf; (W_cc)] (kc H, H), absent ones as zeros.
struct Weights {
  Tensor w_hh, wc;
  std::optional<Tensor> bias, w_hr, w_ci, w_cf, w_co, w_cc;
  bool full;
  int64_t kc = 0;
  Weights(const Tensor& hh, const std::optional<Tensor>& b, const std::optional<Tensor>& hr,
          const std::optional<Tensor>& ci, const std::optional<Tensor>& cf, const std::optional<Tensor>& co,
          const std::optional<Tensor>& cc, bool full_)
      : w_hh(hh.contiguous()),
        bias(contiguous_opt(b)),
        w_hr(contiguous_opt(hr)),
        w_ci(contiguous_opt(ci)),
        w_cf(contiguous_opt(cf)),
        w_co(contiguous_opt(co)),
        w_cc(contiguous_opt(cc)),
        full(full_) {
    if (full && (w_ci || w_cf || w_cc)) {
      const int64_t H = w_hh.size(0) / 4;
      const Tensor zero = at::zeros({H, H}, w_hh.options());
      std::vector<Tensor> parts{w_ci ? *w_ci : zero, w_cf ? *w_cf : zero};
      if (w_cc) parts.push_back(*w_cc);
      kc = int64_t(parts.size());
      wc = at::cat(parts, 0);  // (kc H, H)
    }
  }
  bool proj() const { return w_hr.has_value(); }
  // Elements of the matrices every step multiplies by (W_hh, the full peepholes): what each
  // thread reads per step when the one-region loop splits by rows (split_by_rows).
  int64_t step_weights() const {
    const int64_t H = w_hh.size(0) / 4;
    return w_hh.numel() + (kc + (full && w_co ? 1 : 0)) * H * H;
  }
};

// Their data pointers for scalar type T (nullptr where absent); the diagonal ones only.
template <typename T>
struct WeightPtrs {
  const T *hh, *b, *hr, *ci, *cf, *co, *cc, *wc, *wco;
  explicit WeightPtrs(const Weights& w)
      : hh(w.w_hh.data_ptr<T>()),
        b(ptr_or_null<T>(w.bias)),
        hr(ptr_or_null<T>(w.w_hr)),
        ci(w.full ? nullptr : ptr_or_null<T>(w.w_ci)),
        cf(w.full ? nullptr : ptr_or_null<T>(w.w_cf)),
        co(w.full ? nullptr : ptr_or_null<T>(w.w_co)),
        cc(w.full ? nullptr : ptr_or_null<T>(w.w_cc)),
        wc(w.kc > 0 ? w.wc.data_ptr<T>() : nullptr),
        wco(w.full ? ptr_or_null<T>(w.w_co) : nullptr) {}
};

// ---------------------------------------------------------------------------- drivers
// Returns (output, h_n (B,P), c_n (B,H), gates, cs): output (T,B,P) or packed (N,P); with
// save=false (no backward will follow) gates and cs come back empty and the step's gates
// and cell live in small buffers that stay in cache.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> recurrence_forward(
    const Tensor& xw_in, const Tensor& h0_in, const Tensor& c0_in, const Tensor& w_hh_in,
    const std::optional<Tensor>& bias_in, const std::optional<Tensor>& w_hr_in,
    const std::optional<Tensor>& w_ci_in, const std::optional<Tensor>& w_cf_in,
    const std::optional<Tensor>& w_co_in, const std::optional<Tensor>& w_cc_in,
    const std::optional<Tensor>& batch_sizes, bool reverse, bool save, double cell_clip,
    const Tensor* w_ih_in = nullptr) {
  const bool full = check_args(xw_in, h0_in, c0_in, w_hh_in, bias_in, w_hr_in,
                               {&w_ci_in, &w_cf_in, &w_co_in, &w_cc_in}, batch_sizes, w_ih_in);
  // With w_ih, xw_in is the layer input x: large steps project each step's rows into the gate
  // buffer just before the step's GEMM adds h_{t-1} W_hh^T to them (forward_x); small ones
  // (the one-region loop) project all steps first, as the caller does otherwise.
  Tensor xw = xw_in.contiguous();
  const Tensor w_ih = w_ih_in ? w_ih_in->contiguous() : Tensor();
  const Tensor h0 = h0_in.contiguous(), c0 = c0_in.contiguous();
  const Steps st(xw, h0, batch_sizes);
  const int64_t T = st.T, B = st.B, N = st.N, G = w_ih_in ? w_ih.size(0) : xw.size(-1), H = G / 4, P = h0.size(1);
  const int64_t I = w_ih_in ? w_ih.size(1) : 0;
  const Weights w(w_hh_in, bias_in, w_hr_in, w_ci_in, w_cf_in, w_co_in, w_cc_in, full);
  const bool proj = w.proj();
  const auto opt = xw.options();

  Tensor gates = save ? pooled_empty({N, G}, opt) : at::empty({B, G}, opt);
  Tensor cs = save ? pooled_empty({N, H}, opt) : at::empty({2, B, H}, opt);
  Tensor out = at::empty({N, P}, opt);
  Tensor r_buf = proj ? at::empty({B, H}, opt) : Tensor();
  Tensor pc_buf = w.kc > 0 ? at::empty({B, w.kc * H}, opt) : Tensor();
  Tensor po_buf = w.w_co && full ? at::empty({B, H}, opt) : Tensor();
  // packed: the running state of every sequence (a finished one keeps its last)
  Tensor h_state = st.packed ? h0.clone() : Tensor();
  Tensor c_state = st.packed ? c0.clone() : Tensor();
  Tensor c_n = at::empty({B, H}, opt);
  // per-step FLOPs: h W_hh^T, the full peephole and projection GEMMs, the element-wise work
  LoopThreads threads(2.0 * B * (P * G + w.kc * H * H + (w.w_co && full ? H * H : 0) + (proj ? H * P : 0)) +
                      20.0 * B * H);
  const bool x_per_step = w_ih.defined() && !save && !threads.small();  // see above
  if (w_ih.defined() && !x_per_step) xw = at::matmul(xw, w_ih.t());     // (T, B, 4H) / (N, 4H)

  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "peephole_lstm_forward", [&] {
    using T_ = scalar_t;
    const T_* x = xw.data_ptr<T_>();  // xw's rows, or x's (x_per_step)
    T_* g = gates.data_ptr<T_>();
    T_* c_all = cs.data_ptr<T_>();
    T_* h_all = out.data_ptr<T_>();
    const WeightPtrs<T_> p(w);
    T_* r = proj ? r_buf.data_ptr<T_>() : nullptr;
    T_* pc = w.kc > 0 ? pc_buf.data_ptr<T_>() : nullptr;
    T_* po = po_buf.defined() ? po_buf.data_ptr<T_>() : nullptr;
    const T_* h = st.packed ? h_state.data_ptr<T_>() : h0.data_ptr<T_>();
    const T_* c = st.packed ? c_state.data_ptr<T_>() : c0.data_ptr<T_>();
    // Small steps (S1, S3, the article cell at S3: 4.2 MFLOP), no projection: one parallel
    // region for the whole loop (see below) on our own GEMM, where that measures faster.
    constexpr int64_t V = Vec<T_>::size();
    const bool by_rows = split_by_rows(B, int64_t(sizeof(T_)) * w.step_weights());
    const bool region = threads.small() && !threads.serial() && (!st.packed || by_rows) && !proj && T > 0 &&
                        omp_get_max_threads() > 1 && fused_loop_enabled() && (by_rows || H % V == 0) &&
                        region_wins<T_>(p.hh, true, G, P, B, H, by_rows, 1);
    // h W_hh^T, on our own GEMM with c_{t-1} [W_ci; W_cf; W_cc]^T in the same pass (merged)
    const StepGemm<T_> hh(p.hh, /*b_transposed=*/true, G, P, B, -1, pc ? p.wc : nullptr, w.kc * H, H, region);
    const bool merged = hh.merged();
    if (merged) g_merged_calls.fetch_add(1, std::memory_order_relaxed);
    const StepGemm<T_> hr(p.hr, true, P, H, proj ? B : 0);  // r W_hr^T
    const StepGemm<T_> pcg(p.wc, true, w.kc * H, H, pc && !merged ? B : 0, -1, nullptr, 0, 0,
                           region);  // c_{t-1} [W_ci; W_cf; W_cc]^T
    if (merged) pc = nullptr;  // the peephole terms are in the gate pre-activations already
    const StepGemm<T_> pog(p.wco, true, H, H, po ? B : 0, -1, nullptr, 0, 0, region);  // c_t W_co^T
    const StepGemm<T_> xg(x_per_step ? w_ih.data_ptr<T_>() : nullptr, true, G, I, x_per_step ? B : 0);  // x_t W_ih^T
    Tensor hold;
    // The one region (see g_region_calls): one parallel region for the whole loop instead of a
    // fork/join for every GEMM and element-wise kernel. Split by rows (split_by_rows): each thread runs the recurrence of
    // its own rows (packed: those step t still has), no barrier. Split by columns (unpacked, H
    // a multiple of the vector width): each thread owns a block of hidden units, computes their four gate columns of
    // h_{t-1} W_hh^T (and of c_{t-1} [W_ci; W_cf; W_cc]^T) and their cell update, then waits at
    // one barrier per step (a full W_co adds one: it needs all of c_t).
    // PEEPHOLE_LSTM_FUSED_LOOP=0 turns the region off; a forced GEMM path other than vec too.
    const bool one_region = region && hh.path() == Path::kVec && (pc == nullptr || pcg.path() == Path::kVec) &&
                            (po == nullptr || pog.path() == Path::kVec);
    if (one_region) g_region_calls[0].fetch_add(1, std::memory_order_relaxed);
    // this step's gate, cell and output rows (c alternates between two rows of B in inference)
    auto step_rows = [&](int64_t s) {
      const int64_t t = reverse ? T - 1 - s : s;
      return std::make_tuple(t, save ? g + st.off[t] * G : g,
                             save ? c_all + st.off[t] * H : c_all + (s % 2) * B * H, h_all + st.off[t] * P);
    };
    // Step s on rows [r0, r0 + m) (all of step t's rows, or a thread's own), from those rows'
    // states h_p, c_p (advanced to the new ones; packed: the running state, updated in place).
    auto step = [&](int64_t s, int64_t r0, int64_t m, const T_*& h_p, const T_*& c_p, Tensor& hold_) {
      const auto [t, g_t, c_t, h_t] = step_rows(s);
      T_* g_r = g_t + r0 * G;  // (m, 4H)
      T_* c_r = c_t + r0 * H;
      T_* h_r = h_t + r0 * P;
      T_* r_r = proj ? r + r0 * H : h_r;  // o tanh(c_t), before the projection
      T_* pc_r = pc ? pc + r0 * w.kc * H : nullptr;
      T_* po_r = po ? po + r0 * H : nullptr;
      const T_* hw = g_r;
      if (x_per_step) {  // x_t W_ih^T into the gate rows, then h_{t-1} W_hh^T (+ c_{t-1} W_c^T) added
        xg(x + (st.off[t] + r0) * I, m, false, g_r);
        hh(h_p, m, true, g_r, c_p, H);
      } else {
        hw = hh.view(h_p, m, g_r, hold_, c_p, H);
      }
      if (pc_r) pcg(c_p, m, false, pc_r);
      forward_cell<T_>(x_per_step ? nullptr : x + (st.off[t] + r0) * G, p.b, hw, pc_r, w.kc, g_r, c_p, c_r, r_r,
                       p.ci, p.cf, p.co, p.cc, po != nullptr, T_(cell_clip), m, H);
      if (po_r) {
        pog(c_r, m, false, po_r);
        forward_out<T_>(g_r, po_r, c_r, r_r, m, H);
      }
      if (proj) hr(r_r, m, false, h_r);
      if (st.packed) {
        std::memcpy(h_state.data_ptr<T_>() + r0 * P, h_r, sizeof(T_) * m * P);
        std::memcpy(c_state.data_ptr<T_>() + r0 * H, c_r, sizeof(T_) * m * H);
      } else {
        h_p = h_r;
        c_p = c_r;
      }
    };
    if (one_region && by_rows) {
      // each thread its own rows, every step, no barrier (the GEMMs' parallel_for runs inline)
      _Pragma("omp parallel") {
        const int64_t nt = omp_get_num_threads(), tid = omp_get_thread_num();
        const int64_t r0 = B * tid / nt, m = B * (tid + 1) / nt - r0;
        const T_* h_l = h + r0 * P;
        const T_* c_l = c + r0 * H;
        Tensor hold_l;
        for (int64_t s = 0; s < T; ++s) {  // packed: the thread's rows that step t still has
          const int64_t m_t = std::min(m, st.n[reverse ? T - 1 - s : s] - r0);
          if (m_t > 0) step(s, r0, m_t, h_l, c_l, hold_l);
        }
      }
      const auto last = step_rows(T - 1);  // the states after the loop
      c = std::get<2>(last);
      h = std::get<3>(last);
    } else if (one_region) {
      const int64_t blocks = H / V;
      const T_* h_start = h;
      const T_* c_start = c;
      _Pragma("omp parallel") {
        const int64_t nt = omp_get_num_threads(), tid = omp_get_thread_num();
        const int64_t b0 = blocks * tid / nt, b1 = blocks * (tid + 1) / nt;
        const T_* h_l = h_start;
        const T_* c_l = c_start;
        for (int64_t s = 0; s < T; ++s) {
          const auto [t, g_t, c_t, h_t] = step_rows(s);
          if (b1 > b0) {
            for (int64_t q = 0; q < 4; ++q)
              hh.vec().run_panels(h_l, B, P, q * blocks + b0, q * blocks + b1, g_t, merged ? c_l : nullptr, H);
            for (int64_t q = 0; pc && q < w.kc; ++q)  // full peepholes on c_{t-1}
              pcg.vec().run_panels(c_l, B, H, q * blocks + b0, q * blocks + b1, pc);
            forward_cell<T_>(x + st.off[t] * G, p.b, g_t, pc, w.kc, g_t, c_l, c_t, h_t, p.ci, p.cf, p.co, p.cc,
                             po != nullptr, T_(cell_clip), B, H, b0 * V, b1 * V);
          }
          if (po) {  // a full W_co needs all of c_t: one more barrier
            _Pragma("omp barrier")
            if (b1 > b0) {
              pog.vec().run_panels(c_t, B, H, b0, b1, po);
              forward_out<T_>(g_t, po, c_t, h_t, B, H, b0 * V, b1 * V);
            }
          }
          _Pragma("omp barrier")  // _Pragma: this code is an argument of AT_DISPATCH_FLOATING_TYPES
          h_l = h_t;
          c_l = c_t;
        }
      }
      const auto last = step_rows(T - 1);  // the states after the loop
      c = std::get<2>(last);
      h = std::get<3>(last);
    }
    for (int64_t s = 0; s < (one_region ? 0 : T); ++s) step(s, 0, st.n[reverse ? T - 1 - s : s], h, c, hold);
    threads.done(T);
    if (T > 0 && !st.packed) std::copy(c, c + B * H, c_n.data_ptr<T_>());
  });
  if (!save) {
    gates = at::empty({0}, opt);
    cs = at::empty({0}, opt);
  }
  if (st.packed) return {out, h_state, c_state, gates, cs};
  const int64_t t_end = reverse ? 0 : T - 1;
  out = out.view({T, B, P});
  gates = save ? gates.view({T, B, G}) : gates;
  cs = save ? cs.view({T, B, H}) : cs;
  return {out, out.select(0, t_end).clone(), c_n, gates, cs};
}

// Returns (d_xw, d_h0, d_c0, d_w_hh, d_bias, d_w_hr, d_w_ci, d_w_cf, d_w_co, d_w_cc); absent
// weights get an empty tensor.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> recurrence_backward(
    const Tensor& grad_out, const Tensor& grad_hn, const Tensor& grad_cn, const Tensor& out, const Tensor& gates,
    const Tensor& cs, const Tensor& h0_in, const Tensor& c0_in, const Tensor& w_hh_in,
    const std::optional<Tensor>& bias_in, const std::optional<Tensor>& w_hr_in, const std::optional<Tensor>& w_ci_in,
    const std::optional<Tensor>& w_cf_in, const std::optional<Tensor>& w_co_in, const std::optional<Tensor>& w_cc_in,
    const std::optional<Tensor>& batch_sizes, bool reverse, double cell_clip) {
  const bool full = check_args(gates, h0_in, c0_in, w_hh_in, bias_in, w_hr_in, {&w_ci_in, &w_cf_in, &w_co_in, &w_cc_in},
                               batch_sizes);
  const Tensor h0 = h0_in.contiguous(), c0 = c0_in.contiguous();
  const Steps st(gates, h0, batch_sizes);
  const int64_t T = st.T, B = st.B, N = st.N, G = gates.size(-1), H = G / 4, P = h0.size(1);
  TORCH_CHECK(out.numel() == N * P && grad_out.sizes() == out.sizes() && out.size(-1) == P,
              "out and grad_out must be (T, B, P) or packed (N, P)");
  TORCH_CHECK(cs.numel() == N * H && cs.size(-1) == H, "cs must be (T, B, H) or packed (N, H)");
  TORCH_CHECK(grad_hn.sizes() == h0_in.sizes() && grad_cn.sizes() == c0_in.sizes(), "grad_hn/grad_cn shapes");
  const Weights w(w_hh_in, bias_in, w_hr_in, w_ci_in, w_cf_in, w_co_in, w_cc_in, full);
  const bool proj = w.proj();
  const auto opt = out.options();
  const Tensor g2 = gates.reshape({N, G}).contiguous(), cs2 = cs.reshape({N, H}).contiguous();
  const Tensor out2 = out.reshape({N, P}).contiguous();
  const Tensor ghn = grad_hn.contiguous(), gcn = grad_cn.contiguous();

  Tensor dgates = pooled_empty({N, G}, opt);
  // dH: the gradient w.r.t. each step's h; starts as grad_out, each step adds dG_{t+1} W_hh.
  Tensor dH = pooled_empty({N, P}, opt);
  dH.copy_(grad_out.reshape({N, P}));
  Tensor dc = at::zeros({B, H}, opt);
  Tensor dr_buf = proj ? at::empty({B, H}, opt) : Tensor();
  Tensor dh0 = at::zeros({B, P}, opt);
  const int64_t chunk_rows = std::min<int64_t>(kChunkRows, grain_rows(H));
  const int64_t chunks = std::max<int64_t>(1, (B + chunk_rows - 1) / chunk_rows);
  Tensor acc = at::zeros({chunks, kAcc * H}, opt);  // see backward_cell

  // The step loop (see LoopThreads); a one-thread call keeps one thread for the GEMMs over all
  // steps after it too.
  LoopThreads threads(2.0 * B * (P * G + w.kc * H * H + (w.w_co ? H * H : 0) + (proj ? H * P : 0)) +
                      30.0 * B * H);
  {
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "peephole_lstm_backward", [&] {
    using T_ = scalar_t;
    const T_* g = g2.data_ptr<T_>();
    const T_* c_all = cs2.data_ptr<T_>();
    T_* dg = dgates.data_ptr<T_>();
    T_* dh_all = dH.data_ptr<T_>();
    T_* dcp = dc.data_ptr<T_>();
    T_* dh0p = dh0.data_ptr<T_>();
    const T_* c0p = c0.data_ptr<T_>();
    const WeightPtrs<T_> p(w);
    T_* dr_b = proj ? dr_buf.data_ptr<T_>() : nullptr;
    T_* a = acc.data_ptr<T_>();
    // Small steps, no projection: as the forward's one region split by rows (split_by_rows,
    // g_region_calls), each thread runs the backward recurrence of its own rows (whole chunks of
    // the accumulators, so the sums are the same as on one thread) with no barrier.
    const bool region = threads.small() && !threads.serial() && !proj && T > 0 && omp_get_max_threads() > 1 &&
                        fused_loop_enabled() && chunks >= omp_get_max_threads() &&
                        split_by_rows(B, int64_t(sizeof(T_)) * w.step_weights()) &&
                        region_wins<T_>(p.hh, false, P, G, B, H, true, chunk_rows);
    const StepGemm<T_> dhh(p.hh, /*b_transposed=*/false, P, G, B, -1, nullptr, 0, 0, region);  // dG W_hh
    const StepGemm<T_> dhr(p.hr, false, H, P, proj ? B : 0);                                   // dh W_hr
    const StepGemm<T_> dpc(p.wc, false, H, w.kc * H, p.wc ? B : 0, G, nullptr, 0, 0,
                           region);                                                          // dG_{i,f,g} [W_ci; W_cf; W_cc]
    const StepGemm<T_> dpo(p.wco, false, H, H, p.wco ? B : 0, G, nullptr, 0, 0, region);  // d_o W_co
    const bool one_region = region && dhh.path() == Path::kVec && (!p.wc || dpc.path() == Path::kVec) &&
                            (!p.wco || dpo.path() == Path::kVec);
    if (one_region) g_region_calls[1].fetch_add(1, std::memory_order_relaxed);
    // Step s on rows [r0, r1) of step t's n_t (all of them, or a thread's own: whole accumulator
    // chunks); dc rows and dH rows are the rows' own.
    auto step = [&](int64_t s, int64_t r0, int64_t r1) {
      const int64_t t = reverse ? T - 1 - s : s;
      const int64_t t_prev = reverse ? t + 1 : t - 1;  // the step that fed this one
      const int64_t t_next = reverse ? t - 1 : t + 1;  // the step this one fed
      r1 = std::min(r1, st.n[t]);
      if (r1 <= r0) return;
      const int64_t m = r1 - r0;
      T_* dh_t = dh_all + st.off[t] * P;
      // rows whose last step this is: their h_n / c_n gradients enter here
      for (int64_t b = std::max(r0, st.carried(t, t_next)); b < r1; ++b) {
        for (int64_t j = 0; j < P; ++j) dh_t[b * P + j] += ghn.data_ptr<T_>()[b * P + j];
        std::memcpy(dcp + b * H, gcn.data_ptr<T_>() + b * H, sizeof(T_) * H);
      }
      const T_* dr = dh_t + r0 * P;  // (m, H) rows of dL/dr, r = o tanh(c_t)
      if (proj) {
        dhr(dh_t + r0 * P, m, false, dr_b + r0 * H);  // dr = dh W_hr
        dr = dr_b + r0 * H;
      }
      T_* dg_r = dg + (st.off[t] + r0) * G;  // (m, 4H)
      T_* dc_r = dcp + r0 * H;
      const T_* g_r = g + (st.off[t] + r0) * G;
      const T_* c_r = c_all + (st.off[t] + r0) * H;
      // c_{t-1}: rows carried over from t_prev, the others start from c0
      const int64_t n_from = std::clamp(st.carried(t, t_prev), r0, r1);
      auto cell = [&](int phase) {
        const T_* c_from = n_from > r0 ? c_all + (st.off[t_prev] + r0) * H : nullptr;
        for (auto [b0, b1, cp] : {std::make_tuple(r0, n_from, c_from), std::make_tuple(n_from, r1, c0p + n_from * H)}) {
          if (b1 <= b0) continue;
          backward_cell<T_>(g_r + (b0 - r0) * G, c_r + (b0 - r0) * H, cp, dr + (b0 - r0) * H, dc_r + (b0 - r0) * H,
                            dg_r + (b0 - r0) * G, p.ci, p.cf, p.co, p.cc, phase, T_(cell_clip), b1 - b0, H, chunk_rows,
                            a, b0);
        }
      };
      if (p.wco) {
        cell(1);
        dpo(dg_r + 3 * H, m, true, dc_r);  // dc += d_o W_co
        cell(2);
      } else {
        cell(0);
      }
      if (p.wc) dpc(dg_r, m, true, dc_r);  // dc_{t-1} += dG_{i,f,g} [W_ci; W_cf; W_cc]
      // dh_{t-1} += dG W_hh for the rows carried over; the others' h_{t-1} was h0
      if (n_from > r0) dhh(dg_r, n_from - r0, true, dh_all + st.off[t_prev] * P + r0 * P);
      if (r1 > n_from) dhh(dg_r + (n_from - r0) * G, r1 - n_from, false, dh0p + n_from * P);
    };
    if (one_region) {
      // each thread its own rows (whole chunks), every step, no barrier
      _Pragma("omp parallel") {
        const int64_t nt = omp_get_num_threads(), tid = omp_get_thread_num();
        const int64_t k0 = chunks * tid / nt, k1 = chunks * (tid + 1) / nt;
        const int64_t r0 = std::min(B, k0 * chunk_rows), r1 = std::min(B, k1 * chunk_rows);
        for (int64_t s = T - 1; s >= 0; --s) step(s, r0, r1);
      }
    } else {
      for (int64_t s = T - 1; s >= 0; --s) step(s, 0, B);
    }
    threads.done(T);
  });
  }

  // dW_hh = sum_t dG_t^T h_{t-1}: one GEMM over all steps.
  Tensor dw_hh = weight_grad_prev(dgates, out2, h0, st, reverse);  // (4H, P)
  const Tensor sums = acc.sum(0);        // (8H)
  // An absent weight's grad is empty; the outputs of an op may not alias each other.
  auto empty = [&] { return at::empty({0}, opt); };
  Tensor d_bias = empty(), dw_hr = empty(), dw_ci = empty(), dw_cf = empty(), dw_co = empty(), dw_cc = empty();
  if (w.bias) d_bias = sums.slice(0, 0, 4 * H).clone();
  if (proj) {
    Tensor r_all = g2.slice(1, 3 * H, 4 * H) * cs2.tanh();  // (N, H)
    dw_hr = mm_tn(dH, r_all);
  }
  if (full) {
    if (w.w_ci) dw_ci = weight_grad_prev(dgates.slice(1, 0, H), cs2, c0, st, reverse);
    if (w.w_cf) dw_cf = weight_grad_prev(dgates.slice(1, H, 2 * H), cs2, c0, st, reverse);
    if (w.w_cc) dw_cc = weight_grad_prev(dgates.slice(1, 2 * H, 3 * H), cs2, c0, st, reverse);
    if (w.w_co) dw_co = mm_tn(dgates.slice(1, 3 * H, 4 * H), cs2);
  } else {
    if (w.w_ci) dw_ci = sums.slice(0, 4 * H, 5 * H).clone();
    if (w.w_cf) dw_cf = sums.slice(0, 5 * H, 6 * H).clone();
    if (w.w_co) dw_co = sums.slice(0, 6 * H, 7 * H).clone();
    if (w.w_cc) dw_cc = sums.slice(0, 7 * H, 8 * H).clone();
  }
  if (!st.packed) dgates = dgates.view({T, B, G});
  return {dgates, dh0, dc, dw_hh, d_bias, dw_hr, dw_ci, dw_cf, dw_co, dw_cc};
}

// Which GEMM paths the kernel can take and which it chose so far, per shape (m x k x n).
std::string blas_info() {
  std::ostringstream s;
  s << "candidates: blas" << (Blas<float>::fn() ? "" : "(aten)") << ", vec";
  if (MklPack::get().ok()) s << ", mkl-packed";
  if (OneDnn::get().ok()) s << ", onednn";
  if (auto f = forced_path()) s << "; forced: " << path_name(*f);
  s << "; chosen:";
  std::lock_guard<std::mutex> lock(g_choice_mutex);
  for (const auto& [key, path] : g_choice) {
    s << " " << std::get<2>(key) << "x" << std::get<4>(key) << "x" << std::get<3>(key)
      << (std::get<0>(key) == 8 ? "(f64)" : "") << (std::get<6>(key) == 1 && omp_get_max_threads() > 1 ? "(1 thread)" : "")
      << "=" << path_name(path) << ";";
  }
  s << " layer calls with h W_hh^T and c W_c^T in one GEMM: " << g_merged_calls.load() << ";";
  s << " layer calls in one parallel region on vec (forward, backward): " << g_region_calls[0].load() << ", "
    << g_region_calls[1].load() << ";";
  s << " small-step calls found stalled (two in a row: the next ones on one thread): " << g_stalls.load() << ";";
  {
    std::lock_guard<std::mutex> lock_r(g_region_mutex);
    s << " one region vs per-step loop (B x n x k, rows/cols):";
    for (const auto& [key, wins] : g_region_choice) {
      s << " " << std::get<4>(key) << "x" << std::get<2>(key) << "x" << std::get<3>(key)
        << (std::get<0>(key) == 8 ? "(f64)" : "") << (std::get<6>(key) ? "/rows" : "/cols") << "="
        << (wins ? "region" : "loop") << ";";
    }
  }
  std::lock_guard<std::mutex> lock_tn(g_tn_mutex);
  s << " weight grads A^T B (m x n, k ~ 2^bits):";
  for (const auto& [key, t] : g_tn_time) {
    s << " " << std::get<1>(key) << "x" << std::get<2>(key) << "x2^" << std::get<3>(key)
      << (std::get<0>(key) == 8 ? "(f64)" : "") << "="
      << (t.first > 0.0 && t.second > 0.0 ? (t.second < t.first ? "vec" : "blas") : "measuring") << ";";
  }
  return s.str();
}

}  // namespace

TORCH_LIBRARY(peephole_lstm_cpp, m) {
  m.def("blas_info() -> str", &blas_info);
  m.def(
      "forward(Tensor xw, Tensor h0, Tensor c0, Tensor w_hh, Tensor? bias, Tensor? w_hr, Tensor? w_ci, "
      "Tensor? w_cf, Tensor? w_co, Tensor? w_cc, Tensor? batch_sizes, bool reverse, bool save, "
      "float cell_clip=0.) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // inference only (no saved activations, no autograd): the layer input x (T, B, I) or packed
  // (N, I) and W_ih instead of xw; large steps project each step's rows in the loop
  m.def(
      "forward_x(Tensor x, Tensor w_ih, Tensor h0, Tensor c0, Tensor w_hh, Tensor? bias, Tensor? w_hr, "
      "Tensor? w_ci, Tensor? w_cf, Tensor? w_co, Tensor? w_cc, Tensor? batch_sizes, bool reverse, "
      "float cell_clip=0.) -> (Tensor, Tensor, Tensor)");
  m.def(
      "backward(Tensor grad_out, Tensor grad_hn, Tensor grad_cn, Tensor out, Tensor gates, "
      "Tensor cs, Tensor h0, Tensor c0, Tensor w_hh, Tensor? bias, Tensor? w_hr, Tensor? w_ci, "
      "Tensor? w_cf, Tensor? w_co, Tensor? w_cc, Tensor? batch_sizes, bool reverse, float cell_clip=0.) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("mm_tn(Tensor a, Tensor b) -> Tensor");  // a^T b: the input projection's weight gradient
  m.def("release_pool() -> int", [] { return BufferPool::get().release(); });  // bytes freed
  m.def("pool_bytes() -> int", [] { return BufferPool::get().cached(); });  // bytes kept free
}

TORCH_LIBRARY_IMPL(peephole_lstm_cpp, CPU, m) {
  m.impl("forward", [](const Tensor& xw, const Tensor& h0, const Tensor& c0, const Tensor& w_hh,
                       const std::optional<Tensor>& bias, const std::optional<Tensor>& w_hr,
                       const std::optional<Tensor>& w_ci, const std::optional<Tensor>& w_cf,
                       const std::optional<Tensor>& w_co, const std::optional<Tensor>& w_cc,
                       const std::optional<Tensor>& batch_sizes, bool reverse, bool save, double cell_clip) {
    return recurrence_forward(xw, h0, c0, w_hh, bias, w_hr, w_ci, w_cf, w_co, w_cc, batch_sizes, reverse, save,
                              cell_clip);
  });
  m.impl("forward_x", [](const Tensor& x, const Tensor& w_ih, const Tensor& h0, const Tensor& c0,
                         const Tensor& w_hh, const std::optional<Tensor>& bias, const std::optional<Tensor>& w_hr,
                         const std::optional<Tensor>& w_ci, const std::optional<Tensor>& w_cf,
                         const std::optional<Tensor>& w_co, const std::optional<Tensor>& w_cc,
                         const std::optional<Tensor>& batch_sizes, bool reverse, double cell_clip) {
    auto [out, h_n, c_n, gates, cs] = recurrence_forward(x, h0, c0, w_hh, bias, w_hr, w_ci, w_cf, w_co, w_cc,
                                                         batch_sizes, reverse, /*save=*/false, cell_clip, &w_ih);
    return std::make_tuple(out, h_n, c_n);
  });
  m.impl("backward", &recurrence_backward);
  m.impl("mm_tn", [](const Tensor& a, const Tensor& b) {
    TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && a.size(0) == b.size(0), "mm_tn: a (k, m) and b (k, n), got ",
                a.sizes(), " and ", b.sizes());
    TORCH_CHECK(a.scalar_type() == b.scalar_type(), "mm_tn: dtypes differ");
    return mm_tn(a.stride(1) == 1 ? a : a.contiguous(), b.contiguous());
  });
}
