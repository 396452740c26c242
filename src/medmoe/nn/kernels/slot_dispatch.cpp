// Fused CPU kernels for Mammoth's dispatch with a head size of 16: "slots attend to patches" where the
// patches are both keys and values (scale 1, softmax over patches):
//
//     z[b,h,i,:] = sum_j softmax_j(<k[h,i,:], x[b,j,h,:]>) x[b,j,h,:],    lse[b,h,i] = log sum_j exp(...)
//
// Layouts (float32): x (b, n, h, 16) with element strides sb, sn, sh (the 16 features contiguous),
// k (h, s, 16) contiguous, z / dz / dk (b, h, s, 16) contiguous, lse / delta (b, h, s), dx like x.
// idx: for each batch row the indices of its real patches (count[b] of them), so padded patches are skipped.
//
// Vectors hold 16 floats (GCC vector extensions; AVX-512 registers on x86-64-v4, pairs of AVX2 registers
// elsewhere). The slots are processed 16 at a time ("lanes = slots"), with the transposed keys of a slot
// block read from L1 and the broadcast patch features as the other operand:
// * forward: online softmax over the patches, 8 patches per rescale, the 16 x 16 output block in registers;
// * backward, per chunk of patches: pass A recomputes p = exp(s - lse) and ds = p (dp - delta) for every
//   slot block, accumulates dk in registers and writes p and ds to a small buffer (L2); pass B forms
//   dx[j] = sum_i p[j,i] dz[i] + ds[j,i] k[i] with the 16 features in one vector, 4 patches at a time.
// Work is split over the (b, h) pairs with OpenMP. No fast-math: the exponential is vectorised by hand.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <cmath>

typedef float v16 __attribute__((vector_size(64)));
typedef int32_t vi16 __attribute__((vector_size(64)));

static const int HD = 16;       // head dimension (features per head)
static const int CHUNK = 64;    // patches per backward chunk
static const int FOLD = 256;    // patches per forward partial sum (a multiple of 8)

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

static inline v16 load16(const float *p) {
    v16 v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

static inline void store16(float *p, v16 v) { std::memcpy(p, &v, sizeof v); }

// Transposed, zero-padded slot blocks: out[blk][d][lane] = src[(blk*16 + lane)*16 + d].
static void transpose_blocks(const float *src, int64_t ns, int64_t nblk, float *out) {
    for (int64_t blk = 0; blk < nblk; ++blk)
        for (int d = 0; d < HD; ++d)
            for (int lane = 0; lane < 16; ++lane) {
                const int64_t i = blk * 16 + lane;
                out[(blk * HD + d) * 16 + lane] = i < ns ? src[i * HD + d] : 0.0f;
            }
}

extern "C" {

int slot_dispatch_head_dim() { return HD; }

// Both entry points return 0, or 1 when a work buffer could not be allocated (the outputs are then invalid).
int slot_dispatch_forward(int64_t nb, int64_t nh, int64_t ns, int64_t n, const float *x, int64_t sb, int64_t sn,
                           int64_t sh, const float *k, const int64_t *idx, const int64_t *count, float *z,
                           float *lse, int nthreads) {
    const int64_t nblk = (ns + 15) / 16;
    int failed = 0;
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1)
    for (int64_t bh = 0; bh < nb * nh; ++bh) {
        const int64_t b = bh / nh, h = bh % nh;
        const int64_t cnt = count[b];
        const int64_t *ib = idx + b * n;
        const float *xb = x + b * sb + h * sh;
        float *kt = (float *)std::malloc(sizeof(float) * nblk * HD * 16);
        if (kt == nullptr) {
#pragma omp atomic write
            failed = 1;
            continue;
        }
        transpose_blocks(k + h * ns * HD, ns, nblk, kt);
        for (int64_t blk = 0; blk < nblk; ++blk) {
            const float *kb = kt + blk * HD * 16;
            // running maximum m; the sums of the current chunk (acc, l) are expressed at m and folded
            // into the totals (tacc, tl, expressed at tm) every FOLD patches: a two-level summation, so
            // float32 rounding grows with FOLD + n / FOLD instead of n.
            v16 m = splat(-INFINITY), l = splat(0.0f), tm = splat(-INFINITY), tl = splat(0.0f);
            v16 acc[HD], tacc[HD];
            for (int d = 0; d < HD; ++d) acc[d] = tacc[d] = splat(0.0f);
            for (int64_t j0 = 0; j0 < cnt; j0 += 8) {
                if (j0 % FOLD == 0 && j0 > 0) {
                    const v16 c = vexp(tm - m);
                    tl = tl * c + l;
                    l = splat(0.0f);
                    for (int d = 0; d < HD; ++d) {
                        tacc[d] = tacc[d] * c + acc[d];
                        acc[d] = splat(0.0f);
                    }
                    tm = m;
                }
                const int g = cnt - j0 < 8 ? (int)(cnt - j0) : 8;
                const float *rows[8];
                v16 s[8];
                v16 mx = m;
                for (int q = 0; q < g; ++q) {
                    rows[q] = xb + ib[j0 + q] * sn;
                    v16 t = splat(0.0f);
                    for (int d = 0; d < HD; ++d) t += load16(kb + d * 16) * rows[q][d];
                    s[q] = t;
                    mx = vmax(mx, t);
                }
                const v16 c = vexp(m - mx);  // rescale the running sums to the new maximum
                l *= c;
                for (int d = 0; d < HD; ++d) acc[d] *= c;
                m = mx;
                for (int q = 0; q < g; ++q) {
                    const v16 p = vexp(s[q] - m);
                    l += p;
                    for (int d = 0; d < HD; ++d) acc[d] += p * rows[q][d];
                }
            }
            {
                const v16 c = vexp(tm - m);
                l = tl * c + l;
                for (int d = 0; d < HD; ++d) acc[d] = tacc[d] * c + acc[d];
            }
            for (int lane = 0; lane < 16; ++lane) {
                const int64_t i = blk * 16 + lane;
                if (i >= ns) break;
                float *zi = z + (bh * ns + i) * HD;
                const float li = l[lane];
                const float inv = li > 0.0f ? 1.0f / li : 0.0f;
                for (int d = 0; d < HD; ++d) zi[d] = acc[d][lane] * inv;
                lse[bh * ns + i] = li > 0.0f ? m[lane] + std::log(li) : -INFINITY;
            }
        }
        std::free(kt);
    }
    return failed;
}

int slot_dispatch_backward(int64_t nb, int64_t nh, int64_t ns, int64_t n, const float *x, int64_t sb,
                            int64_t sn, int64_t sh, const float *k, const int64_t *idx, const int64_t *count,
                            const float *dz, const float *lse, const float *delta, float *dx, float *dk,
                            int nthreads) {
    // dx: the layout of x, rows of padded patches are left untouched (the caller zero-fills them).
    // dk: (b, h, s, 16), overwritten.
    const int64_t nblk = (ns + 15) / 16, spad = nblk * 16;
    int failed = 0;
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1)
    for (int64_t bh = 0; bh < nb * nh; ++bh) {
        const int64_t b = bh / nh, h = bh % nh;
        const int64_t cnt = count[b];
        const int64_t *ib = idx + b * n;
        const float *xb = x + b * sb + h * sh;
        float *dxb = dx + b * sb + h * sh;
        const float *kh = k + h * ns * HD;
        const float *dzh = dz + bh * ns * HD;
        float *work = (float *)std::malloc(sizeof(float) * (3 * nblk * HD * 16 + 2 * spad + CHUNK * 2 * spad));
        if (work == nullptr) {
#pragma omp atomic write
            failed = 1;
            continue;
        }
        float *kt = work, *dzt = kt + nblk * HD * 16, *dkt = dzt + nblk * HD * 16;
        float *lsep = dkt + nblk * HD * 16, *delp = lsep + spad, *buf = delp + spad;
        transpose_blocks(kh, ns, nblk, kt);
        transpose_blocks(dzh, ns, nblk, dzt);
        std::memset(dkt, 0, sizeof(float) * nblk * HD * 16);
        for (int64_t i = 0; i < spad; ++i) {
            // padded slots: lse = +inf gives p = 0 there
            lsep[i] = i < ns ? lse[bh * ns + i] : INFINITY;
            delp[i] = i < ns ? delta[bh * ns + i] : 0.0f;
        }
        for (int64_t c0 = 0; c0 < cnt; c0 += CHUNK) {
            const int64_t cn = cnt - c0 < CHUNK ? cnt - c0 : CHUNK;
            // pass A: p and ds for every (patch, slot) of the chunk; dk accumulated per slot block
            for (int64_t blk = 0; blk < nblk; ++blk) {
                const float *kb = kt + blk * HD * 16, *gb = dzt + blk * HD * 16;
                const v16 lb = load16(lsep + blk * 16), db = load16(delp + blk * 16);
                v16 dacc[HD];  // this chunk's dk, added to the total below (two-level summation)
                for (int d = 0; d < HD; ++d) dacc[d] = splat(0.0f);
                for (int64_t q = 0; q < cn; ++q) {
                    const float *row = xb + ib[c0 + q] * sn;
                    v16 s = splat(0.0f), dp = splat(0.0f);
                    for (int d = 0; d < HD; ++d) {
                        s += load16(kb + d * 16) * row[d];
                        dp += load16(gb + d * 16) * row[d];
                    }
                    const v16 p = vexp(s - lb);
                    const v16 ds = p * (dp - db);
                    store16(buf + (q * 2) * spad + blk * 16, p);
                    store16(buf + (q * 2 + 1) * spad + blk * 16, ds);
                    for (int d = 0; d < HD; ++d) dacc[d] += ds * row[d];
                }
                for (int d = 0; d < HD; ++d) {
                    float *t = dkt + (blk * HD + d) * 16;
                    store16(t, load16(t) + dacc[d]);
                }
            }
            // pass B: dx[j] = sum_i p[j, i] dz[i] + ds[j, i] k[i], 4 patches at a time
            for (int64_t q0 = 0; q0 < cn; q0 += 4) {
                const int g = cn - q0 < 4 ? (int)(cn - q0) : 4;
                v16 a0[4], a1[4];
                for (int u = 0; u < 4; ++u) a0[u] = a1[u] = splat(0.0f);
                const float *pp[4], *pd[4];
                for (int u = 0; u < 4; ++u) {
                    const int64_t q = q0 + (u < g ? u : 0);
                    pp[u] = buf + (q * 2) * spad;
                    pd[u] = buf + (q * 2 + 1) * spad;
                }
                for (int64_t i = 0; i < ns; ++i) {
                    const v16 gi = load16(dzh + i * HD), ki = load16(kh + i * HD);
                    for (int u = 0; u < 4; ++u) {
                        a0[u] += gi * pp[u][i];
                        a1[u] += ki * pd[u][i];
                    }
                }
                for (int u = 0; u < g; ++u) store16(dxb + ib[c0 + q0 + u] * sn, a0[u] + a1[u]);
            }
        }
        float *dkh = dk + bh * ns * HD;
        for (int64_t i = 0; i < ns; ++i)
            for (int d = 0; d < HD; ++d) dkh[i * HD + d] = dkt[((i / 16) * HD + d) * 16 + i % 16];
        std::free(work);
    }
    return failed;
}

}  // extern "C"
