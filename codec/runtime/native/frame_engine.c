/* One streamed frame of the frame-rate ConvNeXt codec in a single call (codec/runtime/native/engine.py).
 *
 * A 20 ms chunk is one frame: in PyTorch it costs a few hundred small operator calls
 * (5-30 us each on a shared CPU) around a dozen matrix-vector products. Here the whole frame
 * (STFT, ConvNeXt blocks, residual code search / codebook sum, inverse STFT) is one C loop
 * over weights the Python side prepared once per stream, with the same arithmetic as the
 * PyTorch modules (float32; the int8 mode rounds activations and outputs to bfloat16 as the
 * PyTorch int8 path in codec/nn/frame_linear.py does), so streamed results match the offline ones up to float
 * summation order.
 *
 * Linear weights are packed in output tiles of TILE columns: packed[t][i][j] = W[t*TILE + j][i]
 * (zero rows past n_out), so each tile is one contiguous block and a frame streams every
 * weight byte exactly once.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

#define TILE 8

typedef struct {
    int32_t n_in, n_out;
    int32_t int8;          /* 0: float32 weights `w`; 1: int8 weights `q` times `scale`, with
                              activations and outputs rounded to bfloat16 like PyTorch's int8 path
                              (frame_linear); 2: int8 `q`, float32 activations, output acc * scale
                              unrounded (the search prefilter) */
    int32_t pad_;
    const float *w;        /* packed float32 [ceil(n_out / TILE)][n_in][TILE] */
    const int8_t *q;       /* packed int8, same layout */
    const float *scale;    /* [n_out]: the bfloat16 scale's value */
    const float *bias;     /* [n_out] */
} Linear;

typedef struct {
    const float *dw_w;     /* depthwise taps [kernel][width] (tap kernel-1 = current frame) */
    const float *dw_b;     /* [width] */
    const float *ln_w, *ln_b;
    Linear fc1, fc2;
    const float *gamma;    /* [width] */
    float *hist;           /* state: the last kernel-1 inputs [kernel-1][width], ring */
    int32_t pos, pad_;     /* ring slot of the oldest input */
} Block;

typedef struct {
    int32_t hop, width, latent, n_blocks;
    int32_t kernel, n_stages;
    int32_t sub_hop, n_fft;        /* the STFT grid: hop / sub_hop sub-frames of n_fft samples per token */
    int32_t head, pad3_;           /* decoder head: 0 log-magnitude + phase, 1 real + imaginary,
                                      2 log-magnitude + (r, i) whose angle is the phase */
    float ln_eps, pad2_;
    Linear inp;                    /* encoder: features -> width; decoder: [z_{t-2} z_{t-1} z_t] -> width */
    Block *blocks;
    const float *ln_w, *ln_b;      /* the final LayerNorm */
    Linear out;                    /* encoder: width -> latent; decoder: width -> the head's outputs */
    const float *window;           /* periodic Hann [n_fft] */
    const float *twiddle;          /* exp(-2 pi i k / n_fft), interleaved re/im [n_fft][2] */
    float *samples;                /* state: encoder the last n_fft - sub_hop samples; decoder the partial
                                      sums of the n_fft - sub_hop samples later sub-frames still add to */
    float *lat_hist;               /* decoder state: the previous two latents [2][latent] */
    const int32_t *sizes;          /* [n_stages] codebook sizes */
    const Linear *prefilter;       /* encoder: per stage, int8 codewords (one scale each, mode 2) */
    const float *const *e2;        /* encoder: per stage squared codeword norms [K] */
    const float *const *tables;    /* per stage latent-space codewords [K][latent] */
    float *scratch;                /* work space (size chosen by the Python side) */
} Net;

/* ---- float32 -> bfloat16 -> float32, round to nearest even (c10::BFloat16's rounding) ---- */
static inline float bf16_round(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return f; /* NaN stays NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    u &= 0xffff0000u;
    memcpy(&f, &u, 4);
    return f;
}

/* The bias / scale epilogue of one output tile: acc [n] -> y [n] (n <= TILE). */
static inline void tile_out(const Linear *L, int o0, int n, const float *acc, float *y) {
    if (L->int8 == 2) {
        for (int j = 0; j < n; j++) y[o0 + j] = acc[j] * L->scale[o0 + j];
    } else if (L->int8) {
        for (int j = 0; j < n; j++) y[o0 + j] = L->bias[o0 + j] + bf16_round(acc[j] * L->scale[o0 + j]);
    } else if (L->bias) {
        for (int j = 0; j < n; j++) y[o0 + j] = acc[j] + L->bias[o0 + j];
    } else {
        for (int j = 0; j < n; j++) y[o0 + j] = acc[j];
    }
}

/* ---- y[R][n_out] = x[R][n_in] W^T + b ----
 * Every output is accumulated in the same order (input index ascending, one fused multiply-add
 * per input) whatever R and the blocking: a frame gives bit-identical results alone or within
 * a chunk. A tile is 8 output columns (one vector) over all inputs, contiguous; a row reads 8
 * tiles side by side (two rows: 4), because one core fetches several sequential streams from
 * memory about 3x faster than one (~20 vs ~7 GB/s on the VM this was written on), and a
 * streamed frame is bound by reading its weights. ``is8`` is a constant at each call site,
 * so the compiler emits separate loops for int8 and float32 weights. */
#define SIDE 8
#ifdef __AVX2__
#define WLOAD(t, i) (is8 ? _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(q + (size_t)(t) * ni * TILE + (size_t)(i) * TILE)))) \
                         : _mm256_loadu_ps(w + (size_t)(t) * ni * TILE + (size_t)(i) * TILE))
#endif

static inline __attribute__((always_inline)) void tiles_out(const Linear *L, int t0, int nt, const float *acc,
                                                            float *y) {
    for (int j = 0; j < nt; j++) {
        const int o0 = (t0 + j) * TILE, n = L->n_out - o0 < TILE ? L->n_out - o0 : TILE;
        tile_out(L, o0, n, acc + j * TILE, y);
    }
}

static inline __attribute__((always_inline)) void linear_tiles(const Linear *L, const float *xs, int R, float *y,
                                                               const int is8) {
    const int ni = L->n_in, no = L->n_out, tiles = (no + TILE - 1) / TILE;
    const float *w = L->w;
    const int8_t *q = L->q;
#ifdef __AVX2__
    float acc[SIDE * TILE], acc1[SIDE * TILE];
    if (R == 1) {
        int t = 0;
        for (; t + SIDE <= tiles; t += SIDE) {
            __m256 a[SIDE];
            for (int j = 0; j < SIDE; j++) a[j] = _mm256_setzero_ps();
            for (int i = 0; i < ni; i++) {
                const __m256 xv = _mm256_set1_ps(xs[i]);
                for (int j = 0; j < SIDE; j++) a[j] = _mm256_fmadd_ps(xv, WLOAD(t + j, i), a[j]);
            }
            for (int j = 0; j < SIDE; j++) _mm256_storeu_ps(acc + j * TILE, a[j]);
            tiles_out(L, t, SIDE, acc, y);
        }
        for (; t < tiles; t++) { /* the last few tiles, one at a time */
            __m256 a0 = _mm256_setzero_ps();
            for (int i = 0; i < ni; i++) a0 = _mm256_fmadd_ps(_mm256_set1_ps(xs[i]), WLOAD(t, i), a0);
            _mm256_storeu_ps(acc, a0);
            tiles_out(L, t, 1, acc, y);
        }
        return;
    }
    for (int t = 0; t < tiles; t += SIDE / 2) {
        const int nt = tiles - t < SIDE / 2 ? tiles - t : SIDE / 2;
        int r = 0;
        for (; r + 2 <= R; r += 2) {
            const float *x0 = xs + (size_t)r * ni, *x1 = x0 + ni;
            __m256 a0[SIDE / 2], a1[SIDE / 2];
            for (int j = 0; j < SIDE / 2; j++) a0[j] = a1[j] = _mm256_setzero_ps();
            if (nt == SIDE / 2) {
                for (int i = 0; i < ni; i++) {
                    const __m256 v0 = _mm256_set1_ps(x0[i]), v1 = _mm256_set1_ps(x1[i]);
                    for (int j = 0; j < SIDE / 2; j++) {
                        const __m256 wv = WLOAD(t + j, i);
                        a0[j] = _mm256_fmadd_ps(v0, wv, a0[j]);
                        a1[j] = _mm256_fmadd_ps(v1, wv, a1[j]);
                    }
                }
            } else {
                for (int i = 0; i < ni; i++) {
                    const __m256 v0 = _mm256_set1_ps(x0[i]), v1 = _mm256_set1_ps(x1[i]);
                    for (int j = 0; j < nt; j++) {
                        const __m256 wv = WLOAD(t + j, i);
                        a0[j] = _mm256_fmadd_ps(v0, wv, a0[j]);
                        a1[j] = _mm256_fmadd_ps(v1, wv, a1[j]);
                    }
                }
            }
            for (int j = 0; j < nt; j++) {
                _mm256_storeu_ps(acc + j * TILE, a0[j]);
                _mm256_storeu_ps(acc1 + j * TILE, a1[j]);
            }
            tiles_out(L, t, nt, acc, y + (size_t)r * no);
            tiles_out(L, t, nt, acc1, y + (size_t)(r + 1) * no);
        }
        for (; r < R; r++) { /* an odd last row */
            const float *x0 = xs + (size_t)r * ni;
            __m256 a0[SIDE / 2];
            for (int j = 0; j < SIDE / 2; j++) a0[j] = _mm256_setzero_ps();
            for (int i = 0; i < ni; i++) {
                const __m256 v0 = _mm256_set1_ps(x0[i]);
                for (int j = 0; j < nt; j++) a0[j] = _mm256_fmadd_ps(v0, WLOAD(t + j, i), a0[j]);
            }
            for (int j = 0; j < nt; j++) _mm256_storeu_ps(acc + j * TILE, a0[j]);
            tiles_out(L, t, nt, acc, y + (size_t)r * no);
        }
    }
#else
    float acc[TILE];
    for (int r = 0; r < R; r++) {
        const float *x0 = xs + (size_t)r * ni;
        for (int t = 0; t < tiles; t++) {
            for (int j = 0; j < TILE; j++) acc[j] = 0.0f;
            for (int i = 0; i < ni; i++)
                for (int j = 0; j < TILE; j++) {
                    const size_t k = (size_t)t * ni * TILE + (size_t)i * TILE + j;
                    acc[j] = fmaf(x0[i], is8 ? (float)q[k] : w[k], acc[j]);
                }
            tiles_out(L, t, 1, acc, y + (size_t)r * no);
        }
    }
#endif
}

static void linear_rows(const Linear *L, const float *x, int R, float *y, float *xtmp) {
    const float *xs = x;
    if (L->int8 == 1) { /* activations in bfloat16, as the PyTorch int8 path */
        for (int i = 0; i < R * L->n_in; i++) xtmp[i] = bf16_round(x[i]);
        xs = xtmp;
    }
    if (L->int8) {
        linear_tiles(L, xs, R, y, 1);
    } else {
        linear_tiles(L, xs, R, y, 0);
    }
}

#ifdef __AVX2__
/* e^x for 8 floats (Cephes' expf: range reduction by ln 2 in two parts, degree-5 polynomial;
 * ~1 ulp), for the GELU below. */
static inline __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
    __m256 fx = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

/* x * (1 + erf(x / sqrt 2)) / 2 for 8 floats, with the erf PyTorch's vectorised CPU GELU uses
 * (Abramowitz & Stegun 7.1.26, |error| < 1.5e-7). */
static inline __m256 gelu8(__m256 v) {
    const __m256 sign = _mm256_set1_ps(-0.0f), one = _mm256_set1_ps(1.0f);
    const __m256 u = _mm256_mul_ps(v, _mm256_set1_ps((float)M_SQRT1_2));
    const __m256 sgn = _mm256_and_ps(sign, u), a = _mm256_xor_ps(sgn, u);
    const __m256 t = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(0.3275911f), a, one));
    __m256 r = _mm256_fmadd_ps(_mm256_set1_ps(1.061405429f), t, _mm256_set1_ps(-1.453152027f));
    r = _mm256_fmadd_ps(r, t, _mm256_set1_ps(1.421413741f));
    r = _mm256_fmadd_ps(r, t, _mm256_set1_ps(-0.284496736f));
    r = _mm256_fmadd_ps(r, t, _mm256_set1_ps(0.254829592f));
    const __m256 ex = exp8(_mm256_xor_ps(sign, _mm256_mul_ps(u, u)));
    const __m256 erf = _mm256_xor_ps(sgn, _mm256_fmadd_ps(_mm256_xor_ps(sign, _mm256_mul_ps(ex, t)), r, one));
    return _mm256_mul_ps(_mm256_mul_ps(v, _mm256_set1_ps(0.5f)), _mm256_add_ps(one, erf));
}
#endif

/* GELU (the exact, erf form) in place over n floats. */
static void gelu(float *x, size_t n) {
    size_t i = 0;
#ifdef __AVX2__
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, gelu8(_mm256_loadu_ps(x + i)));
    if (i < n) { /* the tail through the same vector code, so every element rounds alike */
        float tmp[8] = {0};
        memcpy(tmp, x + i, sizeof(float) * (n - i));
        _mm256_storeu_ps(tmp, gelu8(_mm256_loadu_ps(tmp)));
        memcpy(x + i, tmp, sizeof(float) * (n - i));
    }
#else
    for (; i < n; i++) x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * (float)M_SQRT1_2));
#endif
}

static void layer_norm(const float *x, const float *w, const float *b, float eps, int n, float *y) {
    double s = 0.0, s2 = 0.0;
    for (int i = 0; i < n; i++) s += x[i];
    const double mean = s / n;
    for (int i = 0; i < n; i++) {
        const double d = x[i] - mean;
        s2 += d * d;
    }
    const float m = (float)mean, rstd = (float)(1.0 / sqrt(s2 / n + eps));
    for (int i = 0; i < n; i++) y[i] = (x[i] - m) * rstd * w[i] + b[i];
}

/* x[R][width] <- x + gamma * fc2(gelu(fc1(LayerNorm(depthwise causal conv(x))))), R
 * consecutive frames; the conv runs frame by frame through the block's history ring. */
static void block_rows(const Net *net, Block *B, float *x, int R, float *work) {
    const int C = net->width, K = net->kernel, H = K - 1, nh = B->fc1.n_out;
    float *dw = work, *ln = dw + (size_t)R * C, *hid = ln + (size_t)R * C, *y = hid + (size_t)R * nh;
    float *xtmp = y + (size_t)R * C;
    for (int r = 0; r < R; r++) {
        float *d = dw + (size_t)r * C;
        const float *xr = x + (size_t)r * C;
        for (int c = 0; c < C; c++) d[c] = B->dw_b[c] + B->dw_w[(size_t)H * C + c] * xr[c];
        for (int j = 0; j < H; j++) {
            const float *h = B->hist + (size_t)((B->pos + j) % H) * C, *w = B->dw_w + (size_t)j * C;
            for (int c = 0; c < C; c++) d[c] += w[c] * h[c];
        }
        memcpy(B->hist + (size_t)B->pos * C, xr, sizeof(float) * C);
        B->pos = (B->pos + 1) % H;
        layer_norm(d, B->ln_w, B->ln_b, net->ln_eps, C, ln + (size_t)r * C);
    }
    linear_rows(&B->fc1, ln, R, hid, xtmp);
    gelu(hid, (size_t)R * nh);
    linear_rows(&B->fc2, hid, R, y, xtmp);
    for (size_t i = 0; i < (size_t)R * C; i++) x[i] += y[i] * B->gamma[i % C];
}

/* ---- complex FFT of n = n_fft points (mixed radix 4, 2, 3, 5, ...; kissfft's recursion) ---- */
typedef struct { float re, im; } cpx;

static void fft_work(cpx *out, const cpx *in, int fstride, const int *factors, const cpx *tw, int n_all,
                     int inverse, cpx *scratch) {
    const int p = factors[0], m = factors[1];
    if (m == 1) {
        for (int j = 0; j < p; j++) out[j] = in[(size_t)j * fstride];
    } else {
        for (int j = 0; j < p; j++) fft_work(out + j * m, in + (size_t)j * fstride, fstride * p, factors + 2, tw,
                                             n_all, inverse, scratch);
    }
    for (int u = 0; u < m; u++) {
        for (int q = 0; q < p; q++) scratch[q] = out[u + q * m];
        for (int q1 = 0, k = u; q1 < p; q1++, k += m) {
            cpx acc = scratch[0];
            int idx = 0;
            for (int q = 1; q < p; q++) {
                idx += fstride * k;
                idx %= n_all;
                const float wr = tw[idx].re, wi = inverse ? -tw[idx].im : tw[idx].im;
                acc.re += scratch[q].re * wr - scratch[q].im * wi;
                acc.im += scratch[q].re * wi + scratch[q].im * wr;
            }
            out[k] = acc;
        }
    }
}

static void fft(const cpx *in, cpx *out, int n, const cpx *tw, int inverse) {
    int factors[64], nf = 0, rest = n, p = 4;
    while (rest > 1) {
        while (rest % p) {
            p = p == 4 ? 2 : p == 2 ? 3 : p + 2;
            if (p * p > rest) p = rest;
        }
        rest /= p;
        factors[nf++] = p;
        factors[nf++] = rest;
    }
    cpx scratch[64];
    fft_work(out, in, 1, factors, tw, n, inverse, scratch);
}

static int check_net(const Net *net) {
    return net->kernel >= 2 && net->hop >= 1 && net->width >= 1 && net->latent >= 1 && net->sub_hop >= 1 &&
           net->hop % net->sub_hop == 0 && net->n_fft >= 2 * net->sub_hop && net->n_fft % net->sub_hop == 0 &&
           net->head >= 0 && net->head <= 2;
}

/* Frames per pass through the layers: weights are read once per group, not once per frame. */
#define GROUP 16

/* Residual search of R latents z [R][latent] (consumed: left holding the residuals), codes
 * written to codes[s * stride + r]: the result of codec.quant.search.nearest (fp32), i.e.
 * distances dist_k = (||e_k||^2 - 2 r.e_k) + ||r||^2, the first index within a relative 2^-21
 * of the best wins. Two steps read a quarter of the bytes of a full fp32 pass: int8 codewords
 * give every distance within a proven bound, and only the codewords whose lower bound can
 * reach the tie window of the best upper bound are scored exactly, with the fp32 full pass's
 * arithmetic (the same summation order), so the code is the one it would pick.
 * ``exhaustive`` scores every codeword exactly (the reference the tests compare with). */
static void search_rows(const Net *net, float *z, int R, int n_q, int64_t *codes, int stride, float *work,
                        int exhaustive) {
    const int D = net->latent;
    int kmax = 0;
    for (int s = 0; s < net->n_stages; s++) kmax = net->sizes[s] > kmax ? net->sizes[s] : kmax;
    float *dots = work, *slack = dots + (size_t)R * kmax, *exact = slack + kmax;
    int *cand = (int *)(exact + kmax);
    for (int s = 0; s < n_q; s++) {
        const int K = net->sizes[s];
        const float *e2 = net->e2[s], *scale = net->prefilter[s].scale, *table = net->tables[s];
        linear_rows(&net->prefilter[s], z, R, dots, NULL);
        for (int r = 0; r < R; r++) {
            float *zr = z + (size_t)r * D, *dr = dots + (size_t)r * K, x2 = 0.0f, l1 = 0.0f, upper = INFINITY;
            for (int i = 0; i < D; i++) {
                x2 += zr[i] * zr[i];
                l1 += fabsf(zr[i]);
            }
            /* |r.e_k - approx| <= ||r||_1 scale_k (1/2 rounding + 1e-3 fp32 sums): slack 1.02 x twice that */
            for (int k = 0; k < K; k++) {
                const float d = (e2[k] - 2.0f * dr[k]) + x2;
                slack[k] = exhaustive ? INFINITY : 1.02f * l1 * scale[k] + 1e-6f * (e2[k] + 2.0f * fabsf(dr[k]) + x2);
                dr[k] = d;
                if (d + slack[k] < upper) upper = d + slack[k];
            }
            const float lim = upper + fabsf(upper) * (float)(1.0 / 1048576.0);
            float best = INFINITY;
            int n_cand = 0;
            for (int k = 0; k < K; k++) {
                if (!(dr[k] - slack[k] <= lim)) continue;
                const float *e = table + (size_t)k * D;
                float acc = 0.0f;
                for (int i = 0; i < D; i++) acc = fmaf(zr[i], e[i], acc);
                const float d = (e2[k] - 2.0f * acc) + x2;
                cand[n_cand] = k;
                exact[n_cand++] = d;
                if (d < best) best = d;
            }
            const float thr = best + fabsf(best) * (float)(1.0 / 2097152.0);
            int code = 0; /* no candidate at all (NaN input): index 0, as PyTorch's argmax of zeros */
            for (int c = 0; c < n_cand; c++)
                if (exact[c] <= thr) {
                    code = cand[c];
                    break;
                }
            codes[(size_t)s * stride + r] = code;
            const float *e = table + (size_t)code * D;
            for (int i = 0; i < D; i++) zr[i] -= e[i];
        }
    }
}

/* The search alone, on latents z [R][latent] (overwritten with the residuals): codes [n_q][R].
 * For tests: ``exhaustive`` = 1 scores every codeword exactly. Returns 0 or -1. */
int codec_search(Net *net, float *z, int R, int n_q, int64_t *codes, int exhaustive) {
    if (!check_net(net) || n_q < 1 || n_q > net->n_stages || !net->prefilter) return -1;
    for (int r0 = 0; r0 < R; r0 += GROUP) {
        const int n = R - r0 < GROUP ? R - r0 : GROUP;
        search_rows(net, z + (size_t)r0 * net->latent, n, n_q, codes + r0, R, net->scratch, exhaustive);
    }
    return 0;
}

/* Encoder: n_frames x hop new samples -> codes [n_q][n_frames] (int64). Each token's
 * features are its hop / sub_hop sub-frames' [log(|X| + 1e-5) | Re X / |X| | Im X / |X|] side
 * by side, sub-frame u being the n_fft samples that end at the token's sub-block u (CausalSTFT).
 * Returns 0, or -1 on bad arguments. */
int codec_encode_frames(Net *net, const float *x, int n_frames, int n_q, int64_t *codes) {
    if (!check_net(net) || n_q < 1 || n_q > net->n_stages) return -1;
    const int h = net->hop, hs = net->sub_hop, S = h / hs, n = net->n_fft, ctx = n - hs, bins = n / 2 + 1;
    const int C = net->width, D = net->latent, F3 = 3 * bins, FT = S * F3;
    float *feat = net->scratch, *hc = feat + (size_t)GROUP * FT, *lnb = hc + (size_t)GROUP * C;
    float *z = lnb + (size_t)GROUP * C;
    cpx *buf = (cpx *)(z + (size_t)GROUP * D), *spec = buf + n;
    float *line = (float *)(spec + n), *work = line + ctx + h;
    for (int f0 = 0; f0 < n_frames; f0 += GROUP) {
        const int R = n_frames - f0 < GROUP ? n_frames - f0 : GROUP;
        for (int r = 0; r < R; r++) {
            memcpy(line, net->samples, sizeof(float) * ctx); /* [the last ctx samples | this token] */
            memcpy(line + ctx, x + (size_t)(f0 + r) * h, sizeof(float) * h);
            memcpy(net->samples, line + h, sizeof(float) * ctx);
            for (int u = 0; u < S; u++) {
                const float *seg = line + (size_t)u * hs;
                float *fe = feat + (size_t)r * FT + (size_t)u * F3;
                for (int i = 0; i < n; i++) {
                    buf[i].re = seg[i] * net->window[i];
                    buf[i].im = 0.0f;
                }
                fft(buf, spec, n, (const cpx *)net->twiddle, 0);
                for (int k = 0; k < bins; k++) {
                    const float mag = hypotf(spec[k].re, spec[k].im), d = mag > 1e-5f ? mag : 1e-5f;
                    fe[k] = logf(mag + 1e-5f);
                    fe[bins + k] = spec[k].re / d;
                    fe[2 * bins + k] = spec[k].im / d;
                }
            }
        }
        linear_rows(&net->inp, feat, R, hc, work);
        for (int b = 0; b < net->n_blocks; b++) block_rows(net, &net->blocks[b], hc, R, work);
        for (int r = 0; r < R; r++) layer_norm(hc + (size_t)r * C, net->ln_w, net->ln_b, net->ln_eps, C, lnb + (size_t)r * C);
        linear_rows(&net->out, lnb, R, z, work);
        search_rows(net, z, R, n_q, codes + f0, n_frames, work, 0);
    }
    return 0;
}

/* Values per bin of each sub-frame the decoder head predicts. */
static int head_values(int head) { return head == 2 ? 3 : 2; }

/* Decoder: codes [n_q][n_frames] (int64) -> n_frames x hop samples: per token, hop / sub_hop
 * sub-frames (spectrum from the head, inverse FFT, Hann window), overlap-added at the sub-hop;
 * each sub-frame completes one sub-block (CausalISTFT; a synthesis delay only shifts which
 * output sample that is, which the Python side accounts for). Returns 0, -1 on bad
 * arguments, or -2 when a code is out of its codebook's range (nothing is changed then). */
int codec_decode_frames(Net *net, const int64_t *codes, int n_q, int n_frames, float *out) {
    if (!check_net(net) || n_q < 1 || n_q > net->n_stages) return -1;
    for (int s = 0; s < n_q; s++)
        for (int f = 0; f < n_frames; f++) {
            const int64_t c = codes[(size_t)s * n_frames + f];
            if (c < 0 || c >= net->sizes[s]) return -2;
        }
    const int h = net->hop, hs = net->sub_hop, S = h / hs, n = net->n_fft, kb = n / hs, bins = n / 2 + 1;
    const int C = net->width, D = net->latent, V = head_values(net->head), FS = V * bins;
    float *zin = net->scratch, *hc = zin + (size_t)GROUP * 3 * D, *lnb = hc + (size_t)GROUP * C;
    float *so = lnb + (size_t)GROUP * C;
    cpx *full = (cpx *)(so + (size_t)GROUP * S * FS), *frame = full + n;
    float *work = (float *)(frame + n);
    float *ola = net->samples; /* [kb - 1][hs] partial sums */
    for (int f0 = 0; f0 < n_frames; f0 += GROUP) {
        const int R = n_frames - f0 < GROUP ? n_frames - f0 : GROUP;
        for (int r = 0; r < R; r++) { /* row r: [z_{t-2} z_{t-1} z_t] for the causal kernel-3 conv */
            float *zr = zin + (size_t)r * 3 * D, *z = zr + 2 * D;
            memcpy(zr, net->lat_hist, sizeof(float) * 2 * D);
            for (int i = 0; i < D; i++) z[i] = 0.0f;
            for (int s = 0; s < n_q; s++) {
                const float *e = net->tables[s] + (size_t)codes[(size_t)s * n_frames + f0 + r] * D;
                for (int i = 0; i < D; i++) z[i] += e[i];
            }
            memcpy(net->lat_hist, zr + D, sizeof(float) * 2 * D);
        }
        linear_rows(&net->inp, zin, R, hc, work);
        for (int b = 0; b < net->n_blocks; b++) block_rows(net, &net->blocks[b], hc, R, work);
        for (int r = 0; r < R; r++) layer_norm(hc + (size_t)r * C, net->ln_w, net->ln_b, net->ln_eps, C, lnb + (size_t)r * C);
        linear_rows(&net->out, lnb, R, so, work);
        for (int r = 0; r < R; r++)
            for (int u = 0; u < S; u++) {
                const float *sr = so + (size_t)r * S * FS + (size_t)u * FS;
                for (int k = 0; k < bins; k++) {
                    if (net->head == 0) {
                        const float lm = sr[k] < 7.0f ? sr[k] : 7.0f, mag = expf(lm), ph = sr[bins + k];
                        full[k].re = mag * cosf(ph);
                        full[k].im = mag * sinf(ph);
                    } else if (net->head == 1) {
                        full[k].re = sr[k];
                        full[k].im = sr[bins + k];
                    } else {
                        const float lm = sr[k] < 7.0f ? sr[k] : 7.0f, re = sr[bins + k], im = sr[2 * bins + k];
                        const float scale = expf(lm) / sqrtf(re * re + im * im + 1e-10f);
                        full[k].re = re * scale;
                        full[k].im = im * scale;
                    }
                }
                full[0].im = 0.0f; /* irfft ignores the imaginary parts of DC and Nyquist */
                full[n / 2].im = 0.0f;
                for (int k = 1; k < n / 2; k++) {
                    full[n - k].re = full[k].re;
                    full[n - k].im = -full[k].im;
                }
                fft(full, frame, n, (const cpx *)net->twiddle, 1);
                float *o = out + (size_t)(f0 + r) * h + (size_t)u * hs;
                const float inv = 1.0f / (float)n;
                for (int i = 0; i < hs; i++) o[i] = frame[i].re * inv * net->window[i] + ola[i];
                for (int j = 1; j < kb; j++) { /* the later sub-blocks this frame reaches: partial sums */
                    float *dst = ola + (size_t)(j - 1) * hs;
                    const float *nxt = j + 1 < kb ? ola + (size_t)j * hs : NULL;
                    for (int i = 0; i < hs; i++) {
                        const float v = frame[j * hs + i].re * inv * net->window[j * hs + i];
                        dst[i] = nxt ? v + nxt[i] : v;
                    }
                }
            }
    }
    return 0;
}

/* The frames per layer pass, for the Python side's scratch sizing. */
int codec_group_frames(void) { return GROUP; }
