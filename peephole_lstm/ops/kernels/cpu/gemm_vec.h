// gemm_vec.h: the kernel's own register-blocked GEMMs on at::vec: VecGemm, C (m x n) = A (m x k) @ op(B)
// with op(B) packed once per layer call; GemmTN, C (m x n) = A^T B over all steps (A (k x m), B (k x n)).
// Included once, by ops.cpp (one translation unit; see there).
#pragma once

namespace {

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
// set-up each time, the large sizes (S4) ran 5-10% faster, the small ones level. The vec_kc
// knob sets it in rows of k (tests).
template <typename T>
int64_t vec_k_block(int64_t np) {
  const int64_t rows = knobs().vec_kc.load(std::memory_order_relaxed);
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

}  // namespace
