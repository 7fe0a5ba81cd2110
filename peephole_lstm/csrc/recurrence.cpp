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

#include <algorithm>
#include <cmath>
#include <optional>
#include <tuple>

namespace {

using at::Tensor;

template <typename T>
const T* ptr_or_null(const std::optional<Tensor>& w) {
  return (w.has_value() && w->defined()) ? w->data_ptr<T>() : nullptr;
}

// Grain so that small batches stay on one thread: parallel_for costs more than it saves
// below a few tens of thousands of elements per step.
inline int64_t grain_rows(int64_t H) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, 4 * H));
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
// is about 3x faster than SLEEF's vectorised tanh: tanh|x| = -m / (2 + m), m = expm1(-2|x|).
template <typename T>
inline Vec<T> tanh(const Vec<T>& x) {
  const Vec<T> m = (x.abs() * Vec<T>(T(-2))).expm1();
  const Vec<T> t = m.neg() / (Vec<T>(T(2)) + m);
  return Vec<T>::blendv(t, t.neg(), x < Vec<T>(T(0)));
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

// gates: (B, 4H) pre-activations in, activations [i, f, g, o] out. Absent peepholes are
// loaded as 0, which adds exactly nothing.
template <typename T>
void forward_cell(T* gates, const T* c_prev, T* c, T* r, const T* w_ci, const T* w_cf,
                  const T* w_co, int64_t B, int64_t H) {
  constexpr int64_t W = Vec<T>::size();
  at::parallel_for(0, B, grain_rows(H), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      T* gi = gates + b * 4 * H;
      T* gf = gi + H;
      T* gg = gf + H;
      T* go = gg + H;
      const T* cp = c_prev + b * H;
      T* cb = c + b * H;
      T* rb = r + b * H;
      for (int64_t j = 0; j < H; j += W) {
        const int64_t n = std::min<int64_t>(W, H - j);
        const Vec<T> cpj = load(cp + j, n);
        const Vec<T> i = sigmoid(load(gi + j, n) + load_or(w_ci ? w_ci + j : nullptr, n, T(0)) * cpj);
        const Vec<T> f = sigmoid(load(gf + j, n) + load_or(w_cf ? w_cf + j : nullptr, n, T(0)) * cpj);
        const Vec<T> g = tanh(load(gg + j, n));
        const Vec<T> cj = f * cpj + i * g;
        // the output gate sees the new cell state
        const Vec<T> o = sigmoid(load(go + j, n) + load_or(w_co ? w_co + j : nullptr, n, T(0)) * cj);
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
template <typename T>
void backward_cell(const T* gates, const T* c, const T* c_prev, const T* dr, T* dc,
                   T* dgates, const T* w_ci, const T* w_cf, const T* w_co, int64_t B,
                   int64_t H) {
  constexpr int64_t W = Vec<T>::size();
  const Vec<T> one(T(1));
  at::parallel_for(0, B, grain_rows(H), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
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
        const Vec<T> tc = tanh(load(cb + j, n));
        const Vec<T> drj = load(drb + j, n);
        const Vec<T> d_o = drj * tc * o * (one - o);
        const Vec<T> dcj = load(dcb + j, n) + drj * o * (one - tc * tc) +
                           d_o * load_or(w_co ? w_co + j : nullptr, n, T(0));
        const Vec<T> d_i = dcj * g * i * (one - i);
        const Vec<T> d_f = dcj * load(cp + j, n) * f * (one - f);
        const Vec<T> d_g = dcj * i * (one - g * g);
        const Vec<T> dcp = dcj * f + d_i * load_or(w_ci ? w_ci + j : nullptr, n, T(0)) +
                           d_f * load_or(w_cf ? w_cf + j : nullptr, n, T(0));
        store(d_i, di + j, n);
        store(d_f, df + j, n);
        store(d_g, dg + j, n);
        store(d_o, dout + j, n);
        store(dcp, dcb + j, n);
      }
    }
  });
}

std::optional<Tensor> contiguous_opt(const std::optional<Tensor>& w) {
  if (w.has_value() && w->defined()) return w->contiguous();
  return std::nullopt;
}

// Returns (output (T,B,P), h_n (B,P), c_n (B,H), gates (T,B,4H) activated, cs (T,B,H)).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> recurrence_forward(
    const Tensor& xw_in, const Tensor& h0, const Tensor& c0, const Tensor& w_hh,
    const std::optional<Tensor>& w_hr_in, const std::optional<Tensor>& w_ci_in,
    const std::optional<Tensor>& w_cf_in, const std::optional<Tensor>& w_co_in,
    bool reverse) {
  const Tensor xw = xw_in.contiguous();
  const int64_t T = xw.size(0), B = xw.size(1), H = xw.size(2) / 4, P = h0.size(1);
  const auto w_hr = contiguous_opt(w_hr_in);
  const auto w_ci = contiguous_opt(w_ci_in);
  const auto w_cf = contiguous_opt(w_cf_in);
  const auto w_co = contiguous_opt(w_co_in);
  const bool proj = w_hr.has_value();

  Tensor gates = at::empty_like(xw);
  Tensor cs = at::empty({T, B, H}, xw.options());
  Tensor out = at::empty({T, B, P}, xw.options());
  const Tensor w_hh_t = w_hh.t().contiguous();  // (P, 4H), packed once per call
  const Tensor w_hr_t = proj ? w_hr->t().contiguous() : Tensor();  // (H, P)
  Tensor r_buf = proj ? at::empty({B, H}, xw.options()) : Tensor();
  Tensor h = h0.contiguous();
  Tensor c = c0.contiguous();

  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = reverse ? T - 1 - s : s;
    Tensor g_t = gates.select(0, t);  // (B, 4H)
    at::addmm_out(g_t, xw.select(0, t), h, w_hh_t);
    Tensor c_t = cs.select(0, t);
    Tensor h_t = out.select(0, t);
    Tensor r_t = proj ? r_buf : h_t;
    AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "peephole_lstm_forward_cell", [&] {
      forward_cell<scalar_t>(g_t.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(),
                             c_t.data_ptr<scalar_t>(), r_t.data_ptr<scalar_t>(),
                             ptr_or_null<scalar_t>(w_ci), ptr_or_null<scalar_t>(w_cf),
                             ptr_or_null<scalar_t>(w_co), B, H);
    });
    if (proj) at::mm_out(h_t, r_buf, w_hr_t);
    h = h_t;
    c = c_t;
  }
  return {out, h.clone(), c.clone(), gates, cs};
}

// Returns (d_xw, d_h0, d_c0, d_w_hh, d_w_hr, d_w_ci, d_w_cf, d_w_co); absent weights get
// an empty tensor.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> recurrence_backward(
    const Tensor& grad_out_in, const Tensor& grad_hn, const Tensor& grad_cn,
    const Tensor& out, const Tensor& gates, const Tensor& cs, const Tensor& h0,
    const Tensor& c0, const Tensor& w_hh_in, const std::optional<Tensor>& w_hr_in,
    const std::optional<Tensor>& w_ci_in, const std::optional<Tensor>& w_cf_in,
    const std::optional<Tensor>& w_co_in, bool reverse) {
  const Tensor grad_out = grad_out_in.contiguous();
  const int64_t T = gates.size(0), B = gates.size(1), G = gates.size(2), H = G / 4;
  const int64_t P = out.size(2);
  const Tensor w_hh = w_hh_in.contiguous();  // (4H, P)
  const auto w_hr = contiguous_opt(w_hr_in);  // (P, H)
  const auto w_ci = contiguous_opt(w_ci_in);
  const auto w_cf = contiguous_opt(w_cf_in);
  const auto w_co = contiguous_opt(w_co_in);
  const bool proj = w_hr.has_value();
  const Tensor c0c = c0.contiguous();

  Tensor dgates = at::empty_like(gates);       // (T, B, 4H)
  Tensor dH = at::empty({T, B, P}, out.options());  // grad w.r.t. h_t, every step
  Tensor dc = grad_cn.contiguous().clone();    // (B, H)
  Tensor dr_buf = proj ? at::empty({B, H}, out.options()) : Tensor();
  Tensor dh0;

  const int64_t t_last = reverse ? 0 : T - 1;
  Tensor dh_last = dH.select(0, t_last);
  at::add_out(dh_last, grad_out.select(0, t_last), grad_hn);
  for (int64_t s = T - 1; s >= 0; --s) {
    const int64_t t = reverse ? T - 1 - s : s;
    const int64_t t_prev = reverse ? t + 1 : t - 1;
    Tensor dh_t = dH.select(0, t);
    Tensor dr = dh_t;
    if (proj) {
      at::mm_out(dr_buf, dh_t, *w_hr);
      dr = dr_buf;
    }
    const Tensor c_prev = s > 0 ? cs.select(0, t_prev) : c0c;
    Tensor dg_t = dgates.select(0, t);
    const Tensor g_t = gates.select(0, t);
    const Tensor c_t = cs.select(0, t);
    AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "peephole_lstm_backward_cell", [&] {
      backward_cell<scalar_t>(g_t.data_ptr<scalar_t>(), c_t.data_ptr<scalar_t>(),
                              c_prev.data_ptr<scalar_t>(), dr.data_ptr<scalar_t>(),
                              dc.data_ptr<scalar_t>(), dg_t.data_ptr<scalar_t>(),
                              ptr_or_null<scalar_t>(w_ci), ptr_or_null<scalar_t>(w_cf),
                              ptr_or_null<scalar_t>(w_co), B, H);
    });
    if (s > 0) {
      Tensor dh_prev = dH.select(0, t_prev);
      at::addmm_out(dh_prev, grad_out.select(0, t_prev), dg_t, w_hh);
    } else {
      dh0 = at::mm(dg_t, w_hh);
    }
  }

  // Parameter gradients: one GEMM / reduction over all steps.
  const Tensor h0c = h0.contiguous().unsqueeze(0);
  const Tensor c0u = c0c.unsqueeze(0);
  Tensor h_prev, c_prev_all;
  if (reverse) {
    h_prev = at::cat({out.slice(0, 1, T), h0c}, 0);
    c_prev_all = at::cat({cs.slice(0, 1, T), c0u}, 0);
  } else {
    h_prev = at::cat({h0c, out.slice(0, 0, T - 1)}, 0);
    c_prev_all = at::cat({c0u, cs.slice(0, 0, T - 1)}, 0);
  }
  Tensor dw_hh = dgates.view({T * B, G}).t().mm(h_prev.view({T * B, P}));
  // An absent weight's grad is empty; the outputs of an op may not alias each other.
  auto empty = [&] { return at::empty({0}, out.options()); };
  Tensor dw_hr = empty(), dw_ci = empty(), dw_cf = empty(), dw_co = empty();
  if (proj) {
    Tensor r_all = gates.slice(2, 3 * H, 4 * H) * cs.tanh();  // (T, B, H)
    dw_hr = dH.view({T * B, P}).t().mm(r_all.reshape({T * B, H}));
  }
  if (w_ci) dw_ci = (dgates.slice(2, 0, H) * c_prev_all).sum({0, 1});
  if (w_cf) dw_cf = (dgates.slice(2, H, 2 * H) * c_prev_all).sum({0, 1});
  if (w_co) dw_co = (dgates.slice(2, 3 * H, 4 * H) * cs).sum({0, 1});
  return {dgates, dh0, dc, dw_hh, dw_hr, dw_ci, dw_cf, dw_co};
}

}  // namespace

TORCH_LIBRARY(peephole_lstm_cpp, m) {
  m.def(
      "forward(Tensor xw, Tensor h0, Tensor c0, Tensor w_hh, Tensor? w_hr, Tensor? w_ci, "
      "Tensor? w_cf, Tensor? w_co, bool reverse) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "backward(Tensor grad_out, Tensor grad_hn, Tensor grad_cn, Tensor out, Tensor gates, "
      "Tensor cs, Tensor h0, Tensor c0, Tensor w_hh, Tensor? w_hr, Tensor? w_ci, "
      "Tensor? w_cf, Tensor? w_co, bool reverse) -> (Tensor, Tensor, Tensor, Tensor, Tensor, "
      "Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(peephole_lstm_cpp, CPU, m) {
  m.impl("forward", &recurrence_forward);
  m.impl("backward", &recurrence_backward);
}
