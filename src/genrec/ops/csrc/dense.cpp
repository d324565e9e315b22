// The token-wise parts of an HSTU layer at inference, fused per block of rows, fp32, on CPU
// (genrec.ops.dense):
//
//   project  out[t] = SiLU( LayerNorm(x[t]) W^T )                    W [N, K]
//   output   out[t] = res[t] + ( LayerNorm(a[t]) * u[t] ) W^T + bias    W [N, K]
//   input    out[t] = items[ids[t]] * scale + positions[pos[t]], 0 where ids[t] == 0
//
// LayerNorm has no affine parameters (HSTU's). Unfused, each step is a pass over [T, N]
// floats in memory (T ~ 13k tokens of an evaluation batch, N = 200 for HSTU-large's U, V, Q,
// K): normalise, multiply, activate, gate and add each read and write the whole activation.
// Here a thread normalises a block of BLOCK rows into a small scratch that stays in L1, and the
// product's register tiles are activated (or gated and added) before they are stored, so the
// activation is written once (dense.h; attention.cpp runs the same steps per sequence inside a
// whole fused layer).
//
// The product: W^T is packed once per call into [K, Npad] (Npad = N rounded up to whole
// vectors, zeros past N). A tile is R rows by NV vectors of columns; per k it broadcasts
// the rows' k-th entries and does R * NV FMAs. The columns are split into chunks of at most
// NVMAX vectors, as even as possible; with AVX-512, a last part of at most 8 columns takes
// half vectors (dense::tile_half).
//
// The exp in SiLU is vectors.h's range-reduced degree-5 polynomial (relative error ~2e-7).
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

#include "vectors.h"
#include "dense.h"

// Row blocks of [0, T) over the threads, each through dense::block with the step's
// prepare and emit.
template <typename Step>
void blocks(int64_t T, int64_t K, const float* Wt, int64_t npad, int threads, const Step& step) {
  const int64_t count = (T + dense::BLOCK - 1) / dense::BLOCK;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
#endif
  {
    std::vector<float> scratch(dense::BLOCK * K);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
    for (int64_t b = 0; b < count; ++b) {
      const int64_t t0 = b * dense::BLOCK;
      dense::block(t0, std::min(dense::BLOCK, T - t0), K, Wt, npad, scratch.data(), step);
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
  const std::vector<float> wt = dense::pack_transposed(W, N, K, npad);
  blocks(T, K, wt.data(), npad, threads, dense::Project{x, ldx, K, eps, out, ldo, N, false});
}

// out [T, N] (row stride ldo) = res + (LayerNorm(a) * u) W^T + bias: a, u [T, K] (row strides
// lda, ldu), W [N, K], bias [N] or null, res [T, N] (row stride ldr) or null. out may be res.
void genrec_dense_output_f32(const float* a, int64_t lda, const float* u, int64_t ldu,
                             int64_t T, int64_t K, const float* W, int64_t N, const float* bias,
                             const float* res, int64_t ldr, float eps, float* out, int64_t ldo,
                             int threads) {
  const int64_t npad = round_up(N, VL);
  const std::vector<float> wt = dense::pack_transposed(W, N, K, npad);
  std::vector<float> bias_padded(npad, 0.0f);
  if (bias != nullptr) std::copy(bias, bias + N, bias_padded.begin());
  blocks(T, K, wt.data(), npad, threads,
         dense::Output{a, lda, u, ldu, K, eps, bias_padded.data(), res, ldr, out, ldo, N});
}

// out [T, d] = items[ids[t]] * scale + positions[pos[t]] (rows of d floats), zero rows where
// ids[t] == 0 (padding): a model's input embedding in one pass instead of five. Returns -1,
// or the first t whose id is outside [0, num_items) or position outside [0, num_positions)
// (nothing is read from the tables for it; the caller raises).
int64_t genrec_input_embedding_f32(const int64_t* ids, const int64_t* pos, int64_t T,
                                   const float* items, int64_t num_items,
                                   const float* positions, int64_t num_positions, int64_t d,
                                   float scale, float* out, int threads) {
  int64_t bad = T;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) reduction(min : bad)
#endif
  for (int64_t t = 0; t < T; ++t) {
    float* row = out + t * d;
    const int64_t id = ids[t], p = pos[t];
    if (id < 0 || id >= num_items || p < 0 || p >= num_positions) {
      bad = std::min(bad, t);
      continue;
    }
    if (id == 0) {
      std::fill(row, row + d, 0.0f);
      continue;
    }
    const float* item = items + id * d;
    const float* position = positions + p * d;
#pragma omp simd
    for (int64_t c = 0; c < d; ++c) row[c] = item[c] * scale + position[c];
  }
  return bad == T ? -1 : bad;
}

}  // extern "C"
