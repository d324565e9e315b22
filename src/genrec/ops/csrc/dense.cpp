// The token-wise parts of an HSTU layer at inference, fused per block of rows, fp32, on CPU
// (genrec.ops.dense):
//
//   project  out[t] = SiLU( LayerNorm(x[t]) W^T )                    W [N, K]
//   output   out[t] = res[t] + ( LayerNorm(a[t]) * u[t] ) W^T + bias    W [N, K]
//
// LayerNorm has no affine parameters (HSTU's). Unfused, each step is a pass over [T, N]
// floats in memory (T ~ 13k tokens of an evaluation batch, N = 200 for HSTU-large's U, V, Q,
// K): normalise, multiply, activate, gate and add each read and write the whole activation.
// Here a thread normalises a block of BLOCK rows into a small scratch that stays in L1, and the
// product's register tiles are activated (or gated and added) before they are stored, so the
// activation is written once.
//
// The product: W^T is packed once per call into [K, Npad] (Npad = N rounded up to whole
// vectors, zeros past N). A tile is R = 4 rows by NV vectors of columns; per k it broadcasts
// the rows' k-th entries and does R * NV FMAs (NV <= 6 with AVX-512: 24 accumulators). The
// columns are split into chunks of at most NVMAX vectors, as even as possible.
//
// The exp in SiLU is vectors.h's range-reduced degree-6 polynomial (relative error ~2e-7).
// Row blocks are split statically over the threads, and every result is computed by the same
// operations whatever the thread count. Built and loaded by genrec.ops.native.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

#if defined(__AVX512F__)
constexpr int VL = 16;
constexpr int R = 8;      // rows per register tile
constexpr int NVMAX = 3;  // 8 x 3 accumulators, 3 operands and a broadcast: 28 of 32 registers
#else
constexpr int VL = 8;
constexpr int R = 4;
constexpr int NVMAX = 2;  // 4 x 2 accumulators, 2 operands and a broadcast in 16 registers
#endif
constexpr int64_t BLOCK = 64;  // rows normalised at once into a thread's scratch
static_assert(BLOCK % R == 0, "a block is whole register tiles");

#include "vectors.h"

// the first `count` (< VL) lanes at p; the others 0
inline vf load_part(const float* p, int64_t count) {
  vf x{};
  for (int64_t l = 0; l < count; ++l) x[l] = p[l];
  return x;
}
inline void store_part(float* p, vf x, int64_t count) {
  for (int64_t l = 0; l < count; ++l) p[l] = x[l];
}

inline vf silu(vf x) { return x * sigmoid(x); }

// dst[0, K) = (x - mean(x)) / sqrt(var(x) + eps) for the K floats at x (two passes, float)
inline void normalise(const float* __restrict x, int64_t K, float eps, float* __restrict dst) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t c = 0; c < K; ++c) sum += x[c];
  const float mean = sum / static_cast<float>(K);
  float squares = 0.0f;
#pragma omp simd reduction(+ : squares)
  for (int64_t c = 0; c < K; ++c) squares += (x[c] - mean) * (x[c] - mean);
  const float rstd = 1.0f / std::sqrt(squares / static_cast<float>(K) + eps);
#pragma omp simd
  for (int64_t c = 0; c < K; ++c) dst[c] = (x[c] - mean) * rstd;
}

// Wt [K, npad] = W^T for W [N, K], zero in columns [N, npad)
std::vector<float> pack_transposed(const float* W, int64_t N, int64_t K, int64_t npad) {
  std::vector<float> wt(K * npad, 0.0f);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) wt[k * npad + n] = W[n * K + k];
  return wt;
}

// The tile of rows [0, R) of A [., K] (stride lda) times Wt's columns [c, c + NV * VL):
// acc[r][v] = sum_k A[r][k] * Wt[k][c + v * VL + lane], handed to emit(r, column, vector).
template <int NV, typename Emit>
inline void tile(const float* A, int64_t lda, const float* Wt, int64_t npad, int64_t K,
                 int64_t c, const Emit& emit) {
  vf acc[R][NV] = {};
  for (int64_t k = 0; k < K; ++k) {
    vf w[NV];
    for (int v = 0; v < NV; ++v) {
      w[v] = load(Wt + k * npad + c + v * VL);
      asm("" : "+v"(w[v]));  // keep it in a register: one load per k, not one per row
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

// Row blocks of [0, T) over the threads; prepare(t, scratch_row) fills a normalised row of
// the block's scratch A [BLOCK, K] and emit(t, column, vector) takes the product's vectors
// (rows of the last block past T are zero and never emitted).
template <typename Prepare, typename Emit>
void blocks(int64_t T, int64_t K, const float* Wt, int64_t npad, int threads,
            const Prepare& prepare, const Emit& emit) {
  const int64_t count = (T + BLOCK - 1) / BLOCK;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
#endif
  {
    std::vector<float> scratch(BLOCK * K);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
    for (int64_t block = 0; block < count; ++block) {
      const int64_t t0 = block * BLOCK, rows = std::min(BLOCK, T - t0);
      for (int64_t r = 0; r < rows; ++r) prepare(t0 + r, scratch.data() + r * K);
      const int64_t padded = round_up(rows, R);
      std::fill(scratch.begin() + rows * K, scratch.begin() + padded * K, 0.0f);
      product(scratch.data(), K, padded, Wt, npad, K, [&](int64_t r, int64_t col, vf x) {
        if (r < rows) emit(t0 + r, col, x);
      });
    }
  }
}

}  // namespace

extern "C" {

// out [T, N] (row stride ldo) = SiLU(LayerNorm(x) W^T), x [T, K] (row stride ldx), W [N, K].
void genrec_dense_project_f32(const float* x, int64_t ldx, int64_t T, int64_t K,
                              const float* W, int64_t N, float eps, float* out, int64_t ldo,
                              int threads) {
  const int64_t npad = round_up(N, VL);
  const std::vector<float> wt = pack_transposed(W, N, K, npad);
  blocks(
      T, K, wt.data(), npad, threads,
      [&](int64_t t, float* row) { normalise(x + t * ldx, K, eps, row); },
      [&](int64_t t, int64_t col, vf acc) {
        float* dst = out + t * ldo + col;
        if (col + VL <= N) store(dst, silu(acc));
        else store_part(dst, silu(acc), N - col);
      });
}

// out [T, N] (row stride ldo) = res + (LayerNorm(a) * u) W^T + bias: a, u [T, K] (row strides
// lda, ldu), W [N, K], bias [N] or null, res [T, N] (row stride ldr) or null. out may be res.
void genrec_dense_output_f32(const float* a, int64_t lda, const float* u, int64_t ldu,
                             int64_t T, int64_t K, const float* W, int64_t N, const float* bias,
                             const float* res, int64_t ldr, float eps, float* out, int64_t ldo,
                             int threads) {
  const int64_t npad = round_up(N, VL);
  const std::vector<float> wt = pack_transposed(W, N, K, npad);
  std::vector<float> bias_padded(npad, 0.0f);
  if (bias != nullptr) std::copy(bias, bias + N, bias_padded.begin());
  blocks(
      T, K, wt.data(), npad, threads,
      [&](int64_t t, float* row) {
        normalise(a + t * lda, K, eps, row);
        const float* gate = u + t * ldu;
#pragma omp simd
        for (int64_t c = 0; c < K; ++c) row[c] *= gate[c];
      },
      [&](int64_t t, int64_t col, vf acc) {
        const vf y = acc + load(bias_padded.data() + col);
        float* dst = out + t * ldo + col;
        if (col + VL <= N) {
          store(dst, res != nullptr ? y + load(res + t * ldr + col) : y);
        } else {
          const int64_t count = N - col;
          store_part(dst, res != nullptr ? y + load_part(res + t * ldr + col, count) : y, count);
        }
      });
}

}  // extern "C"
