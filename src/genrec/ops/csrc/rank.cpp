// Full-ranking counts on CPU, fp32 (genrec.ops.ranking): for each user b,
//
//   rank_b = 1 + #{ items j in [1, I] : score(b, j) > score(b, t_b), j not excluded for b }
//
// with score(b, j) = users[b] . items[j], t_b the user's target, and b's history items excluded
// (t_b among them or not: it never scores above itself). The [B, I] score matrix is never
// stored: a tile of R users times a chunk of items is dense.h's register tile (a chunk of the
// item table packed as [d, npad]), and its epilogue compares each score with the user's target
// score and adds the lanes above it, less the excluded ones, to the user's count.
//
// The target scores come from the same tile function over the users' target columns, so a
// target's score has the bits of its column in the full product, and the target is never
// counted against itself. A tile's exclusions are bit rows (one bit per item column, padding
// columns set), so a history item listed twice is excluded once. Tiles of users are spread over
// the threads; a user's count does not depend on the thread count. Built and loaded by
// genrec.ops.native.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
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

// one bit per lane of a vector of item columns
#if defined(__AVX512F__)
typedef uint16_t Bits;
#else
typedef uint8_t Bits;
#endif

// bit l set where x[l] > t (false for NaN)
inline uint32_t above(vf x, float t) {
#if defined(__AVX512F__)
  return _mm512_cmp_ps_mask(reinterpret_cast<__m512>(x), _mm512_set1_ps(t), _CMP_GT_OQ);
#elif defined(__AVX__)
  return static_cast<uint32_t>(_mm256_movemask_ps(
      _mm256_cmp_ps(reinterpret_cast<__m256>(x), _mm256_set1_ps(t), _CMP_GT_OQ)));
#else
  uint32_t bits = 0;
  for (int l = 0; l < VL; ++l) bits |= static_cast<uint32_t>(x[l] > t) << l;
  return bits;
#endif
}

}  // namespace

extern "C" {

// ranks [B] as above, and target_scores [B] = score(b, t_b). users [B, d] at row stride ldu,
// items [I + 1, d] contiguous (row 0, padding, never ranked), targets [B] in [1, I], b's
// excluded items at history_items[history_offsets[b] .. history_offsets[b + 1]), each in [1, I];
// d >= 1. The items are taken in chunks of about 1 MiB packed (one chunk for a few thousand
// items), so the packed copy stays small whatever the catalogue.
void genrec_rank_targets_f32(const float* users, int64_t ldu, int64_t B, int64_t d,
                             const float* items, int64_t I, const int64_t* targets,
                             const int64_t* history_offsets, const int64_t* history_items,
                             int64_t* ranks, float* target_scores, int threads) {
  constexpr int R = dense::R;
  constexpr int64_t CHUNK_FLOATS = int64_t{1} << 18;
  const int64_t tiles = (B + R - 1) / R;
  const int64_t span = std::max<int64_t>(16, CHUNK_FLOATS / d / 16 * 16);  // items per chunk
  const std::unique_ptr<float[]> wt(new float[d * span]);  // a chunk's [d, npad]
  std::vector<int64_t> counts(B, 0);
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
#endif
  {
    std::vector<float> a(R * d), tt(d * VL);
    std::vector<Bits> excluded(R * span / VL);
    // a tile's user rows into `a` (zero rows past B)
    auto user_rows = [&](int64_t b0, int64_t rows) {
      std::fill(a.begin(), a.end(), 0.0f);
      for (int64_t r = 0; r < rows; ++r)
        std::copy(users + (b0 + r) * ldu, users + (b0 + r) * ldu + d, a.begin() + r * d);
    };
    // the targets' scores: lane r of row r over a [d, VL] matrix whose column r is t_b
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
    for (int64_t tile = 0; tile < tiles; ++tile) {
      const int64_t b0 = tile * R, rows = std::min<int64_t>(R, B - b0);
      user_rows(b0, rows);
      std::fill(tt.begin(), tt.end(), 0.0f);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t k = 0; k < d; ++k) tt[k * VL + r] = items[targets[b0 + r] * d + k];
      dense::tile<1>(a.data(), d, tt.data(), VL, d, 0, [&](int r, int64_t, vf acc) {
        if (r < rows) target_scores[b0 + r] = acc[r];
      });
    }
    for (int64_t c0 = 0; c0 < I; c0 += span) {  // every thread walks the chunks in step
      const int64_t c1 = std::min(I, c0 + span), npad = round_up(c1 - c0, VL);
      const int64_t words = npad / VL;
      // column j of the chunk is item c0 + j + 1, zeros past c1; 16 items at a time
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
      for (int64_t j0 = 0; j0 < npad; j0 += 16)
        dense::pack_columns(items + (c0 + 1) * d, c1 - c0, d, npad, j0,
                            std::min(npad, j0 + 16), wt.get());
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
      for (int64_t tile = 0; tile < tiles; ++tile) {
        const int64_t b0 = tile * R, rows = std::min<int64_t>(R, B - b0);
        user_rows(b0, rows);
        std::fill(excluded.begin(), excluded.begin() + R * words, Bits{0});
        float target[R] = {};
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t b = b0 + r;
          target[r] = target_scores[b];
          Bits* bits = excluded.data() + r * words;
          for (int64_t h = history_offsets[b]; h < history_offsets[b + 1]; ++h) {
            const int64_t column = history_items[h] - 1 - c0;  // the target's bit changes nothing
            if (column >= 0 && column < c1 - c0)
              bits[column / VL] |= static_cast<Bits>(1u << (column % VL));
          }
        }
        for (int64_t r = 0; r < R; ++r)  // the padding columns of the last vector
          for (int64_t column = c1 - c0; column < npad; ++column)
            excluded[r * words + column / VL] |= static_cast<Bits>(1u << (column % VL));
        int64_t count[R] = {};
        dense::product(a.data(), d, R, wt.get(), npad, d, [&](int64_t r, int64_t col, vf acc) {
          const uint32_t skip = excluded[r * words + col / VL];
          count[r] += __builtin_popcount(above(acc, target[r]) & ~skip);
        });
        for (int64_t r = 0; r < rows; ++r) counts[b0 + r] += count[r];
      }
    }
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
    for (int64_t b = 0; b < B; ++b) ranks[b] = 1 + counts[b];
  }
}

}  // extern "C"
