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

// m[r][l] -> m[l][r]: a VL x VL block transposed in registers. AVX-512: four rounds of eight
// pairs of two-source permutes, round b swapping bit b of the row with bit b of the lane
// (m[i][l | b] with m[i | b][l] for the i, l whose bit b is clear); AVX: the usual unpacks,
// shuffles and 128-bit swaps.
inline void transpose_block(vf m[VL]) {
#if defined(__AVX512F__)
  const vi lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
#pragma GCC unroll 4
  for (int b = 1; b < VL; b *= 2) {
    // indices into (m[i], m[i | b]), whose lanes are 0..15 and 16..31
    const vi low = (lane & b) != 0 ? (lane ^ b) + VL : lane;
    const vi high = (lane & b) != 0 ? lane + VL : lane | b;
#pragma GCC unroll 16
    for (int i = 0; i < VL; ++i) {
      if (i & b) continue;
      const __m512 x = reinterpret_cast<__m512>(m[i]), y = reinterpret_cast<__m512>(m[i | b]);
      m[i] = reinterpret_cast<vf>(_mm512_permutex2var_ps(x, reinterpret_cast<__m512i>(low), y));
      m[i | b] =
          reinterpret_cast<vf>(_mm512_permutex2var_ps(x, reinterpret_cast<__m512i>(high), y));
    }
  }
#elif defined(__AVX__)
  __m256 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(reinterpret_cast<__m256>(m[i]), reinterpret_cast<__m256>(m[i + 1]));
    t[i + 1] =
        _mm256_unpackhi_ps(reinterpret_cast<__m256>(m[i]), reinterpret_cast<__m256>(m[i + 1]));
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    m[i] = reinterpret_cast<vf>(_mm256_permute2f128_ps(u[i], u[i + 4], 0x20));
    m[i + 4] = reinterpret_cast<vf>(_mm256_permute2f128_ps(u[i], u[i + 4], 0x31));
  }
#else
  for (int r = 0; r < VL; ++r)
    for (int l = r + 1; l < VL; ++l) std::swap(m[r][l], m[l][r]);
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

// sqrt of each lane (correctly rounded, as std::sqrt)
inline vf sqrt_lanes(vf x) {
#if defined(__AVX512F__)
  return reinterpret_cast<vf>(_mm512_sqrt_ps(reinterpret_cast<__m512>(x)));
#elif defined(__AVX__)
  return reinterpret_cast<vf>(_mm256_sqrt_ps(reinterpret_cast<__m256>(x)));
#else
  for (int l = 0; l < VL; ++l) x[l] = std::sqrt(x[l]);
  return x;
#endif
}

// lane r = lane_sum(part[r]) for each r, with lane_sum's bits: the vectors transposed, then
// added as the same halving tree (part is overwritten)
inline vf lane_sums(vf part[VL]) {
  transpose_block(part);
  for (int half = VL / 2; half >= 1; half /= 2)
    for (int l = 0; l < half; ++l) part[l] += part[l + half];
  return part[0];
}

// Rows [0, rows) of x (stride ldx) over K floats to dst (stride K): (x - mean) / sqrt(var +
// eps), times gate's row (stride ldg) when given. Each row is summed in lane vectors in two
// passes (its mean, then its squared deviations), and VL rows' sums are added across the lanes
// together (lane_sums), so that their mean, sqrt and division are one vector operation each and
// the rows' latencies overlap; every row gets what it would get alone.
inline void normalise_rows(const float* __restrict x, int64_t ldx, int64_t rows, int64_t K,
                           float eps, float* __restrict dst, const float* __restrict gate,
                           int64_t ldg) {
  const int64_t full = K / VL * VL, tail = K - full;
  const float size = static_cast<float>(K);
  for (int64_t r0 = 0; r0 < rows; r0 += VL) {
    const int64_t group = std::min<int64_t>(VL, rows - r0);
    vf part[VL];
    for (int r = 0; r < VL; ++r) {
      vf sum{};
      const float* row = x + (r0 + r) * ldx;
      if (r < group) {
        for (int64_t c = 0; c < full; c += VL) sum += load(row + c);
        if (tail > 0) sum += load_part(row + full, tail);
      }
      part[r] = sum;
    }
    const vf mean = lane_sums(part) / size;
    for (int r = 0; r < VL; ++r) {
      vf squares{};
      const float* row = x + (r0 + r) * ldx;
      if (r < group) {
        for (int64_t c = 0; c < full; c += VL) {
          const vf e = load(row + c) - mean[r];
          squares += e * e;
        }
        if (tail > 0) {
          const vf e = lanes_below(tail) ? load_part(row + full, tail) - mean[r] : vf{};
          squares += e * e;
        }
      }
      part[r] = squares;
    }
    const vf rstd = 1.0f / sqrt_lanes(lane_sums(part) / size + eps);
    for (int64_t r = 0; r < group; ++r) {
      const float* row = x + (r0 + r) * ldx;
      const float* g = gate != nullptr ? gate + (r0 + r) * ldg : nullptr;
      float* out = dst + (r0 + r) * K;
      for (int64_t c = 0; c < full; c += VL) {
        const vf y = (load(row + c) - mean[r]) * rstd[r];
        store(out + c, g != nullptr ? y * load(g + c) : y);
      }
      if (tail > 0) {
        const vf y = (load_part(row + full, tail) - mean[r]) * rstd[r];
        store_part(out + full, g != nullptr ? y * load_part(g + full, tail) : y, tail);
      }
    }
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

#if defined(__AVX512F__)
// A product's last columns, when no more than HALF of them are left after its whole vectors,
// are taken in half vectors: 8 lanes cost half a 16-lane FMA on cores that split 512-bit
// operations in two (Zen 4) and no more than one elsewhere, where a whole vector would spend
// its upper lanes on zero columns (HSTU's output step: 50 columns = 3 vectors and 2 columns).
constexpr int HALF = VL / 2;
typedef float vh __attribute__((vector_size(HALF * 4)));
typedef float vhu __attribute__((vector_size(HALF * 4), aligned(4)));

// tile<1>'s product over Wt's columns [c, c + HALF) in half vectors, each row's handed to emit
// as a whole vector whose lanes from HALF on are +0 (lanes below HALF: tile<1>'s bits)
template <typename Emit>
__attribute__((noinline)) void tile_half(const float* A, int64_t lda, const float* Wt,
                                         int64_t npad, int64_t K, int64_t c, const Emit& emit) {
  vh acc[R];
  for (int64_t k = 0; k < K; ++k) {
    vh w = *reinterpret_cast<const vhu*>(Wt + k * npad + c);
    asm("" : "+v"(w));
    if (k == 0) {
      for (int r = 0; r < R; ++r) acc[r] = (A[r * lda] - vh{}) * w;
      continue;
    }
    for (int r = 0; r < R; ++r) acc[r] += (A[r * lda + k] - vh{}) * w;
  }
  for (int r = 0; r < R; ++r)
    emit(r, c, reinterpret_cast<vf>(_mm512_zextps256_ps512(reinterpret_cast<__m256>(acc[r]))));
}
#else
constexpr int HALF = 0;  // whole vectors only
template <typename Emit>
void tile_half(const float*, int64_t, const float*, int64_t, int64_t, int64_t, const Emit&) {}
#endif

// Every tile of A [rows, K] (rows a multiple of R) times Wt's columns [0, ncols) (ncols <= npad,
// npad a multiple of VL, Wt zero in columns [ncols, npad); ncols = npad by default): whole
// vectors in chunks of <= NVMAX, and the last <= HALF columns in half vectors. emit(r, column,
// vector) gets whole vectors, their lanes past ncols zero.
template <typename Emit>
void product(const float* A, int64_t lda, int64_t rows, const float* Wt, int64_t npad,
             int64_t K, const Emit& emit, int64_t ncols = -1) {
  if (ncols < 0) ncols = npad;
  const int64_t rest = ncols % VL;
  const bool half = rest > 0 && rest <= HALF;
  const int64_t vectors = ncols / VL + (rest > 0 && !half);
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
  if (half)
    for (int64_t r0 = 0; r0 < rows; r0 += R)
      tile_half(A + r0 * lda, lda, Wt, npad, K, c,
                [&](int r, int64_t col, vf x) { emit(r0 + r, col, x); });
}

// Rows [t0, t0 + rows) (rows <= BLOCK) of a step (Project, Output) through `scratch` [BLOCK,
// K]: step.prepare(t0, rows, scratch) fills the normalised rows, the padding rows up to whole
// tiles are zeroed, and step.emit(t, column, vector) takes the product's vectors of the real
// rows.
template <typename Step>
void block(int64_t t0, int64_t rows, int64_t K, const float* Wt, int64_t npad, float* scratch,
           const Step& step) {
  step.prepare(t0, rows, scratch);
  const int64_t padded = round_up(rows, R);
  std::fill(scratch + rows * K, scratch + padded * K, 0.0f);
  product(
      scratch, K, padded, Wt, npad, K,
      [&](int64_t r, int64_t col, vf x) {
        if (r < rows) step.emit(t0 + r, col, x);
      },
      step.N);
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

  void prepare(int64_t t0, int64_t rows, float* dst) const {
    normalise_rows(x + t0 * ldx, ldx, rows, K, eps, dst, nullptr, 0);
  }
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

  void prepare(int64_t t0, int64_t rows, float* dst) const {
    normalise_rows(a + t0 * lda, lda, rows, K, eps, dst, u + t0 * ldu, ldu);
  }
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
