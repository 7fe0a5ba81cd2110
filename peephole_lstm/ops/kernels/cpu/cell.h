// cell.h: the LSTM cell's element-wise math for one step, forward and backward, on row-major
// (B, 4H) gates and (B, H) cell states (shapes in each function's comment).
// Included once, by ops.cpp (one translation unit; see there).
#pragma once

namespace {

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

}  // namespace
