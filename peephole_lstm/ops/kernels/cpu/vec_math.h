// vec_math.h: vector math on at::vec::Vectorized<T> (exp, sigmoid, tanh), tail loads and stores,
// and the loop over hidden units in whole vectors.
// Included once, by ops.cpp (one translation unit; see there).
#pragma once

namespace {

// at::vec::Vectorized is AVX2 (SLEEF exp/tanh, the kernels ATen itself uses) when the
// build passes -DCPU_CAPABILITY_AVX2 (done when the CPU has it), else portable scalar code.
template <typename T>
using Vec = at::vec::Vectorized<T>;

// exp. SLEEF's (at::vec's exp) is an out-of-line call, and every call makes the element-wise
// kernel spill its live vector registers (all caller-saved); for float on AVX-512 an inline
// one instead: n = round(x / ln 2), r = x - n ln 2 (Cody-Waite, two parts), e^r by Cephes'
// degree-6 polynomial, 2^n by scalef (which gives inf and 0 past the range). Within 1.25 ulp
// of exp over [-87, 88.5] (SLEEF's: 1 ulp); NaN, ±inf and the range ends as exp.
template <typename T>
inline Vec<T> vexp(const Vec<T>& x) {
  return x.exp();
}
#if defined(CPU_CAPABILITY_AVX512)
template <>
inline Vec<float> vexp<float>(const Vec<float>& xv) {
  // max/min return their second operand when either is NaN: a NaN x stays NaN
  const __m512 x = _mm512_min_ps(_mm512_set1_ps(89.f), _mm512_max_ps(_mm512_set1_ps(-104.f), __m512(xv)));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);  // exact: n has <= 8 bits
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(p, n);
}
#endif

template <typename T>
inline Vec<T> sigmoid(const Vec<T>& x) {
  return (Vec<T>(T(1)) + vexp(x.neg())).reciprocal();  // as ATen's sigmoid kernel
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
  const V big = V(1.f) - V(2.f) / (V(1.f) + vexp(ax + ax));
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

// unit(j, n) for the vectors of hidden units [j_begin, j_end): whole ones with n the vector
// width as a compile-time constant (so each load's tail test folds away), then the tail.
template <typename T, typename F>
__attribute__((always_inline)) inline void for_vectors(int64_t j_begin, int64_t j_end, const F& unit) {
  constexpr int64_t W = Vec<T>::size();
  int64_t j = j_begin;
  for (; j + W <= j_end; j += W) unit(j, std::integral_constant<int64_t, W>());
  if (j < j_end) unit(j, j_end - j);
}

}  // namespace
