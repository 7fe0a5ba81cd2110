// forward.h: the forward driver: one layer's time loop in one direction.
// xw (T, B, 4H) or packed (N, 4H) [or x (T, B, I) / (N, I) with W_ih], h0 (B, P), c0 (B, H) ->
// output (T, B, P) / (N, P), h_n (B, P), c_n (B, H), saved gates (T, B, 4H) and cell states (T, B, H).
// Included once, by ops.cpp (one translation unit; see there).
#pragma once

namespace {

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

}  // namespace
