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
//
// The source is split along its seams, one header each, all included here into one
// translation unit (so the compiler inlines across them, and each helper keeps internal
// linkage in the anonymous namespace):
//   common.h     includes, small helpers        knobs.h      the tuning knobs (set from Python)
//   threads.h    thread count and stall policy  pool.h       buffer pool for large buffers
//   vec_math.h   vector exp/sigmoid/tanh        cell.h       the cell's element-wise math
//   blas.h       BLAS / MKL packed / oneDNN     gemm_vec.h   our own register-blocked GEMMs
//   autotune.h   per-shape path choice          layer_args.h argument checks, step rows, weights
//   forward.h    forward driver                 backward.h   backward driver
// and below: diagnostics (blas_info) and the op registration.

#include "common.h"
#include "knobs.h"
#include "threads.h"
#include "pool.h"
#include "vec_math.h"
#include "cell.h"
#include "blas.h"
#include "gemm_vec.h"
#include "autotune.h"
#include "layer_args.h"
#include "forward.h"
#include "backward.h"

namespace {

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
  // the tuning knobs (knobs.h), set by peephole_lstm.tuning
  m.def("set_knob(str name, str value) -> ()", [](std::string name, std::string value) { set_knob(name, value); });
  // the stall policy (threads.h), for tests: its state, a loop time fed to it, a reset
  m.def("stall_state() -> int[]", [] {
    return std::vector<int64_t>{g_stalls.load(), g_stalled_in_a_row.load(), g_serial_window.load(),
                                g_serial_left.load()};
  });
  m.def("record_loop(float seconds, int steps) -> bool", [](double seconds, int64_t steps) {
    TORCH_CHECK(steps > 0, "record_loop: steps must be positive");
    return record_loop(seconds, steps);
  });
  m.def("reset_stall_policy() -> ()", [] { reset_stall_policy(); });
  // every per-shape measurement forgotten (autotune.h), for tests: as in a new process
  m.def("reset_measurements() -> ()", [] { reset_measurements(); });
  m.def("last_loop_timing() -> float[]", [] {
    return std::vector<double>{t_last_loop.elapsed, t_last_loop.measuring, double(t_last_loop.steps)};
  });
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
