// out[t, k] = <queries[t], table[ids[t, k]]> (genrec.ops.gather) and its gradients, on CPU.
//
// The rows are random reads from a table that stays in cache: the loops are latency-bound, so
// rows are prefetched a few ids ahead and the forward takes four ids per pass over a query.
//
//   grad_queries[t] = sum_k grad[t, k] * table[ids[t, k]]
//   grad_table[r]   = sum over (t, k) with ids[t, k] == r of grad[t, k] * queries[t]
//
// One pass over the ids. Each thread takes a fixed contiguous range of queries and adds its
// table rows into a private [rows, dim] accumulator (thread 0 into grad_table itself); the
// accumulators are then summed row-block by row-block in thread order. No sort, no atomics,
// and the result depends only on the thread count (static split, fixed summation order).
//
// Built and loaded by genrec.ops.native (plain C ABI, no torch headers).

#include <cstdint>
#include <cstring>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

constexpr int64_t AHEAD = 4;  // rows are prefetched this many ids ahead (random rows: latency)

template <typename T>
inline void prefetch_row(const T* row, int64_t dim, int write) {
  const char* bytes = reinterpret_cast<const char*>(row);
  for (int64_t b = 0; b < dim * static_cast<int64_t>(sizeof(T)); b += 64) {
    if (write) __builtin_prefetch(bytes + b, 1, 3);
    else __builtin_prefetch(bytes + b, 0, 3);
  }
}

template <typename T>
inline T dot(const T* __restrict q, const T* __restrict row, int64_t dim) {
  T sum = T(0);
#ifdef _OPENMP
#pragma omp simd reduction(+ : sum)
#endif
  for (int64_t j = 0; j < dim; ++j) sum += q[j] * row[j];
  return sum;
}

// out[t, k] = <q[t], table[ids[t, k]]>, four ids at a time (four sums, one pass over q).
template <typename T>
int64_t forward(const T* __restrict queries, const T* __restrict table,
                const int64_t* __restrict ids, T* __restrict out, int64_t num_queries,
                int64_t per_query, int64_t dim, int64_t rows, int threads) {
  int64_t bad = -1;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) reduction(max : bad)
#endif
  for (int64_t t = 0; t < num_queries; ++t) {
    const T* q = queries + t * dim;
    const int64_t* id = ids + t * per_query;
    T* o = out + t * per_query;
    int64_t k = 0;
    for (; k + 4 <= per_query; k += 4) {
      for (int64_t a = k + AHEAD; a < k + AHEAD + 4 && a < per_query; ++a) {
        if (id[a] >= 0 && id[a] < rows) prefetch_row(table + id[a] * dim, dim, 0);
      }
      const int64_t r0 = id[k], r1 = id[k + 1], r2 = id[k + 2], r3 = id[k + 3];
      if (r0 < 0 || r0 >= rows || r1 < 0 || r1 >= rows || r2 < 0 || r2 >= rows || r3 < 0 ||
          r3 >= rows) {
        break;  // the one-at-a-time loop below finds it
      }
      const T *w0 = table + r0 * dim, *w1 = table + r1 * dim, *w2 = table + r2 * dim,
              *w3 = table + r3 * dim;
      T s0 = T(0), s1 = T(0), s2 = T(0), s3 = T(0);
#ifdef _OPENMP
#pragma omp simd reduction(+ : s0, s1, s2, s3)
#endif
      for (int64_t j = 0; j < dim; ++j) {
        s0 += q[j] * w0[j];
        s1 += q[j] * w1[j];
        s2 += q[j] * w2[j];
        s3 += q[j] * w3[j];
      }
      o[k] = s0;
      o[k + 1] = s1;
      o[k + 2] = s2;
      o[k + 3] = s3;
    }
    for (; k < per_query; ++k) {
      const int64_t r = id[k];
      if (r < 0 || r >= rows) {
        bad = t * per_query + k > bad ? t * per_query + k : bad;
        o[k] = T(0);
        continue;
      }
      o[k] = dot(q, table + r * dim, dim);
    }
  }
  return bad;
}

template <typename T>
int64_t backward(const T* __restrict grad, const T* __restrict queries,
                 const T* __restrict table, const int64_t* __restrict ids,
                 T* __restrict grad_queries, T* __restrict grad_table, T* __restrict scratch,
                 int64_t num_queries, int64_t per_query, int64_t dim, int64_t rows,
                 int threads) {
  int64_t bad = -1;  // flat position of an id outside [0, rows), if any
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
#endif
  {
#ifdef _OPENMP
    const int tid = omp_get_thread_num(), team = omp_get_num_threads();
#else
    const int tid = 0, team = 1;
#endif
    T* acc = tid == 0 ? grad_table : scratch + (tid - 1) * rows * dim;
    std::memset(acc, 0, sizeof(T) * rows * dim);
    const int64_t first = num_queries * tid / team, last = num_queries * (tid + 1) / team;
    int64_t my_bad = -1;
    for (int64_t t = first; t < last; ++t) {
      const T* q = queries + t * dim;
      const T* g = grad + t * per_query;
      const int64_t* id = ids + t * per_query;
      T* gq = grad_queries + t * dim;
      for (int64_t j = 0; j < dim; ++j) gq[j] = T(0);
      for (int64_t k = 0; k < per_query; ++k) {
        const int64_t r = id[k];
        if (r < 0 || r >= rows) {
          if (my_bad < 0) my_bad = t * per_query + k;
          continue;
        }
        if (k + AHEAD < per_query) {
          const int64_t n = id[k + AHEAD];
          if (n >= 0 && n < rows) {
            prefetch_row(table + n * dim, dim, 0);
            prefetch_row(acc + n * dim, dim, 1);
          }
        }
        const T w = g[k];
        const T* row = table + r * dim;
        T* a = acc + r * dim;
#ifdef _OPENMP
#pragma omp simd
#endif
        for (int64_t j = 0; j < dim; ++j) {
          gq[j] += w * row[j];
          a[j] += w * q[j];
        }
      }
    }
    if (my_bad >= 0) {
#ifdef _OPENMP
#pragma omp critical
#endif
      if (bad < 0 || my_bad < bad) bad = my_bad;
    }
#ifdef _OPENMP
#pragma omp barrier
#endif
    // grad_table += the other threads' accumulators, each thread summing its block of rows
    const int64_t lo = rows * tid / team * dim, hi = rows * (tid + 1) / team * dim;
    for (int p = 1; p < team; ++p) {
      const T* part = scratch + (p - 1) * rows * dim;
#ifdef _OPENMP
#pragma omp simd
#endif
      for (int64_t x = lo; x < hi; ++x) grad_table[x] += part[x];
    }
  }
  return bad;
}

}  // namespace

extern "C" {

// out[t, k] = <queries[t], table[ids[t, k]]>. Returns -1, or the flat index of the last id
// outside [0, rows) (its output is 0).
int64_t genrec_gather_dot_forward_f32(const float* queries, const float* table,
                                      const int64_t* ids, float* out, int64_t num_queries,
                                      int64_t per_query, int64_t dim, int64_t rows,
                                      int threads) {
  return forward(queries, table, ids, out, num_queries, per_query, dim, rows, threads);
}

int64_t genrec_gather_dot_forward_f64(const double* queries, const double* table,
                                      const int64_t* ids, double* out, int64_t num_queries,
                                      int64_t per_query, int64_t dim, int64_t rows,
                                      int threads) {
  return forward(queries, table, ids, out, num_queries, per_query, dim, rows, threads);
}

// Returns -1, or the flat index of the first id outside [0, rows) (whose term is skipped).
// scratch holds (threads - 1) * rows * dim values; threads <= 1 needs none.
int64_t genrec_gather_dot_backward_f32(const float* grad, const float* queries,
                                       const float* table, const int64_t* ids,
                                       float* grad_queries, float* grad_table, float* scratch,
                                       int64_t num_queries, int64_t per_query, int64_t dim,
                                       int64_t rows, int threads) {
  return backward(grad, queries, table, ids, grad_queries, grad_table, scratch, num_queries,
                  per_query, dim, rows, threads);
}

int64_t genrec_gather_dot_backward_f64(const double* grad, const double* queries,
                                       const double* table, const int64_t* ids,
                                       double* grad_queries, double* grad_table,
                                       double* scratch, int64_t num_queries, int64_t per_query,
                                       int64_t dim, int64_t rows, int threads) {
  return backward(grad, queries, table, ids, grad_queries, grad_table, scratch, num_queries,
                  per_query, dim, rows, threads);
}

// 1 if this build runs its loops on OpenMP threads, 0 if it was built without OpenMP.
int genrec_native_openmp(void) {
#ifdef _OPENMP
  return 1;
#else
  return 0;
#endif
}

}  // extern "C"
