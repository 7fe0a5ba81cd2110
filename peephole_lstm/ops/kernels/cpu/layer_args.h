// layer_args.h: the ops' argument checks and the views both drivers take of them: where each step's rows
// lie (Steps: unpacked (T, B, .) or packed (N, .) with batch_sizes), the weights (Weights) and their pointers.
// Included once, by ops.cpp (one translation unit; see there).
#pragma once

namespace {

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

}  // namespace
