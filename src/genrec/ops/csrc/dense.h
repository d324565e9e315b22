// The token-wise steps of an HSTU layer at inference (genrec.ops.dense): a block of rows
// normalised into a small scratch, times a packed W^T in register tiles, and each tile's
// vectors activated (project) or gated and added (output) before they are stored. Shared by
// dense.cpp (the steps over a whole batch) and attention.cpp (a whole layer, one sequence at a
// time). Included inside the includer's anonymous namespace after vectors.h (VL, vf, load,
// store, splat, sigmoid); everything here is in namespace dense.
//
// genrec.ops.native keys its builds by this header's text as well as the sources'.

#pragma once

namespace dense {

#if defined(__AVX512F__)
constexpr int R = 8;      // rows per register tile
constexpr int NVMAX = 3;  // 8 x 3 accumulators, 3 operands and a broadcast: 28 of 32 registers
#else
constexpr int R = 4;
constexpr int NVMAX = 2;  // 4 x 2 accumulators, 2 operands and a broadcast in 16 registers
#endif
constexpr int64_t BLOCK = 64;  // rows normalised at once into a thread's scratch
static_assert(BLOCK % R == 0, "a block is whole register tiles");

// lanes [0, count) as a mask (count <= VL)
inline vi lanes_below(int64_t count) {
  vi lane;
  for (int l = 0; l < VL; ++l) lane[l] = l;
  return lane < static_cast<int32_t>(count);
}

// the first `count` (0 <= count <= VL) lanes at p, the others 0; nothing past them is read or
// written (masked: a lane left out never faults)
inline vf load_part(const float* p, int64_t count) {
#if defined(__AVX512F__)
  return reinterpret_cast<vf>(
      _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << count) - 1), p));
#elif defined(__AVX__)
  return reinterpret_cast<vf>(
      _mm256_maskload_ps(p, reinterpret_cast<__m256i>(lanes_below(count))));
#else
  vf x{};
  for (int64_t l = 0; l < count; ++l) x[l] = p[l];
  return x;
#endif
}
inline void store_part(float* p, vf x, int64_t count) {
#if defined(__AVX512F__)
  _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << count) - 1),
                        reinterpret_cast<__m512>(x));
#elif defined(__AVX__)
  _mm256_maskstore_ps(p, reinterpret_cast<__m256i>(lanes_below(count)),
                      reinterpret_cast<__m256>(x));
#else
  for (int64_t l = 0; l < count; ++l) p[l] = x[l];
#endif
}

// the sum of x's lanes, halving the vector each step
inline float lane_sum(vf x) {
#if defined(__AVX512F__)
  const __m512 z = reinterpret_cast<__m512>(x);
  const __m256 high = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(z), 1));
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(z), high);
#elif defined(__AVX__)
  const __m256 h = reinterpret_cast<__m256>(x);
#endif
#if defined(__AVX__)
  __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  q = _mm_add_ps(q, _mm_movehl_ps(q, q));
  q = _mm_add_ss(q, _mm_movehdup_ps(q));
  return _mm_cvtss_f32(q);
#else
  for (int half = VL / 2; half >= 1; half /= 2)
    for (int l = 0; l < half; ++l) x[l] += x[l + half];
  return x[0];
#endif
}

inline vf silu(vf x) { return x * sigmoid(x); }

// dst[0, K) = (x - mean(x)) / sqrt(var(x) + eps) for the K floats at x, times gate[0, K) when
// given: two passes in vectors, each summed lane-wise and then across the lanes
inline void normalise(const float* __restrict x, int64_t K, float eps, float* __restrict dst,
                      const float* __restrict gate = nullptr) {
  const int64_t full = K / VL * VL, tail = K - full;
  vf sum{};
  for (int64_t c = 0; c < full; c += VL) sum += load(x + c);
  if (tail > 0) sum += load_part(x + full, tail);
  const float mean = lane_sum(sum) / static_cast<float>(K);
  vf squares{};
  for (int64_t c = 0; c < full; c += VL) {
    const vf e = load(x + c) - mean;
    squares += e * e;
  }
  if (tail > 0) {
    const vf e = lanes_below(tail) ? load_part(x + full, tail) - mean : vf{};
    squares += e * e;
  }
  const float rstd = 1.0f / std::sqrt(lane_sum(squares) / static_cast<float>(K) + eps);
  for (int64_t c = 0; c < full; c += VL) {
    const vf y = (load(x + c) - mean) * rstd;
    store(dst + c, gate != nullptr ? y * load(gate + c) : y);
  }
  if (tail > 0) {
    const vf y = (load_part(x + full, tail) - mean) * rstd;
    store_part(dst + full, gate != nullptr ? y * load_part(gate + full, tail) : y, tail);
  }
}

// Columns [j0, j1) of Wt [K, npad] = W^T for W [N, K], zero in columns >= N: each k writes
// adjacent floats of Wt, so callers pack 16 columns at a time (a large W, such as an item
// table, packs at about memory speed) and may split the columns over threads
inline void pack_columns(const float* W, int64_t N, int64_t K, int64_t npad, int64_t j0,
                         int64_t j1, float* wt) {
  for (int64_t k = 0; k < K; ++k)
    for (int64_t j = j0; j < j1; ++j) wt[k * npad + j] = j < N ? W[j * K + k] : 0.0f;
}

// Wt [K, npad] = W^T for W [N, K], zero in columns [N, npad)
std::vector<float> pack_transposed(const float* W, int64_t N, int64_t K, int64_t npad) {
  std::vector<float> wt(K * npad);
  for (int64_t j0 = 0; j0 < npad; j0 += 16)
    pack_columns(W, N, K, npad, j0, std::min(npad, j0 + 16), wt.data());
  return wt;
}

// The tile of rows [0, R) of A [., K] (stride lda) times Wt's columns [c, c + NV * VL):
// acc[r][v] = sum_k A[r][k] * Wt[k][c + v * VL + lane], handed to emit(r, column, vector).
// Not inlined: inside a large caller GCC spills the accumulators to the stack. K >= 1: k = 0
// sets the accumulators (its product, which is what an FMA onto zero rounds to; a zeroed
// array costs GCC a memset of it per tile), the later k add to them.
template <int NV, typename Emit>
__attribute__((noinline)) void tile(const float* A, int64_t lda, const float* Wt, int64_t npad,
                                    int64_t K, int64_t c, const Emit& emit) {
  vf acc[R][NV];
  for (int64_t k = 0; k < K; ++k) {
    vf w[NV];
    for (int v = 0; v < NV; ++v) {
      w[v] = load(Wt + k * npad + c + v * VL);
#if defined(__AVX__)
      asm("" : "+v"(w[v]));  // keep it in a register: one load per k, not one per row
#endif
    }
    if (k == 0) {
      for (int r = 0; r < R; ++r)
        for (int v = 0; v < NV; ++v) acc[r][v] = splat(A[r * lda]) * w[v];
      continue;
    }
    for (int r = 0; r < R; ++r) {
      const vf a = splat(A[r * lda + k]);
      for (int v = 0; v < NV; ++v) acc[r][v] += a * w[v];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) emit(r, c + v * VL, acc[r][v]);
}

// Every tile of A [rows, K] (rows a multiple of R) times Wt, column chunks of <= NVMAX vectors.
template <typename Emit>
void product(const float* A, int64_t lda, int64_t rows, const float* Wt, int64_t npad,
             int64_t K, const Emit& emit) {
  const int64_t vectors = npad / VL;
  const int64_t chunks = (vectors + NVMAX - 1) / NVMAX;
  int64_t c = 0;
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    const int64_t nv = vectors / chunks + (chunk < vectors % chunks);
    for (int64_t r0 = 0; r0 < rows; r0 += R) {
      const float* a = A + r0 * lda;
      auto at = [&](int r, int64_t col, vf x) { emit(r0 + r, col, x); };
      switch (nv) {
        case 1: tile<1>(a, lda, Wt, npad, K, c, at); break;
        case 2: tile<2>(a, lda, Wt, npad, K, c, at); break;
        case 3: tile<3>(a, lda, Wt, npad, K, c, at); break;
        default: break;
      }
    }
    c += nv * VL;
  }
}

// Rows [t0, t0 + rows) (rows <= BLOCK) through `scratch` [BLOCK, K]: prepare(t, scratch_row)
// fills the normalised rows, the padding rows up to whole tiles are zeroed, and emit(t, column,
// vector) takes the product's vectors of the real rows.
template <typename Prepare, typename Emit>
void block(int64_t t0, int64_t rows, int64_t K, const float* Wt, int64_t npad, float* scratch,
           const Prepare& prepare, const Emit& emit) {
  for (int64_t r = 0; r < rows; ++r) prepare(t0 + r, scratch + r * K);
  const int64_t padded = round_up(rows, R);
  std::fill(scratch + rows * K, scratch + padded * K, 0.0f);
  product(scratch, K, padded, Wt, npad, K, [&](int64_t r, int64_t col, vf x) {
    if (r < rows) emit(t0 + r, col, x);
  });
}

// The project step's row preparation and epilogue: out[t] = SiLU(LayerNorm(x[t]) W^T) into
// N columns at row stride ldo (whole vectors up to npad when `padded`: SiLU(0) = 0 there).
struct Project {
  const float* x;
  int64_t ldx, K;
  float eps;
  float* out;
  int64_t ldo, N;
  bool padded;

  void prepare(int64_t t, float* row) const { normalise(x + t * ldx, K, eps, row); }
  void emit(int64_t t, int64_t col, vf acc) const {
    float* dst = out + t * ldo + col;
    if (padded || col + VL <= N) store(dst, silu(acc));
    else store_part(dst, silu(acc), N - col);
  }
};

// The output step's: out[t] = res[t] + (LayerNorm(a[t]) * u[t]) W^T + bias (bias padded to
// whole vectors with zeros; res may be null; out may be res).
struct Output {
  const float* a;
  int64_t lda;
  const float* u;
  int64_t ldu, K;
  float eps;
  const float* bias;
  const float* res;
  int64_t ldr;
  float* out;
  int64_t ldo, N;

  void prepare(int64_t t, float* row) const { normalise(a + t * lda, K, eps, row, u + t * ldu); }
  void emit(int64_t t, int64_t col, vf acc) const {
    const vf y = acc + load(bias + col);
    float* dst = out + t * ldo + col;
    if (col + VL <= N) {
      store(dst, res != nullptr ? y + load(res + t * ldr + col) : y);
    } else {
      const int64_t count = N - col;
      store_part(dst, res != nullptr ? y + load_part(res + t * ldr + col, count) : y, count);
    }
  }
};

}  // namespace dense
