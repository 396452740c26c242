// Counter-based dropout for CPU tensors: out[i] = x[i] * (keep(i) ? scale : 0) with
//
//     keep(i) = dropout_word(seed, i) >= threshold,    threshold = round(p * 2^32)
//
// with dropout_word the SplitMix64 stream of splitmix64.h. The mask is a pure function of (seed, i): it needs
// no storage (the backward pass is the same call on the gradient with the same seed), it does not depend on
// the number of threads, and every element costs two 64-bit multiplies (vectorised with AVX-512 DQ where
// available), much less than PyTorch's Bernoulli sampling on CPU (timings: docs/performance-notes.md).
#include <cstdint>

#include "splitmix64.h"

static const int64_t BLOCK = 1 << 14;  // elements per OpenMP work item

template <typename T>
static void run(const T *x, T *out, int64_t n, uint64_t seed, uint32_t threshold, T scale, int nthreads) {
    const int64_t blocks = (n + BLOCK - 1) / BLOCK;
#pragma omp parallel for num_threads(nthreads) schedule(static) if (blocks > 1)
    for (int64_t blk = 0; blk < blocks; ++blk) {
        const int64_t stop = (blk + 1) * BLOCK < n ? (blk + 1) * BLOCK : n;
#pragma omp simd
        for (int64_t i = blk * BLOCK; i < stop; ++i) {
            out[i] = x[i] * (dropout_word(seed, i) >= threshold ? scale : (T)0);  // NaN stays NaN, as x * mask
        }
    }
}

extern "C" {

void dropout_f32(const float *x, float *out, int64_t n, uint64_t seed, uint32_t threshold, float scale,
                 int nthreads) {
    run<float>(x, out, n, seed, threshold, scale, nthreads);
}

void dropout_f64(const double *x, double *out, int64_t n, uint64_t seed, uint32_t threshold, double scale,
                 int nthreads) {
    run<double>(x, out, n, seed, threshold, scale, nthreads);
}

}  // extern "C"
