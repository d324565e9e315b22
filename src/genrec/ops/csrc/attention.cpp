// Attention over jagged sequences on CPU, fp32, fused: HSTU's (genrec.ops.attention.native)
// and SASRec's causal softmax (genrec.ops.softmax_attention), forward and backward.
//
// Per sequence b (n tokens from row o) and head h, with allowed(i, j) the causal and
// candidate rule of genrec.ops.attention.reference:
//
//   HSTU     s_ij = alpha * q_i . k_j + pos[j - i + N - 1] + time[bucket_ij]   (the logits)
//            out_i = sum_j allowed(i, j) * SiLU(s_ij) / N * v_j
//   softmax  p_i = softmax over allowed j of alpha * q_i . k_j;  out_i = sum_j p~_ij v_j,
//            p~ = p * keep / (1 - dropout), keep drawn per pair from a counter-based hash
//
// A task is all heads of one sequence, one after the other, when there are sequences enough for
// the threads (a token's rows of all heads are adjacent, so one thread reads them from memory
// once), else one (sequence, head). A head
// walks its query rows in blocks of MR rows and keeps everything else in O(n * d) scratch: per
// block, S = Q K^T is one register-blocked product,
// the row policy (HSTU: bias, mask, SiLU; softmax: mask, softmax, dropout) turns it into the
// weights in place, and P V is a second product. Nothing n x n is written except, for the
// softmax in training, p (one float per allowed pair) for the backward; HSTU's backward
// recomputes its logits (Q K^T and the bias) per block instead, which costs about what reading
// them back from memory would, and keeps the memory O(n * d). The backward walks the same
// blocks: dP = dO V^T, the policy makes dS and the weights, then dQ = alpha dS K for the
// block's rows, and dK += alpha dS^T Q, dV += P^T dO as rank-MR updates of the task's key
// rows: no transpose and no n x n scratch either.
//
// HSTU's bias-table gradients are summed per (sequence, head) into [B * H, table] partials,
// then over them in index order: results do not depend on the thread count, on the grouping
// of heads into tasks, or on which thread ran which task. Its time buckets (one byte per pair, 0 where not allowed; every bucket is <= 145) are
// computed once per batch by exact integer comparison with the edges of
// reference.bucket_thresholds. The softmax's dropout keeps pair (task, i, j) when SplitMix64(seed + its index) >= p * 2^64, so
// the backward draws the same mask again and no mask is stored.
//
// Products and HSTU's rows use GCC/Clang vector extensions: 16 lanes where the compiler
// targets AVX-512 (MR = 8), 8 elsewhere (MR = 4); a row runs in whole vectors up to its block's
// padded width, with the keys past its end masked to 0. Built and loaded by genrec.ops.native (plain C ABI, no torch headers).

// GCC would turn the short copy and zero loops below back into memcpy / memset calls
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-tree-loop-distribute-patterns")
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
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

// MR * NVMAX accumulators and a few operands fit the 32 (16 without AVX-512) vector registers
constexpr int NVMAX = 2;  // vectors of one output row a product keeps in registers
#if defined(__AVX512F__)
constexpr int MR = 8;  // query rows per block
#else
constexpr int MR = 4;
#endif

// lanes [j0, j0 + VL) of a row that lie before `end`, as a lane mask
inline vi lanes_before(int64_t j0, int64_t end) {
  vi lane;
  for (int l = 0; l < VL; ++l) lane[l] = l;
  return lane < static_cast<int32_t>(std::min<int64_t>(end - j0, VL));
}

// table[idx[l]] for the VL bytes at idx (all of them readable and < the table's size)
inline vf gather(const float* table, const uint8_t* idx) {
#if defined(__AVX512F__)
  const __m512i at = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(idx)));
  return reinterpret_cast<vf>(_mm512_i32gather_ps(at, table, 4));
#elif defined(__AVX2__)
  const __m256i at = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(idx)));
  return reinterpret_cast<vf>(_mm256_i32gather_ps(table, at, 4));
#else
  vf out;
  for (int l = 0; l < VL; ++l) out[l] = table[idx[l]];
  return out;
#endif
}

// A float table of up to LOOKUP entries held as whole vectors (zeros past its size) and read
// VL lanes at a time by in-register permutes: on AVX-512 five two-vector permutes (32 entries
// each) and four blends cost about a third of a 16-lane gather from memory.
#if defined(__AVX512F__)
constexpr int64_t LOOKUP = 160;
#else
constexpr int64_t LOOKUP = 0;  // elsewhere the gather
#endif

// padded[idx[l]] for the VL bytes at idx (each < LOOKUP), padded [LOOKUP]: the table's vectors
// are loaded once, where the lookup is made, so that a loop keeps them in registers
struct Lookup {
#if defined(__AVX512F__)
  __m512 part[LOOKUP / 16];
  Lookup() = default;  // for a caller that never looks up (nothing is loaded)
  explicit Lookup(const float* padded) {
    for (int c = 0; c < LOOKUP / 16; ++c) part[c] = _mm512_loadu_ps(padded + 16 * c);
  }
  vf operator()(const uint8_t* idx) const {
    const __m512i at =
        _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(idx)));
    __m512 out = _mm512_permutex2var_ps(part[0], at, part[1]);
    for (int c = 1; c < LOOKUP / 32; ++c)
      out = _mm512_mask_mov_ps(out, _mm512_cmpge_epu32_mask(at, _mm512_set1_epi32(32 * c)),
                               _mm512_permutex2var_ps(part[2 * c], at, part[2 * c + 1]));
    return reinterpret_cast<vf>(out);
  }
#else
  const float* table = nullptr;
  Lookup() = default;
  explicit Lookup(const float* padded) : table(padded) {}
  vf operator()(const uint8_t* idx) const { return gather(table, idx); }
#endif
};

// Small copies and fills as plain loops: a libc call per 100-byte row costs more than the copy.
inline void copy_floats(float* __restrict dst, const float* __restrict src, int64_t count) {
  for (int64_t c = 0; c < count; ++c) dst[c] = src[c];
}
inline void zero_floats(float* dst, int64_t count) {
  for (int64_t c = 0; c < count; ++c) dst[c] = 0.0f;
}


// C[r][c] = sum_k A[r][k] * Bt[k][c] for r < MR, c < ncols (a multiple of VL).
void product_nt(const float* A, int64_t lda, const float* Bt, int64_t ldb, int64_t K,
                int64_t ncols, float* C, int64_t ldc) {
  int64_t c = 0;
  for (; c + 2 * VL <= ncols; c += 2 * VL) {
    vf acc0[MR] = {}, acc1[MR] = {};
    for (int64_t k = 0; k < K; ++k) {
      vf b0 = load(Bt + k * ldb + c), b1 = load(Bt + k * ldb + c + VL);
      for (int r = 0; r < MR; ++r) {
        vf a = splat(A[r * lda + k]);
        acc0[r] += a * b0;
        acc1[r] += a * b1;
      }
    }
    for (int r = 0; r < MR; ++r) {
      store(C + r * ldc + c, acc0[r]);
      store(C + r * ldc + c + VL, acc1[r]);
    }
  }
  if (c < ncols) {
    vf acc[MR] = {};
    for (int64_t k = 0; k < K; ++k) {
      vf b = load(Bt + k * ldb + c);
      for (int r = 0; r < MR; ++r) acc[r] += splat(A[r * lda + k]) * b;
    }
    for (int r = 0; r < MR; ++r) store(C + r * ldc + c, acc[r]);
  }
}

// out[r][v] = (sum_{k < K} P[r][k] * B[k][v]) * scale * then, NV vectors of each output row.
// k = 0 sets the accumulators (as dense::tile's), so that they are not a zeroed array in memory.
template <int NV>
void product_nn_part(const float* P, int64_t ldp, int64_t K, const float* B, int64_t ldb,
                     float* out, int64_t ldo, float scale, float then) {
  vf acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = K > 0 ? splat(P[r * ldp]) * load(B + v * VL) : vf{};
  for (int64_t k = 1; k < K; ++k) {
    vf b[NV];
    for (int v = 0; v < NV; ++v) b[v] = load(B + k * ldb + v * VL);
    for (int r = 0; r < MR; ++r) {
      vf a = splat(P[r * ldp + k]);
      for (int v = 0; v < NV; ++v) acc[r][v] += a * b[v];
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) store(out + r * ldo + v * VL, acc[r][v] * scale * then);
}

void product_nn(const float* P, int64_t ldp, int64_t K, const float* B, int64_t ldb,
                int64_t width, float* out, int64_t ldo, float scale, float then = 1.0f) {
  for (int64_t c = 0; c < width; c += NVMAX * VL) {
    switch (std::min<int64_t>(NVMAX, (width - c) / VL)) {
      case 1: product_nn_part<1>(P, ldp, K, B + c, ldb, out + c, ldo, scale, then); break;
      case 2: product_nn_part<2>(P, ldp, K, B + c, ldb, out + c, ldo, scale, then); break;
      default: break;
    }
  }
}

// D[j][v] += sum_r W[r][j] * X[r][v] for j < J: a rank-MR update of D's first J rows.
template <int NV>
void update_tn_part(const float* W, int64_t ldw, int64_t J, const float* X, int64_t ldx,
                    float* D, int64_t ldd) {
  vf x[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) x[r][v] = load(X + r * ldx + v * VL);
  for (int64_t j = 0; j < J; ++j) {
    vf d[NV];
    for (int v = 0; v < NV; ++v) d[v] = load(D + j * ldd + v * VL);
    for (int r = 0; r < MR; ++r) {
      vf a = splat(W[r * ldw + j]);
      for (int v = 0; v < NV; ++v) d[v] += a * x[r][v];
    }
    for (int v = 0; v < NV; ++v) store(D + j * ldd + v * VL, d[v]);
  }
}

void update_tn(const float* W, int64_t ldw, int64_t J, const float* X, int64_t ldx,
               int64_t width, float* D, int64_t ldd) {
  for (int64_t c = 0; c < width; c += NVMAX * VL) {
    switch (std::min<int64_t>(NVMAX, (width - c) / VL)) {
      case 1: update_tn_part<1>(W, ldw, J, X + c, ldx, D + c, ldd); break;
      case 2: update_tn_part<2>(W, ldw, J, X + c, ldx, D + c, ldd); break;
      default: break;
    }
  }
}

// The layout every entry point shares.
struct Problem {
  const int64_t* offsets;  // [B + 1]
  int64_t batch, heads, dqk, dv;
  float alpha;
  int causal;
  const int64_t* first_candidate;  // [B] n_b - c_b, or null
  const int64_t* square_offsets;   // [B + 1] sum of n_b^2 before sequence b
  int threads;

  int64_t length(int64_t b) const { return offsets[b + 1] - offsets[b]; }
  // allowed keys of row i are j < key_end(i) minus, for candidate rows, other candidates
  int64_t key_end(int64_t i, int64_t n) const { return causal ? i + 1 : n; }
  // where task (b, h)'s per-pair values (saved weights, time buckets of head 0) start
  int64_t pairs(int64_t b, int64_t h) const { return heads * square_offsets[b] + h * length(b) * length(b); }
};

// Tasks of `group` heads of one sequence (b, h0 .. h0 + group - 1) as b * (heads / group) +
// h0 / group, longest sequences first, for dynamic scheduling.
std::vector<int64_t> task_order(const Problem& p, int64_t group) {
  const int64_t per_sequence = p.heads / group;
  std::vector<int64_t> order(p.batch * per_sequence);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return p.length(a / per_sequence) > p.length(b / per_sequence);
  });
  return order;
}

// Heads per task: all of a sequence's heads when there are sequences enough to keep
// the threads busy, so that one thread reads a token's Q, K, V rows (adjacent across heads) from
// memory once; else one, so that a single long sequence still spreads over the threads.
int64_t heads_per_task(const Problem& p) {
  return p.batch >= 4 * static_cast<int64_t>(p.threads) ? p.heads : 1;
}

// The first column a candidate row i must skip (a candidate sees only non-candidates and
// itself), or end when the row has none.
inline int64_t candidate_start(const Problem& p, int64_t b, int64_t i, int64_t end) {
  if (p.first_candidate == nullptr) return end;
  const int64_t first = p.first_candidate[b];
  return i >= first ? std::min(first, end) : end;
}

template <typename T>
T* scratch(std::vector<T>& buffer, int64_t size) {
  if (static_cast<int64_t>(buffer.size()) < size) buffer.assign(size, T(0));
  return buffer.data();
}

// Copy rows [0, n) of a [T, H, d] slice (row stride `stride`) into dst [rows, ld], zero-padded.
void copy_rows(const float* src, int64_t stride, int64_t n, int64_t d, float* dst, int64_t ld,
               int64_t rows) {
  for (int64_t i = 0; i < rows; ++i) {
    float* out = dst + i * ld;
    if (i < n) {
      copy_floats(out, src + i * stride, d);
      zero_floats(out + d, ld - d);
    } else {
      zero_floats(out, ld);
    }
  }
}

// dst [d, ld] = the slice's rows [0, n) transposed, zero in columns [n, ld) (ld >= round_up(n,
// VL)): VL x VL blocks read from the rows (d floats of each, none past them), transposed in
// registers and stored as whole vectors.
void copy_transposed(const float* src, int64_t stride, int64_t n, int64_t d, float* dst,
                     int64_t ld) {
  const int64_t cols = round_up(n, VL);
  for (int64_t c = 0; c < d; ++c) zero_floats(dst + c * ld + cols, ld - cols);
  for (int64_t i0 = 0; i0 < n; i0 += VL) {
    for (int64_t c0 = 0; c0 < d; c0 += VL) {
      const int64_t count = std::min<int64_t>(VL, d - c0);
      const int64_t rows = std::min<int64_t>(VL, n - i0);
      vf m[VL];
#pragma GCC unroll 16
      for (int r = 0; r < VL; ++r) {
        const bool real = r < rows;  // the rows past n are zeros (no lane of them is read)
        m[r] = dense::load_part(src + (real ? (i0 + r) * stride + c0 : 0), real ? count : 0);
      }
      dense::transpose_block(m);
#pragma GCC unroll 16
      for (int c = 0; c < VL; ++c)
        if (c < count) store(dst + (c0 + c) * ld + i0, m[c]);
    }
  }
}

// -- the two functions, as row policies ----------------------------------------------------------
//
// forward_row(b, i, n, end, width, cand, pair, row, saved): row [width) holds q_i . k_j on
//   entry and the weights on exit (zero where not allowed, and past end up to width, a multiple
//   of VL; the output rows P V are then multiplied by output_scale()); saved (or null) receives
//   the row's saved values.
// backward_row(b, i, n, end, width, cand, pair, saved, prow, drow, partial): prow [width) holds
//   dP on entry and the weights on exit, drow receives dS (both zero where not allowed and past
//   end); `saved` is the forward's saved row, or q_i . k_j again for a policy that recomputes.
// `pair` is the index of (i, j = 0) among the task's pairs (for per-pair draws).

// zero the entries of a candidate row i (M-FALCON) in [cand, end) other than the diagonal
inline void mask_candidates(int64_t i, int64_t end, int64_t cand, float* row) {
  for (int64_t j = cand; j < end; ++j)
    if (j != i) row[j] = 0.0f;
}

struct Hstu {
  float alpha, inv_n;
  int64_t max_seq_len;
  const float* pos;  // [pos_size] or null
  int64_t pos_size;
  const float* time;  // [num_buckets] or null
  int64_t num_buckets;
  const uint8_t* buckets;  // per pair at square_offsets (0 where not allowed), VL bytes of slack
  const int64_t* square_offsets;
  int64_t pos_part, time_part;  // gradient partial sizes (0: not asked for)
  bool padded;  // `table` holds time, zeros after it (num_buckets <= LOOKUP)
  float table[LOOKUP > 0 ? LOOKUP : 1];
  // the backward recomputes the logits (Q K^T and the bias) instead of reading saved ones
  static constexpr bool recompute = true;

  int64_t partial_size() const { return pos_part + time_part; }
  // the forward's weights are SiLU(logits), and 1 / N multiplies each output row instead (one
  // multiplication per output value, not per pair)
  float output_scale() const { return inv_n; }

  // where row i's bias comes from: pos[base + j] (clamped unless `direct`), time[bk[j]]
  struct Bias {
    int64_t base;
    bool direct;  // base + j in the table for every j < width: plain vector loads
    const uint8_t* bk;
  };

  // row i's bias with its time buckets at bk (VL bytes readable past the row's width)
  Bias bias_at(int64_t i, int64_t width, const uint8_t* bk) const {
    const int64_t base = max_seq_len - 1 - i;  // index of j = 0
    return {base, base >= 0 && base + width - 1 < pos_size, time != nullptr ? bk : nullptr};
  }

  Bias bias_of(int64_t b, int64_t i, int64_t n, int64_t width) const {
    return bias_at(i, width, time != nullptr ? buckets + square_offsets[b] + i * n : nullptr);
  }

  // the logits of keys [j0, j0 + VL) from their alpha-less q . k: the time term from
  // times [j0, j0 + VL) when given (block_bias's), else looked up here (lut: table's)
  vf logits(const Bias& bias, int64_t j0, vf qk, const float* times, const Lookup& lut) const {
    vf s = alpha * qk;
    if (pos != nullptr) {
      vf table;
      if (bias.direct) {
        table = load(pos + bias.base + j0);
      } else {
        for (int l = 0; l < VL; ++l)
          table[l] = pos[std::min(std::max<int64_t>(bias.base + j0 + l, 0), pos_size - 1)];
      }
      s = alpha * qk + table;
    }
    if (time != nullptr) s += times != nullptr ? load(times + j0) : time_terms(bias.bk + j0, lut);
    return s;
  }

  // time[bk[l]] for the VL buckets at bk
  vf time_terms(const uint8_t* bk, const Lookup& lut) const {
    return padded ? lut(bk) : gather(time, bk);
  }

  // row [width): q . k on entry, SiLU(logits) before end and 0 from end on exit. Inlined
  // into the callers' row loops, which then keep its constants in registers across rows (as a
  // call it set them up again for every row of ~6 vectors: 4 % of a layer).
  __attribute__((always_inline)) void weights(const Bias& bias, const float* times, int64_t end,
                                              int64_t width, float* __restrict row) const {
    auto each = [&](const Lookup& lut) {
      for (int64_t j0 = 0; j0 < width; j0 += VL) {
        const vf s = logits(bias, j0, load(row + j0), times, lut);
        const vf y = s * sigmoid(s);
        store(row + j0, j0 + VL <= end ? y : lanes_before(j0, end) ? y : vf{});
      }
    };
    // the table's registers only where this row looks its time terms up
    if (times != nullptr || time == nullptr) each(Lookup());
    else each(Lookup(table));
  }

  // the time terms of rows i0 .. i0 + MR - 1 (those < n), [width) each at out + r * ld:
  // looked up once for all the heads of a task, not once per head
  void block_bias(int64_t b, int64_t i0, int64_t n, int64_t width, float* out,
                  int64_t ld) const {
    if (time == nullptr) return;
    const Lookup lut(table);
    for (int r = 0; r < MR && i0 + r < n; ++r) {
      const uint8_t* bk = bias_of(b, i0 + r, n, width).bk;
      for (int64_t j0 = 0; j0 < width; j0 += VL)
        store(out + r * ld + j0, time_terms(bk + j0, lut));
    }
  }

  // inlined into forward_heads' row loop, as weights into it (~1 % of a layer)
  __attribute__((always_inline)) void forward_row(int64_t b, int64_t i, int64_t n, int64_t end,
                                                  int64_t width, int64_t cand, int64_t,
                                                  float* __restrict row, float*,
                                                  const float* times) const {
    weights(bias_of(b, i, n, width), times, end, width, row);
    mask_candidates(i, end, cand, row);
  }

  void backward_row(int64_t b, int64_t i, int64_t n, int64_t end, int64_t width, int64_t cand,
                    int64_t, const float* __restrict qk, float* __restrict prow,
                    float* __restrict drow, float* partial) const {
    const Bias bias = bias_of(b, i, n, width);
    const Lookup lut(table);
    for (int64_t j0 = 0; j0 < width; j0 += VL) {
      const vf s = logits(bias, j0, load(qk + j0), nullptr, lut);
      const vf sig = sigmoid(s);
      vf ds = load(prow + j0) * sig * (1.0f + s * (1.0f - sig)) * inv_n;
      vf weight = s * sig * inv_n;
      if (j0 + VL > end) {
        const vi keep = lanes_before(j0, end);
        ds = keep ? ds : vf{};
        weight = keep ? weight : vf{};
      }
      store(drow + j0, ds);
      store(prow + j0, weight);
    }
    mask_candidates(i, end, cand, prow);
    mask_candidates(i, end, cand, drow);
    if (pos_part) {
      if (bias.direct) {
        float* table = partial + bias.base;
        for (int64_t j0 = 0; j0 < width; j0 += VL)
          store(table + j0, load(table + j0) + load(drow + j0));
      } else {
        for (int64_t j = 0; j < end; ++j)
          partial[std::min(std::max<int64_t>(bias.base + j, 0), pos_size - 1)] += drow[j];
      }
    }
    if (time_part) {
      float* sums = partial + pos_part;  // 4 interleaved sums per bucket
      for (int64_t j = 0; j < end; ++j) sums[4 * bias.bk[j] + (j & 3)] += drow[j];
    }
  }
};

// HSTU's policy, with the time table copied into registers' reach when it fits
Hstu hstu_policy(float alpha, int64_t max_seq_len, const float* pos, int64_t pos_size,
                 const float* time, int64_t num_buckets, const uint8_t* buckets,
                 const int64_t* square_offsets, int64_t pos_part = 0, int64_t time_part = 0) {
  Hstu policy{alpha,          1.0f / static_cast<float>(max_seq_len), max_seq_len, pos,
              pos_size,       time, num_buckets, buckets, square_offsets, pos_part, time_part,
              false,          {}};
  if (LOOKUP > 0 && time != nullptr && num_buckets <= LOOKUP) {
    std::copy(time, time + num_buckets, policy.table);
    policy.padded = true;
  }
  return policy;
}

inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

struct Softmax {
  float alpha;       // 1 / sqrt(d)
  float keep_scale;  // 1 / (1 - dropout), or 1
  uint64_t drop_below;  // a pair is dropped when its hash is below this (0: no dropout)
  uint64_t seed;

  static constexpr bool recompute = false;  // the backward reads the saved p

  int64_t partial_size() const { return 0; }
  float output_scale() const { return 1.0f; }

  // p~ = p * keep_scale where the pair is kept, 0 where dropped; out may be p (each element is
  // read before it is written, so the pointers are not restrict)
  void dropout(int64_t pair, int64_t end, const float* p, float* out) const {
    if (drop_below == 0) {
#pragma omp simd
      for (int64_t j = 0; j < end; ++j) out[j] = p[j] * keep_scale;
      return;
    }
    const uint64_t base = seed + static_cast<uint64_t>(pair);
#pragma omp simd
    for (int64_t j = 0; j < end; ++j)
      out[j] = splitmix64(base + static_cast<uint64_t>(j)) >= drop_below ? p[j] * keep_scale
                                                                        : 0.0f;
  }

  void block_bias(int64_t, int64_t, int64_t, int64_t, float*, int64_t) const {}  // none

  void forward_row(int64_t, int64_t i, int64_t, int64_t end, int64_t width, int64_t cand,
                   int64_t pair, float* __restrict row, float* __restrict saved,
                   const float*) const {
    float top = -INFINITY;
    for (int64_t j = 0; j < end; ++j) {
      row[j] *= alpha;
      if (j < cand || j == i) top = std::max(top, row[j]);
    }
#pragma omp simd
    for (int64_t j = 0; j < end; ++j) row[j] = exp_approx(row[j] - top);
    mask_candidates(i, end, cand, row);
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < end; ++j) sum += row[j];
    const float inv = 1.0f / sum;
#pragma omp simd
    for (int64_t j = 0; j < end; ++j) row[j] *= inv;
    if (saved != nullptr) copy_floats(saved, row, end);
    dropout(pair, end, row, row);
    zero_floats(row + end, width - end);
  }

  void backward_row(int64_t, int64_t, int64_t, int64_t end, int64_t width, int64_t, int64_t pair,
                    const float* __restrict p, float* __restrict prow, float* __restrict drow,
                    float*) const {
    // with p~ = p * keep * keep_scale and D = sum_j p~_j dP~_j (= rowsum(dO * O)):
    // dS = p * (dP~ * keep * keep_scale - D) = p~ * dP~ - p * D
    dropout(pair, end, p, drow);  // drow = p~ for now
    float row_term = 0.0f;
#pragma omp simd reduction(+ : row_term)
    for (int64_t j = 0; j < end; ++j) row_term += drow[j] * prow[j];
#pragma omp simd
    for (int64_t j = 0; j < end; ++j) {
      const float p_dropped = drow[j];
      drow[j] = p_dropped * prow[j] - p[j] * row_term;
      prow[j] = p_dropped;
    }
    zero_floats(prow + end, width - end);
    zero_floats(drow + end, width - end);
  }
};

Softmax softmax_policy(float scale, double dropout, uint64_t seed) {
  // a pair is dropped when its 64-bit hash is below dropout * 2^64
  const double threshold = std::ldexp(dropout, 64);
  const uint64_t below = dropout <= 0.0 ? 0
                         : threshold >= 18446744073709551615.0 ? ~0ull
                                                               : static_cast<uint64_t>(threshold);
  return Softmax{scale, dropout > 0.0 ? static_cast<float>(1.0 / (1.0 - dropout)) : 1.0f, below,
                 seed};
}

// -- the task loops --------------------------------------------------------------------------------

// A thread's scratch for forward heads, grown as needed and reused across its tasks.
struct ForwardScratch {
  std::vector<float> q, kt, v, s, o, bias;
};

// Heads h0 .. h0 + group - 1 of sequence b: q, k, v point at the sequence's first token's rows
// (row strides given, each row's [H, d] contiguous), out at its first output row (row stride
// out_stride, head h's dv floats at h * dv). out rows = scale * the heads' attention. Per block
// of MR query rows the policy's shared bias terms are computed once (block_bias; a lone head
// computes them in its rows instead, the same values), then each head runs its products and
// rows. saved: null, or per allowed pair at Problem::pairs(b, h) + i * n + j (what the
// policy's backward reads, unless it recomputes). The same operations whatever the group.
// `in_place`: q and v are read where they are, not copied, which needs q's rows readable up to
// a whole block (round_up(n, MR) rows) and round_up(dv, VL) floats readable at each head's v
// (what is read past the real values only reaches rows and columns that are discarded).
template <typename Policy>
void forward_heads(const Problem& p, const Policy& policy, int64_t b, int64_t h0, int64_t group,
                   const float* q, int64_t q_stride, const float* k, int64_t k_stride,
                   const float* v, int64_t v_stride, float* out, int64_t out_stride,
                   float scale, float* saved, ForwardScratch& w, bool in_place = false) {
  const int64_t n = p.length(b), dqk = p.dqk, dv = p.dv, wv = round_up(dv, VL);
  const int64_t rows = round_up(n, MR), cols = round_up(n, VL);
  // head h0 + g's Q at qs + g * q_head (row stride ldq), V at vs + g * v_head (ldv)
  const int64_t ldq = in_place ? q_stride : dqk, ldv = in_place ? v_stride : wv;
  const int64_t q_head = in_place ? dqk : rows * dqk, v_head = in_place ? dv : cols * wv;
  const float* qs = in_place ? q + h0 * dqk : scratch(w.q, group * rows * dqk);
  const float* vs = in_place ? v + h0 * dv : scratch(w.v, group * cols * wv);
  float* kt = scratch(w.kt, group * dqk * cols);
  float* s = scratch(w.s, MR * cols);
  float* acc = scratch(w.o, MR * wv);
  float* bias = scratch(w.bias, MR * cols);
  for (int64_t g = 0; g < group; ++g) {
    const int64_t h = h0 + g;
    if (!in_place) {
      copy_rows(q + h * dqk, q_stride, n, dqk, w.q.data() + g * q_head, dqk, rows);
      copy_rows(v + h * dv, v_stride, n, dv, w.v.data() + g * v_head, wv, cols);
    }
    copy_transposed(k + h * dqk, k_stride, n, dqk, kt + g * dqk * cols, cols);
  }
  for (int64_t i0 = 0; i0 < n; i0 += MR) {
    const int64_t block_end = p.causal ? std::min(n, i0 + MR) : n;  // keys of the block
    const int64_t width = round_up(block_end, VL);
    if (group > 1) policy.block_bias(b, i0, n, width, bias, cols);  // shared by the heads
    for (int64_t g = 0; g < group; ++g) {
      const int64_t h = h0 + g, pairs = p.pairs(b, h);
      product_nt(qs + g * q_head + i0 * ldq, ldq, kt + g * dqk * cols, cols, dqk, width, s,
                 cols);
      for (int r = 0; r < MR; ++r) {
        const int64_t i = i0 + r;
        float* row = s + r * cols;
        if (i >= n) {
          zero_floats(row, width);
          continue;
        }
        const int64_t end = p.key_end(i, n);
        policy.forward_row(b, i, n, end, width, candidate_start(p, b, i, end), pairs + i * n,
                           row, saved == nullptr ? nullptr : saved + pairs + i * n,
                           group > 1 ? bias + r * cols : nullptr);
      }
      product_nn(s, cols, block_end, vs + g * v_head, ldv, wv, acc, wv, policy.output_scale(),
                 scale);
      for (int r = 0; r < MR && i0 + r < n; ++r)
        copy_floats(out + (i0 + r) * out_stride + h * dv, acc + r * wv, dv);
    }
  }
}

// out [T, H, dv] (contiguous); q, k, v rows at the given strides (each row's [H, d]
// contiguous); saved as forward_heads'.
template <typename Policy>
void forward_tasks(const Problem& p, const Policy& policy, const float* q, int64_t q_stride,
                   const float* k, int64_t k_stride, const float* v, int64_t v_stride,
                   float* out, float* saved) {
  const int64_t group = heads_per_task(p);
  const std::vector<int64_t> order = task_order(p, group);
  const int64_t heads = p.heads;
#ifdef _OPENMP
#pragma omp parallel num_threads(p.threads)
#endif
  {
    ForwardScratch w;
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
    for (int64_t t = 0; t < static_cast<int64_t>(order.size()); ++t) {
      const int64_t b = order[t] / (heads / group), h0 = order[t] % (heads / group) * group;
      const int64_t o = p.offsets[b];
      if (p.length(b) == 0) continue;
      forward_heads(p, policy, b, h0, group, q + o * q_stride, q_stride, k + o * k_stride,
                    k_stride, v + o * v_stride, v_stride, out + o * heads * p.dv, heads * p.dv,
                    1.0f, saved, w);
    }
  }
}

// dq, dk [T, H, dqk] and dv_out [T, H, dv] (contiguous) from grad_out [T, H, dv] and the
// forward's saved values; the policy's per-task gradient partials at partial + task * size.
template <typename Policy>
void backward_tasks(const Problem& p, const Policy& policy, const float* grad_out,
                    int64_t g_stride, const float* q, int64_t q_stride, const float* k,
                    int64_t k_stride, const float* v, int64_t v_stride, const float* saved,
                    float* dq, float* dk, float* dv_out, float* partial) {
  const int64_t group = heads_per_task(p);
  const std::vector<int64_t> order = task_order(p, group);
  const int64_t heads = p.heads, dqk = p.dqk, dv = p.dv;
  const int64_t wq = round_up(dqk, VL), wv = round_up(dv, VL), part = policy.partial_size();
#ifdef _OPENMP
#pragma omp parallel num_threads(p.threads)
#endif
  {
    std::vector<float> q_buf, k_buf, vt_buf, g_buf, dk_buf, dv_buf, s_buf, ds_buf, o_buf,
        kt_buf, l_buf;
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
    for (int64_t t = 0; t < static_cast<int64_t>(order.size()); ++t) {
      const int64_t b = order[t] / (heads / group), h0 = order[t] % (heads / group) * group;
      const int64_t o = p.offsets[b], n = p.length(b);
      for (int64_t h = h0; h < h0 + group; ++h) {
        // one partial per (sequence, head) whatever the grouping: the same sums in the same order
        float* my_partial = partial + (b * heads + h) * part;
        zero_floats(my_partial, part);
        if (n == 0) continue;
        const int64_t rows = round_up(n, MR), cols = round_up(n, VL);
        float* qs = scratch(q_buf, rows * wq);
        float* ks = scratch(k_buf, cols * wq);
        float* vt = scratch(vt_buf, dv * cols);
        float* gs = scratch(g_buf, rows * wv);
        float* dks = scratch(dk_buf, cols * wq);
        float* dvs = scratch(dv_buf, cols * wv);
        float* pr = scratch(s_buf, MR * cols);  // dP, then the weights
        float* ds = scratch(ds_buf, MR * cols);
        float* acc = scratch(o_buf, MR * wq);
        copy_rows(q + o * q_stride + h * dqk, q_stride, n, dqk, qs, wq, rows);
        copy_rows(k + o * k_stride + h * dqk, k_stride, n, dqk, ks, wq, cols);
        copy_transposed(v + o * v_stride + h * dv, v_stride, n, dv, vt, cols);
        copy_rows(grad_out + o * g_stride + h * dv, g_stride, n, dv, gs, wv, rows);
        float* kt = nullptr;  // K^T and the block's logits, when the policy recomputes them
        float* block_logits = nullptr;
        if constexpr (Policy::recompute) {
          kt = scratch(kt_buf, wq * cols);
          block_logits = scratch(l_buf, MR * cols);
          copy_transposed(ks, wq, n, dqk, kt, cols);
        }
        zero_floats(dks, cols * wq);
        zero_floats(dvs, cols * wv);
        const int64_t pairs = p.pairs(b, h);
        for (int64_t i0 = 0; i0 < n; i0 += MR) {
          const int64_t block_end = p.causal ? std::min(n, i0 + MR) : n;
          const int64_t width = round_up(block_end, VL);
          product_nt(gs + i0 * wv, wv, vt, cols, dv, width, pr, cols);  // dP
          if constexpr (Policy::recompute)
            product_nt(qs + i0 * wq, wq, kt, cols, dqk, width, block_logits, cols);  // Q K^T
          for (int r = 0; r < MR; ++r) {
            const int64_t i = i0 + r;
            float* prow = pr + r * cols;
            float* drow = ds + r * cols;
            if (i >= n) {
              zero_floats(prow, width);
              zero_floats(drow, width);
              continue;
            }
            const int64_t end = p.key_end(i, n);
            const float* row_saved =
                Policy::recompute ? block_logits + r * cols : saved + pairs + i * n;
            policy.backward_row(b, i, n, end, width, candidate_start(p, b, i, end),
                                pairs + i * n, row_saved, prow, drow, my_partial);
          }
          product_nn(ds, cols, block_end, ks, wq, wq, acc, wq, p.alpha);  // dQ rows
          for (int r = 0; r < MR && i0 + r < n; ++r)
            copy_floats(dq + ((o + i0 + r) * heads + h) * dqk, acc + r * wq, dqk);
          update_tn(ds, cols, block_end, qs + i0 * wq, wq, wq, dks, wq);  // dK += dS^T Q
          update_tn(pr, cols, block_end, gs + i0 * wv, wv, wv, dvs, wv);  // dV += P^T dO
        }
        for (int64_t j = 0; j < n; ++j) {
          float* dk_row = dk + ((o + j) * heads + h) * dqk;
          for (int64_t c = 0; c < dqk; ++c) dk_row[c] = p.alpha * dks[j * wq + c];
          copy_floats(dv_out + ((o + j) * heads + h) * dv, dvs + j * wv, dv);
        }
      }
    }
  }
}

// bucket(gap) as genrec_hstu_time_buckets documents it
inline uint8_t time_bucket(int64_t gap, const int64_t* thresholds, int64_t num_thresholds,
                           int64_t num_buckets) {
  constexpr double per_octave = 0.6931471805599453 / 0.301;
  gap = gap < 0 ? -gap : gap;
  gap = gap < 1 ? 1 : gap;
  const float g = static_cast<float>(gap);
  uint32_t bits;
  std::memcpy(&bits, &g, sizeof bits);
  const double log2_low = static_cast<double>(static_cast<int32_t>(bits >> 23) - 127) +
                          static_cast<double>(bits & 0x7fffffu) * (1.0 / 8388608.0);
  int64_t k = static_cast<int64_t>((log2_low - 1e-4) * per_octave);  // truncates: >= -1
  k = std::min<int64_t>(std::max<int64_t>(k, 0), num_thresholds - 2);
  k += thresholds[k + 1] <= gap;
  return static_cast<uint8_t>(std::min(k, num_buckets - 1));
}

// The buckets of keys [j0, j0 + 8) of a row (those before end) into out[j0 ..]: time_bucket's
// steps on 8 gaps at once, the log2 estimate in double lanes as there; the guess is then
// fixed by the same exact integer comparison.
#if defined(__AVX512F__) && defined(__AVX512DQ__) && defined(__AVX512BW__) && \
    defined(__AVX512VL__)
constexpr bool VECTOR_BUCKETS = true;
inline void time_buckets8(const int64_t* ts, int64_t query_time, int64_t j0, int64_t end,
                          const int64_t* thresholds, int64_t num_thresholds,
                          int64_t num_buckets, uint8_t* out) {
  const __mmask8 lanes = static_cast<__mmask8>((1u << std::min<int64_t>(end - j0, 8)) - 1);
  const __m512i one = _mm512_set1_epi64(1);
  __m512i gap = _mm512_sub_epi64(_mm512_set1_epi64(query_time),
                                 _mm512_maskz_loadu_epi64(lanes, ts + j0));
  gap = _mm512_max_epi64(_mm512_abs_epi64(gap), one);
  const __m256i bits = _mm256_castps_si256(_mm512_cvtepi64_ps(gap));
  const __m256i exponent = _mm256_sub_epi32(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(127));
  const __m256i mantissa = _mm256_and_si256(bits, _mm256_set1_epi32(0x7fffff));
  const __m512d log2_low = _mm512_add_pd(
      _mm512_cvtepi32_pd(exponent),
      _mm512_mul_pd(_mm512_cvtepi32_pd(mantissa), _mm512_set1_pd(1.0 / 8388608.0)));
  const __m512d scaled = _mm512_mul_pd(_mm512_sub_pd(log2_low, _mm512_set1_pd(1e-4)),
                                       _mm512_set1_pd(0.6931471805599453 / 0.301));
  __m512i k = _mm512_cvttpd_epi64(scaled);
  k = _mm512_min_epi64(_mm512_max_epi64(k, _mm512_setzero_si512()),
                       _mm512_set1_epi64(num_thresholds - 2));
  const __m512i edge = _mm512_mask_i64gather_epi64(_mm512_setzero_si512(), lanes,
                                                   _mm512_add_epi64(k, one), thresholds, 8);
  k = _mm512_mask_add_epi64(k, _mm512_cmple_epi64_mask(edge, gap), k, one);
  k = _mm512_min_epi64(k, _mm512_set1_epi64(num_buckets - 1));
  _mm_mask_storeu_epi8(out + j0, lanes, _mm512_cvtepi64_epi8(k));
}
#else
constexpr bool VECTOR_BUCKETS = false;
inline void time_buckets8(const int64_t*, int64_t, int64_t, int64_t, const int64_t*, int64_t,
                          int64_t, uint8_t*) {}
#endif

// The time buckets of the last row of a sequence (n keys from ts, query time qt) into bk[0, n)
inline void last_row_buckets(const int64_t* ts, int64_t qt, int64_t n, const int64_t* thresholds,
                             int64_t num_thresholds, int64_t num_buckets, uint8_t* bk) {
  if constexpr (VECTOR_BUCKETS) {
    for (int64_t j0 = 0; j0 < n; j0 += 8)
      time_buckets8(ts, qt, j0, n, thresholds, num_thresholds, num_buckets, bk);
  } else {
    for (int64_t j = 0; j < n; ++j)
      bk[j] = time_bucket(qt - ts[j], thresholds, num_thresholds, num_buckets);
  }
}

// out [H, dv] = scale * the attention of a sequence's last row (query q [H, dqk]) over its n
// keys and values (rows from the sequence's first token at the given strides); bk: the row's
// time buckets (zero from n up to whole vectors), row: scratch of round_up(n, VL) floats.
// q . k_j for VL keys at a time: each key's products over dqk in vectors, then the VL vectors
// added across their lanes together (dense::lane_sums); the weighted sum of the values in
// vectors of dv, two accumulators over alternate keys (each FMA waits on the previous one's
// result otherwise).
inline void last_row_attention(const Hstu& policy, int64_t heads, int64_t dqk, int64_t dv,
                               const float* q, const float* k, int64_t k_stride, const float* v,
                               int64_t v_stride, int64_t n, const uint8_t* bk, float scale,
                               float* row, float* out) {
  const int64_t width = round_up(n, VL), qfull = dqk / VL * VL;
  for (int64_t h = 0; h < heads; ++h) {
    const float* qh = q + h * dqk;
    for (int64_t j0 = 0; j0 < n; j0 += VL) {
      vf part[VL];
      for (int l = 0; l < VL; ++l) {
        vf sum{};
        if (j0 + l < n) {
          const float* kj = k + (j0 + l) * k_stride + h * dqk;
          for (int64_t c = 0; c < qfull; c += VL) sum += load(qh + c) * load(kj + c);
          if (qfull < dqk)
            sum += dense::load_part(qh + qfull, dqk - qfull) *
                   dense::load_part(kj + qfull, dqk - qfull);
        }
        part[l] = sum;
      }
      store(row + j0, dense::lane_sums(part));  // zero past n
    }
    policy.weights(policy.bias_at(n - 1, width, bk), nullptr, n, width, row);
    for (int64_t c = 0; c < dv; c += VL) {
      const int64_t count = std::min<int64_t>(VL, dv - c);
      const float* vc = v + h * dv + c;
      vf even{}, odd{};
      int64_t j = 0;
      for (; j + 1 < n; j += 2) {
        even += row[j] * dense::load_part(vc + j * v_stride, count);
        odd += row[j + 1] * dense::load_part(vc + (j + 1) * v_stride, count);
      }
      if (j < n) even += row[j] * dense::load_part(vc + j * v_stride, count);
      const vf sum = (even + odd) * policy.output_scale() * scale;  // the composed path's order
      dense::store_part(out + h * dv + c, sum, count);
    }
  }
}

// Rows [0, n) of a sequence through the project step (its x rows and output in `step`), in
// blocks of dense::BLOCK rows normalised into `norm`.
inline void project_rows(const dense::Project& step, int64_t n, const float* wt, int64_t npad,
                         float* norm) {
  for (int64_t t0 = 0; t0 < n; t0 += dense::BLOCK)
    dense::block(t0, std::min(dense::BLOCK, n - t0), step.K, wt, npad, norm, step);
}

}  // namespace

extern "C" {

// Time bucket of every allowed pair (0 for the others), row i of sequence b at
// square_offsets[b] + i * n: bucket(qts_i - ts_j) of reference.time_buckets, i.e. the
// largest k < num_thresholds with thresholds[k] <= g = max(|gap|, 1), clamped to
// num_buckets - 1. The float's exponent and mantissa give log2(g) from below, within 0.0861
// (log2(1 + f) - f <= 0.0861 on [0, 1]), so guess = floor((estimate - 1e-4) * ln 2 / 0.301)
// is the exact bucket or one below it (0.0862 * 2.303 < 1); one integer compare decides.
void genrec_hstu_time_buckets(const int64_t* ts, const int64_t* qts, const int64_t* offsets,
                              int64_t batch, const int64_t* square_offsets,
                              const int64_t* thresholds, int64_t num_thresholds,
                              int64_t num_buckets, int causal, uint8_t* out, int threads) {
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
#endif
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t o = offsets[b], n = offsets[b + 1] - o;
    for (int64_t i = 0; i < n; ++i) {
      uint8_t* row = out + square_offsets[b] + i * n;
      const int64_t end = causal ? i + 1 : n;
      if constexpr (VECTOR_BUCKETS) {
        for (int64_t j0 = 0; j0 < end; j0 += 8)
          time_buckets8(ts + o, qts[o + i], j0, end, thresholds, num_thresholds, num_buckets,
                        row);
      } else {
        for (int64_t j = 0; j < end; ++j)
          row[j] = time_bucket(qts[o + i] - ts[o + j], thresholds, num_thresholds,
                               num_buckets);
      }
      std::fill(row + end, row + n, uint8_t{0});  // read (and masked) by whole-vector loads
    }
  }
}

void genrec_hstu_forward_f32(const float* q, int64_t q_stride, const float* k, int64_t k_stride,
                             const float* v, int64_t v_stride, const int64_t* offsets,
                             int64_t batch, int64_t heads, int64_t dqk, int64_t dv,
                             int64_t max_seq_len, float alpha, int causal,
                             const int64_t* first_candidate, const float* pos,
                             int64_t pos_size, const float* time, int64_t num_buckets,
                             const uint8_t* buckets, const int64_t* square_offsets,
                             float* out, int threads) {
  const Problem p{offsets, batch, heads, dqk, dv, alpha, causal, first_candidate,
                  square_offsets, threads};
  const Hstu policy = hstu_policy(alpha, max_seq_len, pos, pos_size, time, num_buckets,
                                        buckets, square_offsets);
  forward_tasks(p, policy, q, q_stride, k, k_stride, v, v_stride, out, nullptr);
}

// out [B, H, dv] = the causal HSTU attention of each sequence's last token (q_last [B, H, dqk]
// at row stride q_stride) over all of its sequence: one row of genrec_hstu_forward_f32, with
// that row's time buckets computed here (O(n) per sequence, no per-batch bucket buffer).
// Every sequence has at least one token.
void genrec_hstu_forward_last_f32(const float* q_last, int64_t q_stride, const float* k,
                                  int64_t k_stride, const float* v, int64_t v_stride,
                                  const int64_t* offsets, int64_t batch, int64_t heads,
                                  int64_t dqk, int64_t dv, int64_t max_seq_len, float alpha,
                                  const float* pos, int64_t pos_size, const float* time,
                                  int64_t num_buckets, const int64_t* ts, const int64_t* qts,
                                  const int64_t* thresholds, int64_t num_thresholds, float* out,
                                  int threads) {
  const Hstu policy = hstu_policy(alpha, max_seq_len, pos, pos_size, time, num_buckets,
                                        nullptr, nullptr);
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
#endif
  {
    std::vector<float> row_buf;
    std::vector<uint8_t> bucket_buf;
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 4)
#endif
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t o = offsets[b], n = offsets[b + 1] - o;
      float* row = scratch(row_buf, round_up(n, VL));
      uint8_t* bk = scratch(bucket_buf, round_up(n, VL) + VL);  // zero past n
      if (time != nullptr)
        last_row_buckets(ts + o, qts[o + n - 1], n, thresholds, num_thresholds, num_buckets, bk);
      last_row_attention(policy, heads, dqk, dv, q_last + b * q_stride, k + o * k_stride,
                         k_stride, v + o * v_stride, v_stride, n, bk, 1.0f, row,
                         out + b * heads * dv);
      std::fill(bk, bk + n, uint8_t{0});  // the next sequence's zero tail
    }
  }
}

// One whole HSTU layer at inference, a task per sequence (all heads), for batches of at least
// 4 sequences per thread:
//
//   U, V, Q, K = split(SiLU(LayerNorm(x) W1^T))             W1 [H * (2 dv + 2 dqk), d]
//   AV         = seq_scale[b] * HSTU attention (genrec_hstu_forward_f32's)
//   out        = x + (LayerNorm(AV) * U) W2^T + b2            W2 [d, H * dv], b2 [d] or null
//
// x, out [T, d] contiguous (distinct); seq_scale [B] or null (1). The same steps, in the same
// operations, as genrec_dense_project_f32, genrec_hstu_forward_f32 and genrec_dense_output_f32
// one after the other (so the same bits), but a sequence's U, V, Q, K and AV live in the
// thread's scratch while it is cache-resident instead of in [T, .] buffers in memory.
void genrec_hstu_layer_forward_f32(const float* x, int64_t d, const float* w1, const float* w2,
                                   const float* b2, const int64_t* offsets, int64_t batch,
                                   int64_t heads, int64_t dqk, int64_t dv,
                                   int64_t max_seq_len, float alpha, int causal,
                                   const int64_t* first_candidate, const float* pos,
                                   int64_t pos_size, const float* time, int64_t num_buckets,
                                   const uint8_t* buckets, const int64_t* square_offsets,
                                   const float* seq_scale, float eps, float* out, int threads) {
  const Problem p{offsets, batch, heads, dqk, dv, alpha, causal, first_candidate,
                  square_offsets, threads};
  const Hstu policy = hstu_policy(alpha, max_seq_len, pos, pos_size, time, num_buckets,
                                        buckets, square_offsets);
  const int64_t hv = heads * dv, width1 = heads * (2 * dv + 2 * dqk);
  const int64_t npad1 = round_up(width1, VL), npad2 = round_up(d, VL);
  // U, V, Q, K rows at stride ld1, wide enough for the last head's V read as whole vectors
  const int64_t ld1 = std::max(npad1, round_up(2 * hv - dv + round_up(dv, VL), VL));
  const std::vector<float> wt1 = dense::pack_transposed(w1, width1, d, npad1);
  const std::vector<float> wt2 = dense::pack_transposed(w2, d, hv, npad2);
  std::vector<float> bias(npad2, 0.0f);
  if (b2 != nullptr) std::copy(b2, b2 + d, bias.begin());
  const std::vector<int64_t> order = task_order(p, heads);
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
#endif
  {
    // a thread's scratch lives on across calls (no allocation and zeroing per layer)
    static thread_local ForwardScratch w;
    static thread_local std::vector<float> norm_buf, uvqk_buf, av_buf;
    float* norm = scratch(norm_buf, dense::BLOCK * std::max(d, hv));
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
    for (int64_t t = 0; t < static_cast<int64_t>(order.size()); ++t) {
      const int64_t b = order[t], o = offsets[b], n = p.length(b);
      if (n == 0) continue;
      // U, V, Q, K of the sequence's rows, whole blocks of them (forward_heads reads Q, V here)
      float* uvqk = scratch(uvqk_buf, round_up(n, MR) * ld1);
      float* av = scratch(av_buf, n * hv);
      project_rows({x + o * d, d, d, eps, uvqk, ld1, width1, true}, n, wt1.data(), npad1,
                   norm);
      const float scale = seq_scale != nullptr ? seq_scale[b] : 1.0f;
      forward_heads(p, policy, b, 0, heads, uvqk + 2 * hv, ld1, uvqk + 2 * hv + heads * dqk,
                    ld1, uvqk + hv, ld1, av, hv, scale, nullptr, w, true);
      const dense::Output output{av,    hv,          uvqk, ld1, hv,        eps,
                                 bias.data(), x + o * d, d,    out + o * d, d,  d};
      for (int64_t t0 = 0; t0 < n; t0 += dense::BLOCK)
        dense::block(t0, std::min(dense::BLOCK, n - t0), hv, wt2.data(), npad2, norm, output);
    }
  }
}

// The last layer at inference, for each sequence's last token only (a task per sequence):
//
//   V, K  = split(SiLU(LayerNorm(x) Wvk^T))     every token; Wvk [H dv + H dqk, d]
//   AV    = seq_scale[b] * the last row's attention (genrec_hstu_forward_last_f32's)
//   out_b = x_last + (LayerNorm(AV) * U_last) W2^T + b2
//
// uq_last [B, H dv + H dqk] (row stride ld_uq): each last token's U and Q, projected by the
// caller; x [T, d] contiguous, out [B, d]; every sequence has at least one token (the caller
// checks). The same operations as genrec_dense_project_f32,
// genrec_hstu_forward_last_f32 and genrec_dense_output_f32 one after the other, with a
// sequence's V and K in the thread's scratch instead of a [T, .] buffer in memory.
void genrec_hstu_layer_last_f32(const float* x, int64_t d, const float* w_vk,
                                const float* uq_last, int64_t ld_uq, const float* w2,
                                const float* b2, const int64_t* offsets, int64_t batch,
                                int64_t heads, int64_t dqk, int64_t dv, int64_t max_seq_len,
                                float alpha, const float* pos, int64_t pos_size,
                                const float* time, int64_t num_buckets, const int64_t* ts,
                                const int64_t* qts, const int64_t* thresholds,
                                int64_t num_thresholds, const float* seq_scale, float eps,
                                float* out, int threads) {
  const Hstu policy = hstu_policy(alpha, max_seq_len, pos, pos_size, time, num_buckets,
                                        nullptr, nullptr);
  const int64_t hv = heads * dv, width_vk = hv + heads * dqk;
  const int64_t npad_vk = round_up(width_vk, VL), npad2 = round_up(d, VL);
  const std::vector<float> wt_vk = dense::pack_transposed(w_vk, width_vk, d, npad_vk);
  const std::vector<float> wt2 = dense::pack_transposed(w2, d, hv, npad2);
  std::vector<float> bias(npad2, 0.0f);
  if (b2 != nullptr) std::copy(b2, b2 + d, bias.begin());
  Problem p{offsets, batch, heads, dqk, dv, alpha, 1, nullptr, nullptr, threads};
  const std::vector<int64_t> order = task_order(p, heads);
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
#endif
  {
    std::vector<float> norm_buf, vk_buf, row_buf, av_buf;
    std::vector<uint8_t> bucket_buf;
    float* norm = scratch(norm_buf, dense::BLOCK * std::max(d, hv));
    float* av = scratch(av_buf, hv);
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
    for (int64_t t = 0; t < static_cast<int64_t>(order.size()); ++t) {
      const int64_t b = order[t], o = offsets[b], n = offsets[b + 1] - o;
      float* vk = scratch(vk_buf, n * npad_vk);
      project_rows({x + o * d, d, d, eps, vk, npad_vk, width_vk, true}, n, wt_vk.data(),
                   npad_vk, norm);
      float* row = scratch(row_buf, round_up(n, VL));
      uint8_t* bk = scratch(bucket_buf, round_up(n, VL) + VL);  // zero past n
      if (time != nullptr)
        last_row_buckets(ts + o, qts[o + n - 1], n, thresholds, num_thresholds, num_buckets, bk);
      last_row_attention(policy, heads, dqk, dv, uq_last + b * ld_uq + hv, vk + hv, npad_vk, vk,
                         npad_vk, n, bk, seq_scale != nullptr ? seq_scale[b] : 1.0f, row, av);
      std::fill(bk, bk + n, uint8_t{0});
      const dense::Output output{av,          hv, uq_last + b * ld_uq,      ld_uq,       hv, eps,
                                 bias.data(), x + (o + n - 1) * d, d, out + b * d, d,  d};
      dense::block(0, 1, hv, wt2.data(), npad2, norm, output);
    }
  }
}

// d_pos [pos_size] and d_time [num_buckets] when non-null (overwritten), through the
// [tasks, table] partials `partial`.
void genrec_hstu_backward_f32(const float* grad_out, int64_t g_stride, const float* q,
                              int64_t q_stride, const float* k, int64_t k_stride,
                              const float* v, int64_t v_stride, const int64_t* offsets, int64_t batch, int64_t heads, int64_t dqk,
                              int64_t dv, int64_t max_seq_len, float alpha, int causal,
                              const int64_t* first_candidate, const float* pos,
                              int64_t pos_size, const float* time, int64_t num_buckets,
                              const uint8_t* buckets,
                              const int64_t* square_offsets, float* dq, float* dk,
                              float* dv_out, float* d_pos, float* d_time, float* partial,
                              int threads) {
  const Problem p{offsets, batch, heads, dqk, dv, alpha, causal, first_candidate,
                  square_offsets, threads};
  const int64_t pos_part = d_pos != nullptr ? pos_size : 0;
  const int64_t time_part = d_time != nullptr ? 4 * num_buckets : 0;
  const Hstu policy = hstu_policy(alpha, max_seq_len, pos, pos_size, time, num_buckets, buckets,
                                        square_offsets, pos_part, time_part);
  backward_tasks(p, policy, grad_out, g_stride, q, q_stride, k, k_stride, v, v_stride, nullptr,
                 dq, dk, dv_out, partial);
  // the tables' gradients: partials summed in task order, entries split over the threads
  const int64_t part = pos_part + time_part, tasks = batch * heads;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static)
#endif
  for (int64_t e = 0; e < part; ++e) {
    float sum = 0.0f;
    for (int64_t task = 0; task < tasks; ++task) sum += partial[task * part + e];
    if (e < pos_part) d_pos[e] = sum;
    else partial[e] = sum;  // task 0's slot is read only by this entry: reuse it
  }
  if (time_part) {
    const float* sums = partial + pos_part;
    for (int64_t bucket = 0; bucket < num_buckets; ++bucket)
      d_time[bucket] = sums[4 * bucket] + sums[4 * bucket + 1] + sums[4 * bucket + 2] +
                       sums[4 * bucket + 3];
  }
}

// Causal (or not) softmax attention with dropout on the weights; `probs` (or null) receives
// the weights before dropout for the backward. scale multiplies q . k (1 / sqrt(d)).
void genrec_softmax_forward_f32(const float* q, int64_t q_stride, const float* k,
                                int64_t k_stride, const float* v, int64_t v_stride,
                                const int64_t* offsets, int64_t batch, int64_t heads,
                                int64_t dqk, int64_t dv, float scale, int causal,
                                const int64_t* first_candidate, double dropout, uint64_t seed,
                                const int64_t* square_offsets, float* out, float* probs,
                                int threads) {
  const Problem p{offsets, batch, heads, dqk, dv, scale, causal, first_candidate,
                  square_offsets, threads};
  const Softmax policy = softmax_policy(scale, dropout, seed);
  forward_tasks(p, policy, q, q_stride, k, k_stride, v, v_stride, out, probs);
}

void genrec_softmax_backward_f32(const float* grad_out, int64_t g_stride, const float* q,
                                 int64_t q_stride, const float* k, int64_t k_stride,
                                 const float* v, int64_t v_stride, const float* probs,
                                 const int64_t* offsets, int64_t batch, int64_t heads,
                                 int64_t dqk, int64_t dv, float scale, int causal,
                                 const int64_t* first_candidate, double dropout, uint64_t seed,
                                 const int64_t* square_offsets, float* dq, float* dk,
                                 float* dv_out, int threads) {
  const Problem p{offsets, batch, heads, dqk, dv, scale, causal, first_candidate,
                  square_offsets, threads};
  const Softmax policy = softmax_policy(scale, dropout, seed);
  backward_tasks(p, policy, grad_out, g_stride, q, q_stride, k, k_stride, v, v_stride, probs,
                 dq, dk, dv_out, nullptr);
}

}  // extern "C"
