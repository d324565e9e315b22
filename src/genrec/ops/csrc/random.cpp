// Uniform random words and integers on CPU, counter-based: value i = SplitMix64(seed + i * γ).
//
// PyTorch's CPU generator (mt19937) is serial and costs ~1.5 ns per 32-bit draw: the keep
// masks and the 128 negatives per position of a training step spent ~10 ms there. SplitMix64
// is the output function of a generator that passes BigCrush; evaluated at counter i it gives
// word i of its stream, so every word is independent of the thread that computes it and the
// result does not depend on the thread count. genrec.ops.rng draws the seed from PyTorch's
// generator, so torch.manual_seed and saved generator states still decide every draw.
//
// Built and loaded by genrec.ops.native (plain C ABI, no torch headers).

#include <cstdint>

namespace {

constexpr uint64_t GAMMA = 0x9e3779b97f4a7c15ULL;

inline uint64_t mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

}  // namespace

extern "C" {

// out[i] = word i of the stream of `seed`, i in [0, n).
void genrec_random_words(uint64_t seed, uint64_t* out, int64_t n, int threads) {
#ifdef _OPENMP
#pragma omp parallel for simd num_threads(threads) schedule(static)
#endif
  for (int64_t i = 0; i < n; ++i) out[i] = mix(seed + static_cast<uint64_t>(i) * GAMMA);
}

// out[i] = low + floor(u_i * range / 2^32), u_i the high 32 bits of word i: uniform on
// [low, low + range) up to range / 2^32 (as PyTorch's own 32-bit draw modulo range).
void genrec_uniform_ints(uint64_t seed, int64_t low, uint64_t range, int64_t* out, int64_t n,
                         int threads) {
#ifdef _OPENMP
#pragma omp parallel for simd num_threads(threads) schedule(static)
#endif
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t high = mix(seed + static_cast<uint64_t>(i) * GAMMA) >> 32;
    out[i] = low + static_cast<int64_t>((high * range) >> 32);
  }
}

}  // extern "C"
