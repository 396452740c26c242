// Depthwise 2-D convolution (stride 1, odd kernel kh x kw, zero "same" padding ph = kh / 2, pw = kw / 2) on
// channels-last feature maps, forward and backward:
//
//     y[b, r, s, c]  = bias[c] + sum_{i,j} w[i, j, c] x[b, r + i - ph, s + j - pw, c]
//     dx[b, r, s, c] = sum_{i,j} w[kh-1-i, kw-1-j, c] dy[b, r + i - ph, s + j - pw, c]    (the flipped kernel)
//     dw[i, j, c]    = sum_{b,r,s} dy[b, r, s, c] x[b, r + i - ph, s + j - pw, c]
//
// Layouts: x, y, dx, dy (B, H, W, C) contiguous; w, dw (kh, kw, C) contiguous.
//
// Work is split into (batch row, block of L channels) items, L = one 64-byte vector (16 floats, 8 doubles).
// An item first copies its channel slice into a zero-padded, contiguous (H + 2ph) x (W + 2pw) x L buffer:
// the slice itself is one cache line every C * sizeof(T) bytes, a power-of-two stride that maps every pixel
// to the same few L1 sets, so reading it kh * kw times in place ran at L2 speed. From the buffer every tap is a
// plain vector load without bounds checks, and ROW output pixels accumulate in registers.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

template <typename T>
struct Vec {
    typedef T type __attribute__((vector_size(64)));
    static const int64_t L = 64 / sizeof(T);
};

static const int64_t ROW = 8;  // output pixels per register block

// buf[(r + ph) * stride + (s + pw)] = src[b, r, s, c0 : c0 + n] (zero elsewhere), as vectors of L lanes.
template <typename T>
static void gather(const T *src, typename Vec<T>::type *buf, int64_t b, int64_t h, int64_t wd, int64_t c,
                   int64_t c0, int64_t n, int64_t ph, int64_t pw) {
    typedef typename Vec<T>::type V;
    const int64_t stride = wd + 2 * pw;
    std::memset((void *)buf, 0, sizeof(V) * (h + 2 * ph) * stride);
    for (int64_t r = 0; r < h; ++r)
        for (int64_t s = 0; s < wd; ++s)
            std::memcpy((void *)&buf[(r + ph) * stride + s + pw], src + ((b * h + r) * wd + s) * c + c0,
                        n * sizeof(T));
}

// taps[i * kw + j] = w[i, j, c0 : c0 + n] (flipped: w[kh-1-i, kw-1-j]), zero in unused lanes.
template <typename T>
static void load_taps(const T *w, typename Vec<T>::type *taps, int64_t c, int64_t c0, int64_t n, int64_t kk,
                      bool flip) {
    for (int64_t t = 0; t < kk; ++t) {
        const int64_t src = flip ? kk - 1 - t : t;
        taps[t] = typename Vec<T>::type{};
        std::memcpy((void *)&taps[t], w + src * c + c0, n * sizeof(T));
    }
}

// out[b, r, s, c0 : c0 + n] = init + sum_{i,j} taps[i * kw + j] * buf[(r + i) * stride + s + j]
template <typename T>
static void correlate(const typename Vec<T>::type *buf, const typename Vec<T>::type *taps, const T *init, T *out,
                      int64_t b, int64_t h, int64_t wd, int64_t c, int64_t c0, int64_t n, int64_t kh,
                      int64_t kw) {
    typedef typename Vec<T>::type V;
    const int64_t stride = wd + kw - 1;
    V base{};
    if (init) std::memcpy((void *)&base, init + c0, n * sizeof(T));
    for (int64_t r = 0; r < h; ++r) {
        for (int64_t s0 = 0; s0 < wd; s0 += ROW) {
            const int64_t m = wd - s0 < ROW ? wd - s0 : ROW;
            V acc[ROW];
            for (int64_t t = 0; t < ROW; ++t) acc[t] = base;
            for (int64_t i = 0; i < kh; ++i) {
                const V *line = buf + (r + i) * stride + s0;
                for (int64_t j = 0; j < kw; ++j) {
                    const V wv = taps[i * kw + j];
                    if (m == ROW) {
                        for (int64_t t = 0; t < ROW; ++t) acc[t] += wv * line[t + j];
                    } else {
                        for (int64_t t = 0; t < m; ++t) acc[t] += wv * line[t + j];
                    }
                }
            }
            for (int64_t t = 0; t < m; ++t)
                std::memcpy(out + ((b * h + r) * wd + s0 + t) * c + c0, (const void *)&acc[t], n * sizeof(T));
        }
    }
}

template <typename T>
static void convolve(const T *src, const T *w, const T *bias, T *y, int64_t nb, int64_t h, int64_t wd, int64_t c,
                     int64_t kh, int64_t kw, bool flip, int nthreads) {
    typedef typename Vec<T>::type V;
    const int64_t L = Vec<T>::L, ph = kh / 2, pw = kw / 2, blocks = (c + L - 1) / L;
#pragma omp parallel num_threads(nthreads)
    {
        std::vector<V> buf((h + 2 * ph) * (wd + 2 * pw)), taps(kh * kw);
#pragma omp for collapse(2) schedule(static)
        for (int64_t b = 0; b < nb; ++b) {
            for (int64_t cb = 0; cb < blocks; ++cb) {
                const int64_t c0 = cb * L, n = c - c0 < L ? c - c0 : L;
                gather<T>(src, buf.data(), b, h, wd, c, c0, n, ph, pw);
                load_taps<T>(w, taps.data(), c, c0, n, kh * kw, flip);
                correlate<T>(buf.data(), taps.data(), bias, y, b, h, wd, c, c0, n, kh, kw);
            }
        }
    }
}

// dw and dbias (either may be null) for all channels; each item owns a channel block over all batch rows.
template <typename T>
static void weight_grad(const T *dy, const T *x, T *dw, T *dbias, int64_t nb, int64_t h, int64_t wd, int64_t c,
                        int64_t kh, int64_t kw, int nthreads) {
    typedef typename Vec<T>::type V;
    const int64_t L = Vec<T>::L, ph = kh / 2, pw = kw / 2, blocks = (c + L - 1) / L, stride = wd + 2 * pw;
#pragma omp parallel num_threads(nthreads)
    {
        std::vector<V> buf((h + 2 * ph) * stride), acc(kh * kw);
#pragma omp for schedule(static)
        for (int64_t cb = 0; cb < blocks; ++cb) {
            const int64_t c0 = cb * L, n = c - c0 < L ? c - c0 : L;
            for (auto &a : acc) a = V{};
            V gb{};
            for (int64_t b = 0; b < nb; ++b) {
                gather<T>(x, buf.data(), b, h, wd, c, c0, n, ph, pw);
                for (int64_t r = 0; r < h; ++r) {
                    for (int64_t s = 0; s < wd; ++s) {
                        V g{};
                        std::memcpy((void *)&g, dy + ((b * h + r) * wd + s) * c + c0, n * sizeof(T));
                        gb += g;
                        for (int64_t i = 0; i < kh; ++i) {
                            const V *line = buf.data() + (r + i) * stride + s;
                            V *a = acc.data() + i * kw;
                            for (int64_t j = 0; j < kw; ++j) a[j] += g * line[j];
                        }
                    }
                }
            }
            if (dw)
                for (int64_t t = 0; t < kh * kw; ++t) std::memcpy(dw + t * c + c0, (const void *)&acc[t], n * sizeof(T));
            if (dbias) std::memcpy(dbias + c0, (const void *)&gb, n * sizeof(T));
        }
    }
}

extern "C" {

void dwconv_forward_f32(const float *x, const float *w, const float *bias, float *y, int64_t nb, int64_t h,
                        int64_t wd, int64_t c, int64_t kh, int64_t kw, int nthreads) {
    convolve<float>(x, w, bias, y, nb, h, wd, c, kh, kw, false, nthreads);
}
void dwconv_forward_f64(const double *x, const double *w, const double *bias, double *y, int64_t nb, int64_t h,
                        int64_t wd, int64_t c, int64_t kh, int64_t kw, int nthreads) {
    convolve<double>(x, w, bias, y, nb, h, wd, c, kh, kw, false, nthreads);
}
void dwconv_backward_input_f32(const float *dy, const float *w, float *dx, int64_t nb, int64_t h, int64_t wd,
                               int64_t c, int64_t kh, int64_t kw, int nthreads) {
    convolve<float>(dy, w, nullptr, dx, nb, h, wd, c, kh, kw, true, nthreads);
}
void dwconv_backward_input_f64(const double *dy, const double *w, double *dx, int64_t nb, int64_t h, int64_t wd,
                               int64_t c, int64_t kh, int64_t kw, int nthreads) {
    convolve<double>(dy, w, nullptr, dx, nb, h, wd, c, kh, kw, true, nthreads);
}
void dwconv_backward_weight_f32(const float *dy, const float *x, float *dw, float *dbias, int64_t nb, int64_t h,
                                int64_t wd, int64_t c, int64_t kh, int64_t kw, int nthreads) {
    weight_grad<float>(dy, x, dw, dbias, nb, h, wd, c, kh, kw, nthreads);
}
void dwconv_backward_weight_f64(const double *dy, const double *x, double *dw, double *dbias, int64_t nb,
                                int64_t h, int64_t wd, int64_t c, int64_t kh, int64_t kw, int nthreads) {
    weight_grad<double>(dy, x, dw, dbias, nb, h, wd, c, kh, kw, nthreads);
}

}  // extern "C"
