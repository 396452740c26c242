// Soft MoE's two softmaxes over one (n, t) logits matrix per batch row, fused (CPU, float32).
//
//     dispatch D[i, j] = softmax over the tokens i (column j) of L, padded tokens (mask 0) excluded (D = 0)
//     combine  C[i, j] = softmax over the slots j (row i) of L
//
// forward:  pass 1 reads L once for the column maxima and sums (blocks of ROWS rows: their maxima, then their
//           exponentials from cache); pass 2 reads each row once and writes D and C (C over L, in place).
// backward: dL = C * (dC - <C, dC>_row) + D * (dD - colsum_j), one pass over the rows, written over dD;
//           colsum_j = sum_i D[i, j] dD[i, j] is computed by the caller (it equals <slots_j, dslots_j>).
//
// PyTorch evaluates the same maths as about a dozen separate passes over (n, t) tensors, each allocating a fresh
// output; at one slot per token (t = n) those passes cost as much as the matrix products. No fast-math: the
// exponential is vectorised by hand (as in slot_dispatch.cpp).
#include <cmath>
#include <cstdint>
#include <algorithm>
#include <cstring>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

typedef float v16 __attribute__((vector_size(64)));
typedef int32_t vi16 __attribute__((vector_size(64)));

static const int64_t ROWS = 16;  // rows per block of the column pass (ROWS x columns-per-thread floats in L2)

static inline v16 splat(float a) { return v16{} + a; }
static inline v16 vmax(v16 a, v16 b) { return a > b ? a : b; }

// exp(x) per lane, Cody-Waite range reduction + Cephes polynomial (within ~2 ulp of expf), x clamped to
// [-87, 88]: exp(-87) ~ 1.6e-38 stands for 0 in the softmax sums.
static inline v16 vexp(v16 x) {
    x = x < -87.0f ? splat(-87.0f) : x;
    x = x > 88.0f ? splat(88.0f) : x;
    const v16 magic = splat(12582912.0f);
    v16 n = (x * 1.44269504088896341f + magic) - magic;
    v16 r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    v16 p = splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    vi16 e = (__builtin_convertvector(n, vi16) + 127) << 23;
    return p * (v16)e;
}

// Loads and stores of 16 lanes, or of the first `k` lanes (k < 16) with the rest filled by `fill`.
static inline v16 load(const float *p, int64_t k, float fill) {
    v16 v;
    if (k >= 16) {
        std::memcpy(&v, p, sizeof v);
    } else {
        v = splat(fill);
        std::memcpy(&v, p, k * sizeof(float));
    }
    return v;
}

static inline void store(float *p, v16 v, int64_t k) { std::memcpy(p, &v, (k >= 16 ? 16 : k) * sizeof(float)); }

static inline float hmax(v16 v) {
    float m = v[0];
    for (int l = 1; l < 16; ++l) m = v[l] > m ? v[l] : m;
    return m;
}

static inline float hsum(v16 v) {
    float s = 0.0f;
    for (int l = 0; l < 16; ++l) s += v[l];
    return s;
}

// Column maxima cmax[j] and sums csum[j] = sum_i exp(L[i, j] - cmax[j]) over the real rows, for columns [j0, j1).
static void column_stats(const float *L, const uint8_t *mask, int64_t n, int64_t t, int64_t j0, int64_t j1,
                         float *cmax, float *csum) {
    const float ninf = -INFINITY;
    for (int64_t j = j0; j < j1; ++j) cmax[j] = ninf, csum[j] = 0.0f;
    for (int64_t i0 = 0; i0 < n; i0 += ROWS) {
        const int64_t i1 = i0 + ROWS < n ? i0 + ROWS : n;
        bool any = false;
        for (int64_t i = i0; i < i1; ++i) any = any || !mask || mask[i];
        if (!any) continue;
        for (int64_t j = j0; j < j1; j += 16) {
            const int64_t k = j1 - j;
            v16 m = load(cmax + j, k, 0.0f);
            const v16 old = m;
            for (int64_t i = i0; i < i1; ++i)
                if (!mask || mask[i]) m = vmax(m, load(L + i * t + j, k, 0.0f));
            // rescale the running sums to the new maxima (old = -inf the first time: exp clamps to ~0, times 0)
            v16 s = load(csum + j, k, 0.0f) * vexp(old - m);
            for (int64_t i = i0; i < i1; ++i)
                if (!mask || mask[i]) s += vexp(load(L + i * t + j, k, 0.0f) - m);
            store(cmax + j, m, k);
            store(csum + j, s, k);
        }
    }
}

// One row: D[j] = exp(L[j] - cmax[j]) * cinv[j] (0 for a padded row), then C = softmax(L) over L in place.
static void route_row(float *L, float *D, const float *cmax, const float *cinv, bool real, int64_t t) {
    v16 mx = splat(-INFINITY);
    for (int64_t j = 0; j < t; j += 16) mx = vmax(mx, load(L + j, t - j, -INFINITY));
    const v16 m = splat(hmax(mx));
    v16 sum = splat(0.0f);
    for (int64_t j = 0; j < t; j += 16) {
        const int64_t k = t - j;
        const v16 l = load(L + j, k, -INFINITY);
        store(D + j, real ? vexp(l - load(cmax + j, k, 0.0f)) * load(cinv + j, k, 0.0f) : splat(0.0f), k);
        const v16 e = vexp(l - m);
        sum += k >= 16 ? e : (l > splat(-INFINITY) ? e : splat(0.0f));  // padding lanes add nothing
        store(L + j, e, k);
    }
    const v16 inv = splat(1.0f / hsum(sum));
    for (int64_t j = 0; j < t; j += 16) store(L + j, load(L + j, t - j, 0.0f) * inv, t - j);
}

static int threads(int nthreads) { return nthreads > 0 ? nthreads : 1; }

extern "C" {

// logits (b, n, t) contiguous, overwritten by the combine weights; dispatch (b, n, t) written; mask (b, n)
// bytes (1 = real token) or null. Every batch row needs one real token (the caller checks).
void soft_route_forward(float *logits, float *dispatch, const uint8_t *mask, int64_t b, int64_t n, int64_t t,
                        int nthreads) {
    const int nt = threads(nthreads);
    std::vector<float> cmax(t), cinv(t);
    for (int64_t bi = 0; bi < b; ++bi) {
        float *L = logits + bi * n * t, *D = dispatch + bi * n * t;
        const uint8_t *mk = mask ? mask + bi * n : nullptr;
#pragma omp parallel num_threads(nt)
        {
#ifdef _OPENMP
            const int id = omp_get_thread_num(), count = omp_get_num_threads();
#else
            const int id = 0, count = 1;
#endif
            // columns split in multiples of 16 between the threads
            const int64_t blocks = (t + 15) / 16;
            const int64_t j0 = std::min<int64_t>(t, blocks * id / count * 16);
            const int64_t j1 = std::min<int64_t>(t, blocks * (id + 1) / count * 16);
            if (j1 > j0) column_stats(L, mk, n, t, j0, j1, cmax.data(), cinv.data());
#pragma omp barrier
#pragma omp for schedule(static)
            for (int64_t j = 0; j < t; ++j) cinv[j] = 1.0f / cinv[j];
#pragma omp for schedule(static)
            for (int64_t i = 0; i < n; ++i)
                route_row(L + i * t, D + i * t, cmax.data(), cinv.data(), !mk || mk[i], t);
        }
    }
}

// d_dispatch (b, n, t) overwritten by d_logits = C (dC - <C, dC>_row) + D (d_dispatch - colsum); combine,
// d_combine, dispatch (b, n, t); colsum (b, t). All contiguous. d_combine may be null (no gradient: zero).
void soft_route_backward(float *d_dispatch, const float *dispatch, const float *combine, const float *d_combine,
                         const float *colsum, int64_t b, int64_t n, int64_t t, int nthreads) {
    const int nt = threads(nthreads);
    for (int64_t bi = 0; bi < b; ++bi) {
        const int64_t off = bi * n * t;
        const float *cs = colsum + bi * t;
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int64_t i = 0; i < n; ++i) {
            float *g = d_dispatch + off + i * t;
            const float *D = dispatch + off + i * t, *C = combine + off + i * t;
            const float *dC = d_combine ? d_combine + off + i * t : nullptr;
            if (dC) {
                v16 acc = splat(0.0f);
                for (int64_t j = 0; j < t; j += 16) acc += load(C + j, t - j, 0.0f) * load(dC + j, t - j, 0.0f);
                const v16 dot = splat(hsum(acc));
                for (int64_t j = 0; j < t; j += 16) {
                    const int64_t k = t - j;
                    const v16 v = load(C + j, k, 0.0f) * (load(dC + j, k, 0.0f) - dot) +
                                  load(D + j, k, 0.0f) * (load(g + j, k, 0.0f) - load(cs + j, k, 0.0f));
                    store(g + j, v, k);
                }
            } else {
                for (int64_t j = 0; j < t; j += 16) {
                    const int64_t k = t - j;
                    store(g + j, load(D + j, k, 0.0f) * (load(g + j, k, 0.0f) - load(cs + j, k, 0.0f)), k);
                }
            }
        }
    }
}

}  // extern "C"
