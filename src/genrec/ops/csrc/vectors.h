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

// e^x / 2^n for x = n ln2 + r (n integral, |r| <= ln2 / 2), T float or vf (exp_reduced): one
// FMA takes r with ln2 rounded to a float (off by 1.9e-9, so r by |n| * 1.9e-9 <= 2.4e-7 for the
// largest |x|, ~2e-8 for |x| < 10), then EXP_POLY, a degree-5 polynomial fitted to e^r over
// |r| <= ln2 / 2 for the least largest relative error, its constant term 1 (1.5e-7 with float
// rounding; the degree-6 Taylor polynomial it replaced, with one more step, had 2e-7).
constexpr float LN2 = 0.693147182f;
constexpr float EXP_POLY[6] = {0.008290388f, 0.041898224f, 0.16667643f,
                               0.49999148f,  0.99999970f,  1.0f};  // of r^5 .. r^0

// e^(S r), S = 1 or -1, by EXP_POLY in Horner's order (T: float or vf). S = -1 flips the odd
// powers' signs, which negates every other partial result exactly: e^-r gets the bits that
// e^r of -r would, without the negation.
template <int S, typename T>
inline T exp_poly(T r) {
  T p = T{} + S * EXP_POLY[0];
  p = p * r + EXP_POLY[1];
  p = p * r + S * EXP_POLY[2];
  p = p * r + EXP_POLY[3];
  p = p * r + S * EXP_POLY[4];
  return p * r + EXP_POLY[5];
}

template <typename T>
inline T exp_reduced(T x, T n) { return exp_poly<1>(x - n * LN2); }

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

// 1 / (1 + e^-x) lane-wise, e^-x computed as exp_approx(-x) would (the same bits) from t = the
// clamped x, with the negation folded into the steps: n = round(-t / ln2), r = t + n ln2 is
// minus exp_approx's r, and exp_poly<-1>(r) = e^-r. 2^n is one vscalefps with AVX-512 (exact,
// as the product by the power of two built from bits elsewhere); 1 / d is the hardware's
// estimate and one Newton step (relative error ~1e-7), a vector division being the slowest
// instruction of SiLU.
inline vf sigmoid(vf x) {
  const vf t = clamp(x, splat(-88.0f), splat(87.0f));
  const vf shift = splat(ROUNDING_SHIFT);
  const vf n = (t * -1.44269504088896341f + shift) - shift;
  const vf p = exp_poly<-1>(t + n * LN2);
#if defined(__AVX512F__)
  const vf d = 1.0f + reinterpret_cast<vf>(_mm512_scalef_ps(reinterpret_cast<__m512>(p),
                                                             reinterpret_cast<__m512>(n)));
#else
  const vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
  const vf d = 1.0f + p * reinterpret_cast<vf>(bits);
#endif
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
