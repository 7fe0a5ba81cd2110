// knobs.h: the kernel's tuning knobs, one atomic each, read on every call.
// Their values come from Python: peephole_lstm.tuning reads the PEEPHOLE_LSTM_* environment
// once, pushes every value through set_knob when the library loads, and again on each
// override (tuning.override(...)), so a test or benchmark flips a knob in-process. The
// defaults below are the ones tuning.py documents.
// Included once, by ops.cpp (one translation unit; see there).
#pragma once

namespace {

struct Knobs {
  std::atomic<double> serial_flops{double(1 << 23)};  // per-step FLOPs under which a loop may go serial (0: never)
  std::atomic<int> threads{0};                        // 0 auto (the stall switch), 1 serial, 2 parallel
  std::atomic<int> split{0};                          // one-region loop: 0 measured rule, 1 rows, 2 cols
  std::atomic<bool> fused_loop{true};                 // the one-region loop allowed at all
  std::atomic<int64_t> vec_kc{0};                     // VecGemm's k block in rows (0: a quarter of L2)
  std::atomic<int> gemm{-1};                          // -1 measure per shape, else a forced Path
  std::atomic<int64_t> pool_bytes{int64_t(1024) << 20};  // free blocks the buffer pool keeps at most
};

inline Knobs& knobs() {
  static Knobs k;
  return k;
}

// set_knob(name, value): value as the environment variable would hold it ("" = the default).
inline void set_knob(const std::string& name, const std::string& v) {
  Knobs& k = knobs();
  if (name == "serial_flops") {
    k.serial_flops.store(v.empty() ? double(1 << 23) : std::stod(v));
  } else if (name == "threads") {
    TORCH_CHECK(v.empty() || v == "auto" || v == "serial" || v == "parallel",
                "threads must be one of auto, serial, parallel; got '", v, "'");
    k.threads.store(v == "serial" ? 1 : v == "parallel" ? 2 : 0);
  } else if (name == "split") {
    TORCH_CHECK(v.empty() || v == "auto" || v == "rows" || v == "cols", "split must be one of auto, rows, cols; got '",
                v, "'");
    k.split.store(v == "rows" ? 1 : v == "cols" ? 2 : 0);
  } else if (name == "fused_loop") {
    k.fused_loop.store(v != "0");
  } else if (name == "vec_kc") {
    k.vec_kc.store(v.empty() ? 0 : std::stoll(v));
  } else if (name == "gemm") {
    // the values of Path (autotune.h): blas 0, packed 1, onednn 2, vec 3
    TORCH_CHECK(v.empty() || v == "auto" || v == "blas" || v == "packed" || v == "onednn" || v == "vec",
                "gemm must be one of auto, packed, blas, onednn, vec; got '", v, "'");
    k.gemm.store(v == "blas" ? 0 : v == "packed" ? 1 : v == "onednn" ? 2 : v == "vec" ? 3 : -1);
  } else if (name == "pool_mb") {
    k.pool_bytes.store(int64_t(std::max(0.0, v.empty() ? 1024.0 : std::stod(v)) * double(1 << 20)));
  } else {
    TORCH_CHECK(false, "no C++ knob named '", name, "'");
  }
}

}  // namespace
