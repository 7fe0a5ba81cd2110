// backward.h: the backward driver (BPTT): the steps in reverse with the mirror-image GEMMs, then the
// weight gradients over all steps. Takes the forward's saved gates (T, B, 4H) and cell states (T, B, H).
// Included once, by ops.cpp (one translation unit; see there).
#pragma once

namespace {

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

}  // namespace
