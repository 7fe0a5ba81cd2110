// autotune.h: per-shape choice of the GEMM path (measured once per shape and process), the one-region
// rule's measurement, and the weight gradients' A^T B choice. StepGemm: C (m x n) = A (m x k, row
// stride lda) @ op(Bm), Bm (n x k) transposed or (k x n); mm_tn: a (k, m)^T b (k, n) -> (m, n).
// Included once, by ops.cpp (one translation unit; see there).
#pragma once

namespace {

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
  const int forced = knobs().gemm.load(std::memory_order_relaxed);
  if (forced < 0) return std::nullopt;  // measure
  return Path(forced);
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

// A^T B (a: (k, m), any row stride, unit column stride; b: (k, n) contiguous) -> (m, n). Per
// shape (k by power of two) the first call runs ATen's mm (MKL) and the second GemmTN, each
// timed on the real product; later calls take the faster (MKL's sgemm ran these at ~200
// GFLOP/s on an AMD EPYC where oneDNN reached ~430; oneDNN cannot take a transposed A
// without a copy). PEEPHOLE_LSTM_GEMM=vec forces GemmTN, blas/packed/onednn forces ATen's.
std::mutex g_tn_mutex;
std::map<std::tuple<int, int64_t, int64_t, int>, std::pair<double, double>> g_tn_time;  // (mm, own) s per k

// Forget every per-shape measurement above and the blas_info counts: the next call of each shape
// measures again, as in a new process (tests that force knobs run in-process).
void reset_measurements() {
  {
    std::lock_guard<std::mutex> lock(g_choice_mutex);
    g_choice.clear();
  }
  {
    std::lock_guard<std::mutex> lock(g_region_mutex);
    g_region_choice.clear();
  }
  {
    std::lock_guard<std::mutex> lock(g_tn_mutex);
    g_tn_time.clear();
  }
  g_merged_calls = 0;
  g_region_calls[0] = 0;
  g_region_calls[1] = 0;
}

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

}  // namespace
