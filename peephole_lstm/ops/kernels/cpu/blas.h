// blas.h: the BLAS back ends behind the per-step GEMMs: the Fortran sgemm_/dgemm_ that libtorch
// exports, MKL's packed sgemm, oneDNN's matmul. Row-major C (m x n) = A (m x k) @ op(B).
// Included once, by ops.cpp (one translation unit; see there).
#pragma once

namespace {

// ------------------------------------------------------------------------------- GEMM
// Per step we multiply small matrices; ATen's addmm costs several microseconds of dispatch
// and checks around the BLAS call, a large share of a step at small sizes. So we call the
// Fortran BLAS that libtorch exports (MKL's sgemm_/dgemm_ in the x86 wheels) directly, found
// at run time (torch_symbol), MKL's packed sgemm, or oneDNN's matmul: whichever measures fastest.
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

// Row-major C (m x n) = beta * C + A (m x k, row stride lda) @ op(Bm), op(Bm) = Bm^T with Bm
// (n x k) when b_transposed, else Bm (k x n); Bm and C contiguous. Column-major BLAS sees
// C^T = op(Bm)^T A^T.
template <typename T>
void gemm(bool b_transposed, int64_t m, int64_t n, int64_t k, const T* A, int64_t lda, const T* Bm, T beta, T* C) {
  if (m == 0 || n == 0) return;
  auto f = Blas<T>::fn();
  if (f != nullptr && k > 0 && m < INT32_MAX && n < INT32_MAX && k < INT32_MAX && lda < INT32_MAX) {
    const int M = static_cast<int>(n), N = static_cast<int>(m), K = static_cast<int>(k);
    const int ldb_ = b_transposed ? K : M, lda_ = static_cast<int>(lda), ldc = M;
    const T one(1);
    f(b_transposed ? "T" : "N", "N", &M, &N, &K, &one, Bm, &ldb_, A, &lda_, &beta, C, &ldc);
    return;
  }
  auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  Tensor a = at::from_blob(const_cast<T*>(A), {m, k}, {lda, 1}, opts);
  Tensor b = b_transposed ? at::from_blob(const_cast<T*>(Bm), {n, k}, opts).t()
                          : at::from_blob(const_cast<T*>(Bm), {k, n}, opts);
  Tensor c = at::from_blob(C, {m, n}, opts);
  if (beta == T(0)) {
    at::mm_out(c, a, b);
  } else {
    c.addmm_(a, b);
  }
}

using pack_size_t = size_t (*)(int, int, int, int);
using pack_t = void (*)(int, int, int, int, int, int, float, const float*, int, float*);
using compute_t = void (*)(int, int, int, int, int, int, const float*, int, const float*, int, float, float*, int);
enum { kRowMajor = 101, kNoTrans = 111, kTrans = 112, kPacked = 151, kBMatrix = 162 };

struct MklPack {
  pack_size_t get_size = reinterpret_cast<pack_size_t>(torch_symbol("cblas_sgemm_pack_get_size"));
  pack_t pack = reinterpret_cast<pack_t>(torch_symbol("cblas_sgemm_pack"));
  compute_t compute = reinterpret_cast<compute_t>(torch_symbol("cblas_sgemm_compute"));
  bool ok() const { return get_size && pack && compute; }
  static const MklPack& get() {
    static const MklPack p;
    return p;
  }
};

// oneDNN's matmul as ATen exposes it (mkldnn::_linear_pointwise, with the weight reordered
// once per layer call by mkldnn::_reorder_linear_weight); float only.
struct OneDnn {
  std::optional<c10::OperatorHandle> linear, reorder;
  OneDnn() {
    if (!at::hasMKLDNN()) return;
    linear = c10::Dispatcher::singleton().findSchema({"mkldnn::_linear_pointwise", ""});
    reorder = c10::Dispatcher::singleton().findSchema({"mkldnn::_reorder_linear_weight", ""});
  }
  bool ok() const { return linear.has_value() && reorder.has_value(); }
  static const OneDnn& get() {
    static const OneDnn d;
    return d;
  }
  Tensor pack(const Tensor& w, int64_t m_max) const {  // w: (n, k)
    std::vector<c10::IValue> stack{w, c10::IValue(m_max)};
    reorder->callBoxed(&stack);
    return stack[0].toTensor();
  }
  Tensor run(const Tensor& a, const Tensor& w) const {
    std::vector<c10::IValue> stack{a, w, c10::IValue(), c10::IValue(std::string("none")),
                                   c10::IValue(c10::List<std::optional<c10::Scalar>>()), c10::IValue()};
    linear->callBoxed(&stack);
    return stack[0].toTensor();
  }
};

}  // namespace
