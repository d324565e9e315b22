// Vector helpers shared by the CPU kernels (attention.cpp, dense.cpp): GCC/Clang vector types
// of VL floats (16 where the compiler targets AVX-512, else 8), and an exp, reciprocal and
// sigmoid built from them. Included inside each file's anonymous namespace.
//
// genrec.ops.native keys its builds by this header's text as well as the source's.

#pragma once

#if defined(__AVX512F__)
constexpr int VL = 16;  // floats per vector
#else
constexpr int VL = 8;
#endif

typedef float vf __attribute__((vector_size(VL * 4)));
typedef float vfu __attribute__((vector_size(VL * 4), aligned(4)));
typedef int32_t vi __attribute__((vector_size(VL * 4)));

inline vf load(const float* p) { return *reinterpret_cast<const vfu*>(p); }
inline void store(float* p, vf x) { *reinterpret_cast<vfu*>(p) = x; }
// s - 0 is s for every float (0 + s is not, for s = -0), so this folds to one broadcast
inline vf splat(float s) { return s - vf{}; }
inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// e^x / 2^n for x = n ln2 + r (n integral, |r| <= ln2 / 2); T is float or vf. One FMA takes r
// with ln2 rounded to a float (off by 1.9e-9, so r by |n| * 1.9e-9 <= 2.4e-7 for the largest
// |x|, ~2e-8 for |x| < 10), then a degree-5 polynomial fitted to e^r over |r| <= ln2 / 2 for the
// least largest relative error, its constant term 1 (1.5e-7 with float rounding; the degree-6
// Taylor polynomial it replaced, with one more step, had 2e-7): 6 FMAs in all.
template <typename T>
inline T exp_reduced(T x, T n) {
  const T r = x - n * 0.693147182f;
  T p = T{} + 0.008290388f;
  p = p * r + 0.041898224f;
  p = p * r + 0.16667643f;
  p = p * r + 0.49999148f;
  p = p * r + 0.99999970f;
  return p * r + 1.0f;
}

constexpr float ROUNDING_SHIFT = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer

// exp(x) for x in float range: 2^n * e^r with |r| <= ln2 / 2 and exp_reduced's polynomial
// (relative error <= ~3e-7); written so that compilers vectorise the loops that call it.
inline float exp_approx(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float n = (x * 1.44269504088896341f + ROUNDING_SHIFT) - ROUNDING_SHIFT;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return exp_reduced(x, n) * scale;
}

// max(lo, x) and min(hi, x) lane-wise, NaN kept (x < lo ? lo : x, which GCC would compile to a
// compare and a blend)
inline vf clamp(vf x, vf lo, vf hi) {
#if defined(__AVX512F__)
  const __m512 low = _mm512_max_ps(reinterpret_cast<__m512>(lo), reinterpret_cast<__m512>(x));
  return reinterpret_cast<vf>(_mm512_min_ps(reinterpret_cast<__m512>(hi), low));
#elif defined(__AVX__)
  const __m256 low = _mm256_max_ps(reinterpret_cast<__m256>(lo), reinterpret_cast<__m256>(x));
  return reinterpret_cast<vf>(_mm256_min_ps(reinterpret_cast<__m256>(hi), low));
#else
  x = x < lo ? lo : x;
  return x > hi ? hi : x;
#endif
}

// exp_approx on a vector, the same operations in the same order; the product by 2^n is one
// vscalefps with AVX-512 (exact, as the multiplication by the power of two built from bits)
inline vf exp_approx(vf x) {
  x = clamp(x, splat(-87.0f), splat(88.0f));
  const vf shift = splat(ROUNDING_SHIFT);
  const vf n = (x * 1.44269504088896341f + shift) - shift;
#if defined(__AVX512F__)
  return reinterpret_cast<vf>(_mm512_scalef_ps(reinterpret_cast<__m512>(exp_reduced(x, n)),
                                               reinterpret_cast<__m512>(n)));
#else
  const vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
  return exp_reduced(x, n) * reinterpret_cast<vf>(bits);
#endif
}

// 1 / d from the hardware's estimate and one Newton step (relative error ~1e-7): a vector
// division is the slowest instruction of SiLU and its gradient
inline vf reciprocal(vf d) {
#if defined(__AVX512F__)
  const vf r = reinterpret_cast<vf>(_mm512_rcp14_ps(reinterpret_cast<__m512>(d)));
  return r * (2.0f - d * r);
#elif defined(__AVX__)
  const vf r = reinterpret_cast<vf>(_mm256_rcp_ps(reinterpret_cast<__m256>(d)));
  return r * (2.0f - d * r);
#else
  return 1.0f / d;
#endif
}

inline vf sigmoid(vf x) { return reciprocal(1.0f + exp_approx(-x)); }
