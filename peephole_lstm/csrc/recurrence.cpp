// Fused peephole-LSTM recurrence for CPU: the time loop and its backward (BPTT) in C++.
//
// The input projection x @ W_ih^T (+ biases) for all steps is one GEMM done by the caller;
// here each step is one GEMM (h @ W_hh^T) plus one fused element-wise kernel for the
// gates, the diagonal peepholes, the cell and the output. The backward walks the steps in
// reverse, then forms dW_hh (and dW_hr, the peephole grads) with one GEMM/reduction each.
// Built on first use by peephole_lstm/_fused.py (torch.utils.cpp_extension, no fast-math),
// registered as torch.ops.peephole_lstm_cpp.{forward,backward}; the public op with its
// autograd formula and fake kernel is peephole_lstm::recurrence (Python, torch.library).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <dlfcn.h>

#include <algorithm>
#include <cstdlib>
#include <cmath>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>

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

// at::vec::Vectorized is AVX2 (SLEEF exp/tanh, the kernels ATen itself uses) when the
// build passes -DCPU_CAPABILITY_AVX2 (done when the CPU has it), else portable scalar code.
template <typename T>
using Vec = at::vec::Vectorized<T>;

template <typename T>
inline Vec<T> sigmoid(const Vec<T>& x) {
  return (Vec<T>(T(1)) + x.neg().exp()).reciprocal();  // as ATen's sigmoid kernel
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
  const V big = V(1.f) - V(2.f) / (V(1.f) + (ax + ax).exp());
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

// xw: (B, 4H) the input projection; gates: (B, 4H) h_{t-1} W_hh^T in, activations
// [i, f, g, o] out. Absent peepholes are loaded as 0, which adds exactly nothing.
template <typename T>
void forward_cell(const T* xw, const T* bias, T* gates, const T* c_prev, T* c, T* r, const T* w_ci,
                  const T* w_cf, const T* w_co, int64_t B, int64_t H) {
  const T* bi = bias;
  const T* bf = bias ? bias + H : nullptr;
  const T* bg = bias ? bias + 2 * H : nullptr;
  const T* bo = bias ? bias + 3 * H : nullptr;
  constexpr int64_t W = Vec<T>::size();
  at::parallel_for(0, B, grain_rows(H), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      T* gi = gates + b * 4 * H;
      T* gf = gi + H;
      T* gg = gf + H;
      T* go = gg + H;
      const T* xi = xw + b * 4 * H;
      const T* xf = xi + H;
      const T* xg = xf + H;
      const T* xo = xg + H;
      const T* cp = c_prev + b * H;
      T* cb = c + b * H;
      T* rb = r + b * H;
      for (int64_t j = 0; j < H; j += W) {
        const int64_t n = std::min<int64_t>(W, H - j);
        const Vec<T> cpj = load(cp + j, n);
        const Vec<T> i = sigmoid(load(xi + j, n) + load_or(bi ? bi + j : nullptr, n, T(0)) + load(gi + j, n) +
                                 load_or(w_ci ? w_ci + j : nullptr, n, T(0)) * cpj);
        const Vec<T> f = sigmoid(load(xf + j, n) + load_or(bf ? bf + j : nullptr, n, T(0)) + load(gf + j, n) +
                                 load_or(w_cf ? w_cf + j : nullptr, n, T(0)) * cpj);
        const Vec<T> g = tanh(load(xg + j, n) + load_or(bg ? bg + j : nullptr, n, T(0)) + load(gg + j, n));
        const Vec<T> cj = f * cpj + i * g;
        // the output gate sees the new cell state
        const Vec<T> o = sigmoid(load(xo + j, n) + load_or(bo ? bo + j : nullptr, n, T(0)) + load(go + j, n) +
                                 load_or(w_co ? w_co + j : nullptr, n, T(0)) * cj);
        store(i, gi + j, n);
        store(f, gf + j, n);
        store(g, gg + j, n);
        store(o, go + j, n);
        store(cj, cb + j, n);
        store(o * tanh(cj), rb + j, n);
      }
    }
  });
}

// dc: (B, H) gradient w.r.t. c_t in, w.r.t. c_{t-1} out. dgates: (B, 4H) pre-activation grads.
// acc: (chunks, 7H) running sums over rows and steps of [dgates (the bias grad, 4H),
// d_i c_prev, d_f c_prev, d_o c (the peephole grads, 3 x H)]; the rows are split into fixed
// chunks of chunk_rows (not per thread), so the sums do not depend on the thread count.
template <typename T>
void backward_cell(const T* gates, const T* c, const T* c_prev, const T* dr, T* dc,
                   T* dgates, const T* w_ci, const T* w_cf, const T* w_co, int64_t B,
                   int64_t H, int64_t chunk_rows, T* acc) {
  constexpr int64_t W = Vec<T>::size();
  const Vec<T> one(T(1));
  const int64_t chunks = (B + chunk_rows - 1) / chunk_rows;
  at::parallel_for(0, chunks, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      T* a = acc + k * 7 * H;
      for (int64_t b = k * chunk_rows; b < std::min(B, (k + 1) * chunk_rows); ++b) {
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
          const Vec<T> i = load(gi + j, n), f = load(gf + j, n);
          const Vec<T> g = load(gg + j, n), o = load(go + j, n);
          const Vec<T> cj = load(cb + j, n), cpj = load(cp + j, n);
          const Vec<T> tc = tanh(cj);
          const Vec<T> drj = load(drb + j, n);
          const Vec<T> d_o = drj * tc * o * (one - o);
          const Vec<T> dcj = load(dcb + j, n) + drj * o * (one - tc * tc) +
                             d_o * load_or(w_co ? w_co + j : nullptr, n, T(0));
          const Vec<T> d_i = dcj * g * i * (one - i);
          const Vec<T> d_f = dcj * cpj * f * (one - f);
          const Vec<T> d_g = dcj * i * (one - g * g);
          const Vec<T> dcp = dcj * f + d_i * load_or(w_ci ? w_ci + j : nullptr, n, T(0)) +
                             d_f * load_or(w_cf ? w_cf + j : nullptr, n, T(0));
          store(d_i, di + j, n);
          store(d_f, df + j, n);
          store(d_g, dg + j, n);
          store(d_o, dout + j, n);
          store(dcp, dcb + j, n);
          store(load(a + j, n) + d_i, a + j, n);
          store(load(a + H + j, n) + d_f, a + H + j, n);
          store(load(a + 2 * H + j, n) + d_g, a + 2 * H + j, n);
          store(load(a + 3 * H + j, n) + d_o, a + 3 * H + j, n);
          store(load(a + 4 * H + j, n) + d_i * cpj, a + 4 * H + j, n);
          store(load(a + 5 * H + j, n) + d_f * cpj, a + 5 * H + j, n);
          store(load(a + 6 * H + j, n) + d_o * cj, a + 6 * H + j, n);
        }
      }
    }
  });
}

std::optional<Tensor> contiguous_opt(const std::optional<Tensor>& w) {
  if (w.has_value() && w->defined()) return w->contiguous();
  return std::nullopt;
}

// A layer's weights as both drivers read them: contiguous, absent ones nullopt.
struct Weights {
  Tensor w_hh;
  std::optional<Tensor> bias, w_hr, w_ci, w_cf, w_co;
  Weights(const Tensor& hh, const std::optional<Tensor>& b, const std::optional<Tensor>& hr,
          const std::optional<Tensor>& ci, const std::optional<Tensor>& cf, const std::optional<Tensor>& co)
      : w_hh(hh.contiguous()),
        bias(contiguous_opt(b)),
        w_hr(contiguous_opt(hr)),
        w_ci(contiguous_opt(ci)),
        w_cf(contiguous_opt(cf)),
        w_co(contiguous_opt(co)) {}
  bool proj() const { return w_hr.has_value(); }
};

// Their data pointers for scalar type T (nullptr where absent).
template <typename T>
struct WeightPtrs {
  const T *hh, *b, *hr, *ci, *cf, *co;
  explicit WeightPtrs(const Weights& w)
      : hh(w.w_hh.data_ptr<T>()),
        b(ptr_or_null<T>(w.bias)),
        hr(ptr_or_null<T>(w.w_hr)),
        ci(ptr_or_null<T>(w.w_ci)),
        cf(ptr_or_null<T>(w.w_cf)),
        co(ptr_or_null<T>(w.w_co)) {}
};

// ------------------------------------------------------------------------------- GEMM
// Per step we multiply small matrices; ATen's addmm costs several microseconds of dispatch
// and checks around the BLAS call, a large share of a step at small sizes. So we call the
// Fortran BLAS that libtorch exports (MKL's sgemm_/dgemm_ in the x86 wheels) directly, found
// at run time (torch_symbol); where a build has none, the ATen call on tensor views is used.
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

// Row-major C (m x n) = beta * C + A (m x k) @ op(Bm), op(Bm) = Bm^T with Bm (n x k) when
// b_transposed, else Bm (k x n). All contiguous. Column-major BLAS sees C^T = op(Bm)^T A^T.
template <typename T>
void gemm(bool b_transposed, int64_t m, int64_t n, int64_t k, const T* A, const T* Bm, T beta, T* C) {
  if (m == 0 || n == 0) return;
  auto f = Blas<T>::fn();
  if (f != nullptr && k > 0 && m < INT32_MAX && n < INT32_MAX && k < INT32_MAX) {
    const int M = static_cast<int>(n), N = static_cast<int>(m), K = static_cast<int>(k);
    const int lda = b_transposed ? K : M, ldb = K, ldc = M;
    const T one(1);
    f(b_transposed ? "T" : "N", "N", &M, &N, &K, &one, Bm, &lda, A, &ldb, &beta, C, &ldc);
    return;
  }
  auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  Tensor a = at::from_blob(const_cast<T*>(A), {m, k}, opts);
  Tensor b = b_transposed ? at::from_blob(const_cast<T*>(Bm), {n, k}, opts).t()
                          : at::from_blob(const_cast<T*>(Bm), {k, n}, opts);
  Tensor c = at::from_blob(C, {m, n}, opts);
  if (beta == T(0)) {
    at::mm_out(c, a, b);
  } else {
    c.addmm_(a, b);
  }
}

// The ops are public (torch.ops.peephole_lstm_cpp.*): check every shape the loops rely on.
void check_args(const Tensor& xw, const Tensor& h0, const Tensor& c0, const Tensor& w_hh,
                const std::optional<Tensor>& bias, const std::optional<Tensor>& w_hr,
                std::initializer_list<const std::optional<Tensor>*> peeps) {
  TORCH_CHECK(xw.dim() == 3 && xw.size(2) % 4 == 0, "xw must be (T, B, 4H), got ", xw.sizes());
  TORCH_CHECK(xw.device().is_cpu(), "the C++ kernel runs on CPU tensors only");
  const int64_t B = xw.size(1), H = xw.size(2) / 4;
  const bool proj = w_hr.has_value() && w_hr->defined();
  const int64_t P = proj ? w_hr->size(0) : H;
  TORCH_CHECK(h0.dim() == 2 && h0.size(0) == B && h0.size(1) == P, "h0 must be (", B, ", ", P, "), got ", h0.sizes());
  TORCH_CHECK(c0.dim() == 2 && c0.size(0) == B && c0.size(1) == H, "c0 must be (", B, ", ", H, "), got ", c0.sizes());
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == 4 * H && w_hh.size(1) == P, "w_hh must be (", 4 * H, ", ", P,
              "), got ", w_hh.sizes());
  if (proj) TORCH_CHECK(w_hr->dim() == 2 && w_hr->size(1) == H, "w_hr must be (P, ", H, "), got ", w_hr->sizes());
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == 4 * H, "bias must be (", 4 * H, ",), got ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == xw.scalar_type(), "bias dtype differs from xw's");
  }
  for (const auto* w : peeps) {
    if (w->has_value() && (*w)->defined()) {
      TORCH_CHECK((*w)->dim() == 1 && (*w)->size(0) == H, "peepholes must be (", H, ",), got ", (*w)->sizes());
      TORCH_CHECK((*w)->scalar_type() == xw.scalar_type(), "peephole dtype differs from xw's");
    }
  }
  for (const Tensor* t : {&h0, &c0, &w_hh}) {
    TORCH_CHECK(t->scalar_type() == xw.scalar_type(), "all tensors must have xw's dtype ", xw.scalar_type());
  }
  if (proj) TORCH_CHECK(w_hr->scalar_type() == xw.scalar_type(), "w_hr dtype differs from xw's");
}

// A right-hand matrix used at every step (W_hh, W_hr): MKL's packed GEMM lays it out once
// per call in the kernel's internal format (cblas_sgemm_pack / _compute, also looked up at
// run time; float only, as MKL exports no double variant). Otherwise plain gemm().
using pack_size_t = size_t (*)(int, int, int, int);
using pack_t = void (*)(int, int, int, int, int, int, float, const float*, int, float*);
using compute_t = void (*)(int, int, int, int, int, int, const float*, int, const float*, int, float, float*, int);
enum { kRowMajor = 101, kNoTrans = 111, kTrans = 112, kPacked = 151, kBMatrix = 162 };

template <typename T>
class StepGemm {
 public:
  // op(Bm) as in gemm(); the products are A (m x k) @ op(Bm) (k x n) with m <= m_max.
  StepGemm(const T* Bm, bool b_transposed, int64_t n, int64_t k, int64_t m_max)
      : Bm_(Bm), bt_(b_transposed), n_(n), k_(k) {
    if constexpr (std::is_same_v<T, float>) {
      static auto get_size = reinterpret_cast<pack_size_t>(torch_symbol("cblas_sgemm_pack_get_size"));
      static auto pack = reinterpret_cast<pack_t>(torch_symbol("cblas_sgemm_pack"));
      static auto compute = reinterpret_cast<compute_t>(torch_symbol("cblas_sgemm_compute"));
      compute_ = compute;
      static const bool disabled = std::getenv("PEEPHOLE_LSTM_NO_PACK") != nullptr;  // for benchmarks
      if (!disabled && get_size && pack && compute_ && m_max > 0 && n > 0 && k > 0 &&
          std::max({m_max, n, k}) < (int64_t(1) << 30)) {
        const size_t bytes = get_size(kBMatrix, int(m_max), int(n), int(k));
        packed_ = at::empty({int64_t((bytes + sizeof(float) - 1) / sizeof(float))}, at::kFloat);
        pack(kRowMajor, kBMatrix, bt_ ? kTrans : kNoTrans, int(m_max), int(n), int(k), 1.0f, Bm,
             bt_ ? int(k) : int(n), packed_.data_ptr<float>());
        return;
      }
      compute_ = nullptr;
    }
  }
  void operator()(const T* A, int64_t m, T beta, T* C) const {
    if constexpr (std::is_same_v<T, float>) {
      if (compute_ != nullptr && m > 0) {
        compute_(kRowMajor, kNoTrans, kPacked, int(m), int(n_), int(k_), A, int(k_), packed_.data_ptr<float>(),
                 int(n_), beta, C, int(n_));
        return;
      }
    }
    gemm<T>(bt_, m, n_, k_, A, Bm_, beta, C);
  }

 private:
  const T* Bm_;
  bool bt_;
  int64_t n_, k_;
  compute_t compute_ = nullptr;
  Tensor packed_;
};

// Returns (output (T,B,P), h_n (B,P), c_n (B,H), gates (T,B,4H) activated, cs (T,B,H)).
// With save=false (no backward will follow) gates and cs come back empty and the step's
// gates and cell live in small buffers that stay in cache.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> recurrence_forward(
    const Tensor& xw_in, const Tensor& h0_in, const Tensor& c0_in, const Tensor& w_hh_in,
    const std::optional<Tensor>& bias_in, const std::optional<Tensor>& w_hr_in,
    const std::optional<Tensor>& w_ci_in, const std::optional<Tensor>& w_cf_in,
    const std::optional<Tensor>& w_co_in, bool reverse, bool save) {
  check_args(xw_in, h0_in, c0_in, w_hh_in, bias_in, w_hr_in, {&w_ci_in, &w_cf_in, &w_co_in});
  const Tensor xw = xw_in.contiguous();
  const int64_t T = xw.size(0), B = xw.size(1), G = xw.size(2), H = G / 4, P = h0_in.size(1);
  const Tensor h0 = h0_in.contiguous(), c0 = c0_in.contiguous();
  const Weights w(w_hh_in, bias_in, w_hr_in, w_ci_in, w_cf_in, w_co_in);
  const bool proj = w.proj();

  Tensor gates = save ? at::empty({T, B, G}, xw.options()) : at::empty({B, G}, xw.options());
  Tensor cs = save ? at::empty({T, B, H}, xw.options()) : at::empty({2, B, H}, xw.options());
  Tensor out = at::empty({T, B, P}, xw.options());
  Tensor r_buf = proj ? at::empty({B, H}, xw.options()) : Tensor();
  Tensor c_n = at::empty({B, H}, xw.options());

  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "peephole_lstm_forward", [&] {
    using T_ = scalar_t;
    const T_* x = xw.data_ptr<T_>();
    T_* g = gates.data_ptr<T_>();
    T_* c_all = cs.data_ptr<T_>();
    T_* h_all = out.data_ptr<T_>();
    const WeightPtrs<T_> p(w);
    T_* r = proj ? r_buf.data_ptr<T_>() : nullptr;
    const T_* h = h0.data_ptr<T_>();
    const T_* c = c0.data_ptr<T_>();
    const StepGemm<T_> hh(p.hh, /*b_transposed=*/true, G, P, B);  // h W_hh^T
    const StepGemm<T_> hr(p.hr, true, P, H, proj ? B : 0);       // r W_hr^T
    for (int64_t s = 0; s < T; ++s) {
      const int64_t t = reverse ? T - 1 - s : s;
      T_* g_t = save ? g + t * B * G : g;
      T_* c_t = c_all + (save ? t : s % 2) * B * H;
      T_* h_t = h_all + t * B * P;
      hh(h, B, T_(0), g_t);
      forward_cell<T_>(x + t * B * G, p.b, g_t, c, c_t, proj ? r : h_t, p.ci, p.cf, p.co, B, H);
      if (proj) hr(r, B, T_(0), h_t);
      h = h_t;
      c = c_t;
    }
    if (T > 0) std::copy(c, c + B * H, c_n.data_ptr<T_>());
  });
  if (!save) {
    gates = at::empty({0}, xw.options());
    cs = at::empty({0}, xw.options());
  }
  const int64_t t_end = reverse ? 0 : T - 1;
  return {out, out.select(0, t_end).clone(), c_n, gates, cs};
}

// Returns (d_xw, d_h0, d_c0, d_w_hh, d_bias, d_w_hr, d_w_ci, d_w_cf, d_w_co); absent
// weights get an empty tensor.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> recurrence_backward(
    const Tensor& grad_out, const Tensor& grad_hn, const Tensor& grad_cn,
    const Tensor& out, const Tensor& gates, const Tensor& cs, const Tensor& h0_in,
    const Tensor& c0_in, const Tensor& w_hh_in, const std::optional<Tensor>& bias_in,
    const std::optional<Tensor>& w_hr_in, const std::optional<Tensor>& w_ci_in,
    const std::optional<Tensor>& w_cf_in, const std::optional<Tensor>& w_co_in, bool reverse) {
  check_args(gates, h0_in, c0_in, w_hh_in, bias_in, w_hr_in, {&w_ci_in, &w_cf_in, &w_co_in});
  const int64_t T = gates.size(0), B = gates.size(1), G = gates.size(2), H = G / 4;
  const int64_t P = out.size(2);
  TORCH_CHECK(out.sizes() == grad_out.sizes() && out.size(0) == T && out.size(1) == B && out.size(2) == h0_in.size(1),
              "out and grad_out must be (T, B, P)");
  TORCH_CHECK(cs.sizes() == at::IntArrayRef({T, B, H}), "cs must be (T, B, H)");
  TORCH_CHECK(grad_hn.sizes() == h0_in.sizes() && grad_cn.sizes() == c0_in.sizes(), "grad_hn/grad_cn shapes");
  const Tensor h0 = h0_in.contiguous(), c0 = c0_in.contiguous();
  const Weights w(w_hh_in, bias_in, w_hr_in, w_ci_in, w_cf_in, w_co_in);
  const bool proj = w.proj();
  const Tensor gates_c = gates.contiguous(), cs_c = cs.contiguous();

  Tensor dgates = at::empty_like(gates_c);  // (T, B, 4H)
  // dH[t]: the gradient w.r.t. h_t; starts as grad_out, each step adds dG_{t+1} W_hh.
  Tensor dH = grad_out.clone(at::MemoryFormat::Contiguous);  // (T, B, P)
  const int64_t t_last = reverse ? 0 : T - 1;
  dH.select(0, t_last).add_(grad_hn);
  Tensor dc = grad_cn.contiguous().clone();  // (B, H)
  Tensor dr_buf = proj ? at::empty({B, H}, out.options()) : Tensor();
  Tensor dh0 = at::empty({B, P}, out.options());
  const int64_t chunk_rows = grain_rows(H);
  const int64_t chunks = std::max<int64_t>(1, (B + chunk_rows - 1) / chunk_rows);
  Tensor acc = at::zeros({chunks, 7 * H}, out.options());  // see backward_cell

  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "peephole_lstm_backward", [&] {
    using T_ = scalar_t;
    const T_* g = gates_c.data_ptr<T_>();
    const T_* c_all = cs_c.data_ptr<T_>();
    T_* dg = dgates.data_ptr<T_>();
    T_* dh_all = dH.data_ptr<T_>();
    T_* dcp = dc.data_ptr<T_>();
    const WeightPtrs<T_> p(w);
    T_* dr_b = proj ? dr_buf.data_ptr<T_>() : nullptr;
    const StepGemm<T_> dhh(p.hh, /*b_transposed=*/false, P, G, B);  // dG W_hh
    const StepGemm<T_> dhr(p.hr, false, H, P, proj ? B : 0);         // dh W_hr
    for (int64_t s = T - 1; s >= 0; --s) {
      const int64_t t = reverse ? T - 1 - s : s;
      const int64_t t_prev = reverse ? t + 1 : t - 1;
      T_* dh_t = dh_all + t * B * P;
      const T_* dr = dh_t;
      if (proj) {
        dhr(dh_t, B, T_(0), dr_b);  // dr = dh W_hr
        dr = dr_b;
      }
      const T_* c_prev = s > 0 ? c_all + t_prev * B * H : c0.data_ptr<T_>();
      T_* dg_t = dg + t * B * G;
      backward_cell<T_>(g + t * B * G, c_all + t * B * H, c_prev, dr, dcp, dg_t, p.ci, p.cf, p.co, B, H, chunk_rows,
                        acc.data_ptr<T_>());
      if (s > 0) {
        dhh(dg_t, B, T_(1), dh_all + t_prev * B * P);  // += dG W_hh
      } else {
        dhh(dg_t, B, T_(0), dh0.data_ptr<T_>());
      }
    }
  });

  // dW_hh = sum_t dG_t^T h_{t-1}: one GEMM over steps 1.., plus the first step's with h0.
  const int64_t t_first = reverse ? T - 1 : 0;
  Tensor dw_hh = dgates.select(0, t_first).t().mm(h0);  // (4H, P)
  if (T > 1) {
    const Tensor dg_rest = reverse ? dgates.slice(0, 0, T - 1) : dgates.slice(0, 1, T);
    const Tensor h_rest = reverse ? out.slice(0, 1, T) : out.slice(0, 0, T - 1);
    dw_hh.addmm_(dg_rest.reshape({(T - 1) * B, G}).t(), h_rest.reshape({(T - 1) * B, P}));
  }
  const Tensor sums = acc.sum(0);  // (7H)
  // An absent weight's grad is empty; the outputs of an op may not alias each other.
  auto empty = [&] { return at::empty({0}, out.options()); };
  Tensor d_bias = empty(), dw_hr = empty(), dw_ci = empty(), dw_cf = empty(), dw_co = empty();
  if (w.bias) d_bias = sums.slice(0, 0, 4 * H).clone();
  if (proj) {
    Tensor r_all = gates_c.slice(2, 3 * H, 4 * H) * cs_c.tanh();  // (T, B, H)
    dw_hr = dH.view({T * B, P}).t().mm(r_all.reshape({T * B, H}));
  }
  if (w.w_ci) dw_ci = sums.slice(0, 4 * H, 5 * H).clone();
  if (w.w_cf) dw_cf = sums.slice(0, 5 * H, 6 * H).clone();
  if (w.w_co) dw_co = sums.slice(0, 6 * H, 7 * H).clone();
  return {dgates, dh0, dc, dw_hh, d_bias, dw_hr, dw_ci, dw_cf, dw_co};
}

// Which GEMM path the kernel takes for float: "mkl-packed", "blas" or "aten".
std::string blas_info() {
  if (torch_symbol("cblas_sgemm_pack") && torch_symbol("cblas_sgemm_compute") &&
      torch_symbol("cblas_sgemm_pack_get_size") && std::getenv("PEEPHOLE_LSTM_NO_PACK") == nullptr)
    return "mkl-packed";
  return Blas<float>::fn() != nullptr ? "blas" : "aten";
}

}  // namespace

TORCH_LIBRARY(peephole_lstm_cpp, m) {
  m.def("blas_info() -> str", &blas_info);
  m.def(
      "forward(Tensor xw, Tensor h0, Tensor c0, Tensor w_hh, Tensor? bias, Tensor? w_hr, Tensor? w_ci, "
      "Tensor? w_cf, Tensor? w_co, bool reverse, bool save) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "backward(Tensor grad_out, Tensor grad_hn, Tensor grad_cn, Tensor out, Tensor gates, "
      "Tensor cs, Tensor h0, Tensor c0, Tensor w_hh, Tensor? bias, Tensor? w_hr, Tensor? w_ci, "
      "Tensor? w_cf, Tensor? w_co, bool reverse) -> (Tensor, Tensor, Tensor, Tensor, Tensor, "
      "Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(peephole_lstm_cpp, CPU, m) {
  m.impl("forward", &recurrence_forward);
  m.impl("backward", &recurrence_backward);
}
