// Mammoth's expert epilogue in one pass per direction (CPU): for every row of F = heads * head_dim features of
// expert e = row % E (rows are the flattened (..., E) leading dimensions),
//
//     x = t + bias[e]                      r = scale / max(||x||, eps)
//     y = r * x * gamma[e]                 out = relu(y) * keep / (1 - p)
//
// and the backward pass (dx, which is also dt; dbias and dgamma summed over rows of the same expert):
//
//     dy = dout * keep / (1 - p) * [y > 0]          v = dy * gamma[e]
//     dx = r * v - [||x|| > eps] * x * r * <v, x> / ||x||^2
//     dgamma[e] += dy * x * r                       dbias[e] += dx
//
// keep(i) for element i = row * F + f is the dropout kernel's mask (kernels/dropout.cpp: same seed, the same
// dropout_word of splitmix64.h, same threshold), so the fused and the unfused paths drop the same elements.
// PyTorch runs these as a dozen separate passes over (b, S, E, H, d) tensors, each allocating a fresh output;
// with DTFD's eight pseudo-bags through Mammoth that was half of a training step.
#include <cmath>
#include <cstdint>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "splitmix64.h"  // dropout_word: the mask of kernels/dropout.cpp

// Forward. Writes out (rows, F) and norms (rows): ||x|| per row (x itself is recomputed, not stored).
template <typename T>
static void forward(const T *t, const T *bias, const T *gamma, T *out, T *norms, int64_t rows, int64_t E,
                    int64_t F, T scale, T eps, int drop, uint64_t seed, uint32_t threshold, T keep_scale,
                    int nthreads) {
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t row = 0; row < rows; ++row) {
        const int64_t e = row % E;
        const T *tr = t + row * F, *br = bias + e * F, *gr = gamma + e * F;
        T *orow = out + row * F;
        T ss = 0;
#pragma omp simd reduction(+ : ss)
        for (int64_t f = 0; f < F; ++f) {
            const T v = tr[f] + br[f];
            ss += v * v;
        }
        const T norm = std::sqrt(ss);
        const T r = scale / (norm > eps ? norm : eps);
        norms[row] = norm;
        const int64_t base = row * F;
#pragma omp simd
        for (int64_t f = 0; f < F; ++f) {
            const T y = r * (tr[f] + br[f]) * gr[f];
            const T a = y > (T)0 ? y : (T)0;
            orow[f] = drop ? a * (dropout_word(seed, base + f) >= threshold ? keep_scale : (T)0) : a;
        }
    }
}

// Backward (x = t + bias recomputed). Writes dx (rows, F); dbias and dgamma (E, F) are sums over the rows of
// each expert.
template <typename T>
static void backward(const T *dout, const T *t, const T *bias, const T *norms, const T *gamma, T *dx, T *dbias, T *dgamma,
                     int64_t rows, int64_t E, int64_t F, T scale, T eps, int drop, uint64_t seed,
                     uint32_t threshold, T keep_scale, int nthreads) {
    const int nt = nthreads > 0 ? nthreads : 1;
    std::vector<T> acc_b((size_t)nt * E * F, (T)0), acc_g((size_t)nt * E * F, (T)0);
#pragma omp parallel num_threads(nt)
    {
#ifdef _OPENMP
        const int tid = omp_get_thread_num();
#else
        const int tid = 0;
#endif
        T *ab = acc_b.data() + (size_t)tid * E * F, *ag = acc_g.data() + (size_t)tid * E * F;
        std::vector<T> v(F), dy(F);
#pragma omp for schedule(static)
        for (int64_t row = 0; row < rows; ++row) {
            const int64_t e = row % E;
            const T *tr = t + row * F, *br = bias + e * F, *gr = gamma + e * F, *dor = dout + row * F;
            const T norm = norms[row];
            const T r = scale / (norm > eps ? norm : eps);  // as in the forward pass
            const int64_t base = row * F;
            T vx = 0;
#pragma omp simd reduction(+ : vx)
            for (int64_t f = 0; f < F; ++f) {
                const T xf = tr[f] + br[f];
                const T y = r * xf * gr[f];
                T g = y > (T)0 ? dor[f] : (T)0;
                if (drop) g *= dropout_word(seed, base + f) >= threshold ? keep_scale : (T)0;
                dy[f] = g;
                v[f] = g * gr[f];
                vx += v[f] * xf;
            }
            const T c = norm > eps ? r * vx / (norm * norm) : (T)0;  // the clamped norm is a constant
            T *dxr = dx + row * F, *abe = ab + e * F, *age = ag + e * F;
#pragma omp simd
            for (int64_t f = 0; f < F; ++f) {
                const T xf = tr[f] + br[f];
                const T d = r * v[f] - c * xf;
                dxr[f] = d;
                abe[f] += d;
                age[f] += dy[f] * xf * r;
            }
        }
    }
    for (int64_t i = 0; i < E * F; ++i) {
        T sb = 0, sg = 0;
        for (int k = 0; k < nt; ++k) {
            sb += acc_b[(size_t)k * E * F + i];
            sg += acc_g[(size_t)k * E * F + i];
        }
        dbias[i] = sb;
        dgamma[i] = sg;
    }
}

extern "C" {

void epilogue_forward_f32(const float *t, const float *bias, const float *gamma, float *out, float *norms,
                          int64_t rows, int64_t E, int64_t F, float scale, float eps, int drop, uint64_t seed,
                          uint32_t threshold, float keep_scale, int nthreads) {
    forward<float>(t, bias, gamma, out, norms, rows, E, F, scale, eps, drop, seed, threshold, keep_scale,
                   nthreads);
}
void epilogue_forward_f64(const double *t, const double *bias, const double *gamma, double *out,
                          double *norms, int64_t rows, int64_t E, int64_t F, double scale, double eps, int drop,
                          uint64_t seed, uint32_t threshold, double keep_scale, int nthreads) {
    forward<double>(t, bias, gamma, out, norms, rows, E, F, scale, eps, drop, seed, threshold, keep_scale,
                    nthreads);
}
void epilogue_backward_f32(const float *dout, const float *t, const float *bias, const float *norms,
                           const float *gamma, float *dx, float *dbias, float *dgamma, int64_t rows, int64_t E, int64_t F, float scale, float eps,
                           int drop, uint64_t seed, uint32_t threshold, float keep_scale, int nthreads) {
    backward<float>(dout, t, bias, norms, gamma, dx, dbias, dgamma, rows, E, F, scale, eps, drop, seed,
                    threshold, keep_scale, nthreads);
}
void epilogue_backward_f64(const double *dout, const double *t, const double *bias, const double *norms,
                           const double *gamma, double *dx, double *dbias, double *dgamma, int64_t rows, int64_t E, int64_t F,
                           double scale, double eps, int drop, uint64_t seed, uint32_t threshold,
                           double keep_scale, int nthreads) {
    backward<double>(dout, t, bias, norms, gamma, dx, dbias, dgamma, rows, E, F, scale, eps, drop, seed,
                     threshold, keep_scale, nthreads);
}

}  // extern "C"
