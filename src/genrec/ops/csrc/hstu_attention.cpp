// HSTU attention on CPU, fp32, fused (genrec.ops.attention.native): forward and backward.
//
// Per sequence b (n tokens from row o) and head h, with allowed(i, j) the causal and
// candidate rule of genrec.ops.attention.reference:
//
//   s_ij   = alpha * q_i . k_j + pos[j - i + N - 1] + time[bucket_ij]     (the logits)
//   out_i  = sum_j allowed(i, j) * SiLU(s_ij) / N * v_j
//
// One task is one (sequence, head). A task walks its query rows in blocks of MR rows and keeps
// everything else in O(n * d) scratch: per block, S = Q K^T is one register-blocked product,
// the bias, mask and SiLU are applied to it in place, and P V is a second product. Nothing
// n x n is written except, for training, the logits the backward reads back (one float per
// allowed pair). The backward walks the same blocks: dP = dO V^T, then dS and P from the saved
// logits, then dQ = alpha dS K for the block's rows, and dK += alpha dS^T Q, dV += P^T dO as
// rank-MR updates of the task's key rows, so no transpose and no n x n scratch either.
//
// The bias tables' gradients are summed per task into [tasks, table] partials, then over tasks
// in task order: results do not depend on the thread count or on which thread ran which task.
// Time buckets (one byte per allowed pair; every bucket is <= 145) are computed once per batch
// by exact integer comparison with the edges of reference.bucket_thresholds.
//
// Products use GCC/Clang vector extensions: 16 lanes where the compiler targets AVX-512,
// 8 elsewhere. Built and loaded by genrec.ops.native (plain C ABI, no torch headers).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

#if defined(__AVX512F__)
constexpr int VL = 16;     // floats per vector
constexpr int NVMAX = 4;   // vectors of one output row a product keeps in registers
#else
constexpr int VL = 8;
constexpr int NVMAX = 2;
#endif
constexpr int MR = 4;      // query rows per block

typedef float vf __attribute__((vector_size(VL * 4)));
typedef float vfu __attribute__((vector_size(VL * 4), aligned(4)));

inline vf load(const float* p) { return *reinterpret_cast<const vfu*>(p); }
inline void store(float* p, vf x) { *reinterpret_cast<vfu*>(p) = x; }
inline vf splat(float s) { return vf{} + s; }
inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// exp(x) for x in float range: 2^n * e^r with |r| <= ln2 / 2 and a degree-6 polynomial
// (relative error ~2e-7); written so that compilers vectorise the loops that call it.
inline float exp_approx(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float shift = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  float n = (x * 1.44269504088896341f + shift) - shift;
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

inline float sigmoid(float x) { return 1.0f / (1.0f + exp_approx(-x)); }

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

// out[r][v] = scale * sum_{k < K} P[r][k] * B[k][v], NV vectors of each output row.
template <int NV>
void product_nn_part(const float* P, int64_t ldp, int64_t K, const float* B, int64_t ldb,
                     float* out, int64_t ldo, float scale) {
  vf acc[MR][NV] = {};
  for (int64_t k = 0; k < K; ++k) {
    vf b[NV];
    for (int v = 0; v < NV; ++v) b[v] = load(B + k * ldb + v * VL);
    for (int r = 0; r < MR; ++r) {
      vf a = splat(P[r * ldp + k]);
      for (int v = 0; v < NV; ++v) acc[r][v] += a * b[v];
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) store(out + r * ldo + v * VL, acc[r][v] * scale);
}

void product_nn(const float* P, int64_t ldp, int64_t K, const float* B, int64_t ldb,
                int64_t width, float* out, int64_t ldo, float scale) {
  for (int64_t c = 0; c < width; c += NVMAX * VL) {
    switch (std::min<int64_t>(NVMAX, (width - c) / VL)) {
      case 1: product_nn_part<1>(P, ldp, K, B + c, ldb, out + c, ldo, scale); break;
      case 2: product_nn_part<2>(P, ldp, K, B + c, ldb, out + c, ldo, scale); break;
#if defined(__AVX512F__)
      case 3: product_nn_part<3>(P, ldp, K, B + c, ldb, out + c, ldo, scale); break;
      case 4: product_nn_part<4>(P, ldp, K, B + c, ldb, out + c, ldo, scale); break;
#endif
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
#if defined(__AVX512F__)
      case 3: update_tn_part<3>(W, ldw, J, X + c, ldx, D + c, ldd); break;
      case 4: update_tn_part<4>(W, ldw, J, X + c, ldx, D + c, ldd); break;
#endif
      default: break;
    }
  }
}

// The arguments every entry point shares.
struct Problem {
  const int64_t* offsets;  // [B + 1]
  int64_t batch, heads, dqk, dv;
  int64_t max_seq_len;  // N
  float alpha;
  int causal;
  const int64_t* first_candidate;  // [B] n_b - c_b, or null
  const float* pos;                 // [pos_size] or null
  int64_t pos_size;
  const float* time;                // [num_buckets] or null
  int64_t num_buckets;
  const uint8_t* buckets;           // time buckets of allowed pairs, at square_offsets
  const int64_t* square_offsets;    // [B + 1] sum of n_b^2 before sequence b
  int threads;

  int64_t length(int64_t b) const { return offsets[b + 1] - offsets[b]; }
  // allowed keys of row i are j < key_end(i) minus, for candidate rows, other candidates
  int64_t key_end(int64_t i, int64_t n) const { return causal ? i + 1 : n; }
};

// Tasks (b, h), longest sequences first, for dynamic scheduling.
std::vector<int64_t> task_order(const Problem& p) {
  std::vector<int64_t> order(p.batch * p.heads);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return p.length(a / p.heads) > p.length(b / p.heads);
  });
  return order;
}

// Logits of row i for keys j < end into s (in place: s holds alpha-less Q K^T on entry).
inline void row_logits(const Problem& p, int64_t b, int64_t i, int64_t n, int64_t end,
                       float* __restrict s) {
  const float alpha = p.alpha;
  if (p.pos != nullptr) {
    const int64_t base = p.max_seq_len - 1 - i;  // index of j = 0
    if (base >= 0 && base + end - 1 < p.pos_size) {
      const float* __restrict pos = p.pos + base;
#pragma omp simd
      for (int64_t j = 0; j < end; ++j) s[j] = alpha * s[j] + pos[j];
    } else {
      for (int64_t j = 0; j < end; ++j)
        s[j] = alpha * s[j] + p.pos[std::min(std::max<int64_t>(base + j, 0), p.pos_size - 1)];
    }
  } else {
#pragma omp simd
    for (int64_t j = 0; j < end; ++j) s[j] *= alpha;
  }
  if (p.time != nullptr) {
    const uint8_t* __restrict bk = p.buckets + p.square_offsets[b] + i * n;
    const float* __restrict table = p.time;
#pragma omp simd
    for (int64_t j = 0; j < end; ++j) s[j] += table[bk[j]];
  }
}

// Whether candidate row i must skip key j < end (a candidate sees only non-candidates and
// itself); returns the first candidate column, or end when the row has no such keys.
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
      std::memcpy(out, src + i * stride, d * sizeof(float));
      std::fill(out + d, out + ld, 0.0f);
    } else {
      std::fill(out, out + ld, 0.0f);
    }
  }
}

// dst [d, ld] = the slice's rows [0, n) transposed, zero-padded to ld columns. The rows are
// first copied whole into `rows` [n, d] (sequential reads of memory the cache may not hold),
// then transposed from there.
void copy_transposed(const float* src, int64_t stride, int64_t n, int64_t d, float* dst,
                     int64_t ld, float* rows) {
  for (int64_t i = 0; i < n; ++i) std::memcpy(rows + i * d, src + i * stride, d * sizeof(float));
  std::fill(dst, dst + d * ld, 0.0f);
  for (int64_t i0 = 0; i0 < n; i0 += 16) {
    const int64_t i1 = std::min(n, i0 + 16);
    for (int64_t c = 0; c < d; ++c)
      for (int64_t i = i0; i < i1; ++i) dst[c * ld + i] = rows[i * d + c];
  }
}

}  // namespace

extern "C" {

// Time bucket of every allowed pair: bucket(qts_i - ts_j) of reference.time_buckets, i.e. the
// largest k < num_thresholds with thresholds[k] <= g = max(|gap|, 1), clamped to
// num_buckets - 1. The float's exponent and mantissa give log2(g) from below, within 0.0861
// (log2(1 + f) - f <= 0.0861 on [0, 1]), so guess = floor((estimate - 1e-4) * ln 2 / 0.301)
// is the exact bucket or one below it (0.0862 * 2.303 < 1); one integer compare decides.
void genrec_hstu_time_buckets(const int64_t* ts, const int64_t* qts, const int64_t* offsets,
                              int64_t batch, const int64_t* square_offsets,
                              const int64_t* thresholds, int64_t num_thresholds,
                              int64_t num_buckets, int causal, uint8_t* out, int threads) {
  const double per_octave = 0.6931471805599453 / 0.301;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
#endif
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t o = offsets[b], n = offsets[b + 1] - o;
    for (int64_t i = 0; i < n; ++i) {
      uint8_t* row = out + square_offsets[b] + i * n;
      const int64_t end = causal ? i + 1 : n, q = qts[o + i];
      for (int64_t j = 0; j < end; ++j) {
        int64_t gap = q - ts[o + j];
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
        row[j] = static_cast<uint8_t>(std::min(k, num_buckets - 1));
      }
    }
  }
}

// out [T, H, dv] (contiguous); q, k, v rows at the given strides (each row's [H, d] contiguous).
// logits: null, or the allowed pairs' logits at H * square_offsets[b] + h * n^2 + i * n + j.
void genrec_hstu_forward_f32(const float* q, int64_t q_stride, const float* k, int64_t k_stride,
                             const float* v, int64_t v_stride, const int64_t* offsets,
                             int64_t batch, int64_t heads, int64_t dqk, int64_t dv,
                             int64_t max_seq_len, float alpha, int causal,
                             const int64_t* first_candidate, const float* pos,
                             int64_t pos_size, const float* time, int64_t num_buckets,
                             const uint8_t* buckets, const int64_t* square_offsets,
                             float* out, float* logits, int threads) {
  const Problem p{offsets, batch, heads, dqk, dv, max_seq_len, alpha, causal, first_candidate,
                  pos, pos_size, time, num_buckets, buckets, square_offsets, threads};
  const std::vector<int64_t> order = task_order(p);
  const int64_t wv = round_up(dv, VL);
  const float inv_n = 1.0f / static_cast<float>(max_seq_len);
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
#endif
  {
    std::vector<float> q_buf, kt_buf, v_buf, s_buf, o_buf, t_buf;
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
    for (int64_t t = 0; t < static_cast<int64_t>(order.size()); ++t) {
      const int64_t b = order[t] / heads, h = order[t] % heads;
      const int64_t o = offsets[b], n = offsets[b + 1] - o;
      if (n == 0) continue;
      const int64_t rows = round_up(n, MR), cols = round_up(n, VL);
      float* qs = scratch(q_buf, rows * dqk);
      float* kt = scratch(kt_buf, dqk * cols);
      float* vs = scratch(v_buf, cols * wv);
      float* s = scratch(s_buf, MR * cols);
      float* acc = scratch(o_buf, MR * wv);
      copy_rows(q + o * q_stride + h * dqk, q_stride, n, dqk, qs, dqk, rows);
      copy_transposed(k + o * k_stride + h * dqk, k_stride, n, dqk, kt, cols,
                      scratch(t_buf, n * dqk));
      copy_rows(v + o * v_stride + h * dv, v_stride, n, dv, vs, wv, cols);
      float* task_logits = logits == nullptr ? nullptr
                           : logits + heads * square_offsets[b] + h * n * n;
      for (int64_t i0 = 0; i0 < n; i0 += MR) {
        const int64_t block_end = causal ? std::min(n, i0 + MR) : n;  // keys of the block
        const int64_t width = round_up(block_end, VL);
        product_nt(qs + i0 * dqk, dqk, kt, cols, dqk, width, s, cols);
        for (int r = 0; r < MR; ++r) {
          const int64_t i = i0 + r;
          float* row = s + r * cols;
          if (i >= n) {
            std::fill(row, row + width, 0.0f);
            continue;
          }
          const int64_t end = p.key_end(i, n), cand = candidate_start(p, b, i, end);
          row_logits(p, b, i, n, end, row);
          if (task_logits != nullptr) std::memcpy(task_logits + i * n, row, end * sizeof(float));
#pragma omp simd
          for (int64_t j = 0; j < end; ++j) row[j] = row[j] * sigmoid(row[j]) * inv_n;
          for (int64_t j = cand; j < end; ++j)
            if (j != i) row[j] = 0.0f;
          std::fill(row + end, row + width, 0.0f);
        }
        product_nn(s, cols, block_end, vs, wv, wv, acc, wv, 1.0f);
        for (int r = 0; r < MR && i0 + r < n; ++r)
          std::memcpy(out + ((o + i0 + r) * heads + h) * dv, acc + r * wv, dv * sizeof(float));
      }
    }
  }
}

// Gradients from grad_out [T, H, dv] (row stride g_stride) and the forward's logits:
// dq, dk [T, H, dqk] and dv_out [T, H, dv] (contiguous); d_pos [pos_size] and d_time
// [num_buckets] when non-null (overwritten), through the [tasks, table] partials `partial`.
void genrec_hstu_backward_f32(const float* grad_out, int64_t g_stride, const float* q,
                              int64_t q_stride, const float* k, int64_t k_stride,
                              const float* v, int64_t v_stride, const float* logits,
                              const int64_t* offsets, int64_t batch, int64_t heads, int64_t dqk,
                              int64_t dv, int64_t max_seq_len, float alpha, int causal,
                              const int64_t* first_candidate, int64_t pos_size,
                              int64_t num_buckets, const uint8_t* buckets,
                              const int64_t* square_offsets, float* dq, float* dk,
                              float* dv_out, float* d_pos, float* d_time, float* partial,
                              int threads) {
  const Problem p{offsets, batch, heads, dqk, dv, max_seq_len, alpha, causal, first_candidate,
                  nullptr, pos_size, nullptr, num_buckets, buckets, square_offsets, threads};
  const std::vector<int64_t> order = task_order(p);
  const int64_t wq = round_up(dqk, VL), wv = round_up(dv, VL);
  const float inv_n = 1.0f / static_cast<float>(max_seq_len);
  const int64_t pos_part = d_pos != nullptr ? pos_size : 0;
  const int64_t time_part = d_time != nullptr ? 4 * num_buckets : 0;  // 4 interleaved sums
  const int64_t part = pos_part + time_part;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
#endif
  {
    std::vector<float> q_buf, k_buf, vt_buf, g_buf, dk_buf, dv_buf, s_buf, ds_buf, o_buf,
        t_buf;
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
    for (int64_t t = 0; t < static_cast<int64_t>(order.size()); ++t) {
      const int64_t task = order[t], b = task / heads, h = task % heads;
      const int64_t o = offsets[b], n = offsets[b + 1] - o;
      float* my_pos = partial + task * part;
      float* my_time = my_pos + pos_part;
      std::fill(my_pos, my_pos + part, 0.0f);
      if (n == 0) continue;
      const int64_t rows = round_up(n, MR), cols = round_up(n, VL);
      float* qs = scratch(q_buf, rows * wq);
      float* ks = scratch(k_buf, cols * wq);
      float* vt = scratch(vt_buf, dv * cols);
      float* gs = scratch(g_buf, rows * wv);
      float* dks = scratch(dk_buf, cols * wq);
      float* dvs = scratch(dv_buf, cols * wv);
      float* pr = scratch(s_buf, MR * cols);   // dP, then P
      float* ds = scratch(ds_buf, MR * cols);
      float* acc = scratch(o_buf, MR * wq);
      copy_rows(q + o * q_stride + h * dqk, q_stride, n, dqk, qs, wq, rows);
      copy_rows(k + o * k_stride + h * dqk, k_stride, n, dqk, ks, wq, cols);
      copy_transposed(v + o * v_stride + h * dv, v_stride, n, dv, vt, cols,
                      scratch(t_buf, n * dv));
      copy_rows(grad_out + o * g_stride + h * dv, g_stride, n, dv, gs, wv, rows);
      std::fill(dks, dks + cols * wq, 0.0f);
      std::fill(dvs, dvs + cols * wv, 0.0f);
      const float* task_logits = logits + heads * square_offsets[b] + h * n * n;
      for (int64_t i0 = 0; i0 < n; i0 += MR) {
        const int64_t block_end = causal ? std::min(n, i0 + MR) : n;
        const int64_t width = round_up(block_end, VL);
        product_nt(gs + i0 * wv, wv, vt, cols, dv, width, pr, cols);  // dP
        for (int r = 0; r < MR; ++r) {
          const int64_t i = i0 + r;
          float* __restrict prow = pr + r * cols;
          float* __restrict drow = ds + r * cols;
          if (i >= n) {
            std::fill(prow, prow + width, 0.0f);
            std::fill(drow, drow + width, 0.0f);
            continue;
          }
          const int64_t end = p.key_end(i, n), cand = candidate_start(p, b, i, end);
          const float* __restrict s = task_logits + i * n;
#pragma omp simd
          for (int64_t j = 0; j < end; ++j) {
            const float sig = sigmoid(s[j]);
            drow[j] = prow[j] * sig * (1.0f + s[j] * (1.0f - sig)) * inv_n;
            prow[j] = s[j] * sig * inv_n;
          }
          for (int64_t j = cand; j < end; ++j)
            if (j != i) prow[j] = drow[j] = 0.0f;
          std::fill(prow + end, prow + width, 0.0f);
          std::fill(drow + end, drow + width, 0.0f);
          if (pos_part) {
            const int64_t base = max_seq_len - 1 - i;
            if (base >= 0 && base + end - 1 < pos_size) {
              float* __restrict tab = my_pos + base;
#pragma omp simd
              for (int64_t j = 0; j < end; ++j) tab[j] += drow[j];
            } else {
              for (int64_t j = 0; j < end; ++j)
                my_pos[std::min(std::max<int64_t>(base + j, 0), pos_size - 1)] += drow[j];
            }
          }
          if (time_part) {
            const uint8_t* bk = buckets + square_offsets[b] + i * n;
            for (int64_t j = 0; j < end; ++j) my_time[4 * bk[j] + (j & 3)] += drow[j];
          }
        }
        product_nn(ds, cols, block_end, ks, wq, wq, acc, wq, alpha);  // dQ rows
        for (int r = 0; r < MR && i0 + r < n; ++r)
          std::memcpy(dq + ((o + i0 + r) * heads + h) * dqk, acc + r * wq, dqk * sizeof(float));
        update_tn(ds, cols, block_end, qs + i0 * wq, wq, wq, dks, wq);  // dK += dS^T Q
        update_tn(pr, cols, block_end, gs + i0 * wv, wv, wv, dvs, wv);  // dV += P^T dO
      }
      for (int64_t j = 0; j < n; ++j) {
        float* dk_row = dk + ((o + j) * heads + h) * dqk;
        for (int64_t c = 0; c < dqk; ++c) dk_row[c] = alpha * dks[j * wq + c];
        std::memcpy(dv_out + ((o + j) * heads + h) * dv, dvs + j * wv, dv * sizeof(float));
      }
    }
    // the tables' gradients: partials summed in task order, entries split over the threads
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
    for (int64_t e = 0; e < part; ++e) {
      float sum = 0.0f;
      for (int64_t task = 0; task < batch * heads; ++task) sum += partial[task * part + e];
      if (e < pos_part) d_pos[e] = sum;
      else partial[e] = sum;  // task 0's slot is read only by this entry: reuse it
    }
  }
  if (time_part) {
    const float* sums = partial + pos_part;
    for (int64_t bucket = 0; bucket < num_buckets; ++bucket)
      d_time[bucket] = sums[4 * bucket] + sums[4 * bucket + 1] + sums[4 * bucket + 2] +
                       sums[4 * bucket + 3];
  }
}

}  // extern "C"
