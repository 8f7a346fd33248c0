/* ROAD's linear imputation solved in C: the algorithm of imputation_torch.py
 * (multigrid-preconditioned conjugate gradients on the masked 3x3 stencil), each pass
 * over a system's grid one loop instead of several torch operations.
 *
 * Compiled on first use by imputation_c.py (plain C99, no Python or torch headers) and
 * called through ctypes, which releases the GIL, so chunks run side by side in threads.
 *
 * Grids are stored with a one-pixel zero border: pixel (i, j) of an h x w grid sits at
 * (i + 1) * (w + 2) + j + 1, so the stencil needs no bounds checks. Arrays the stencil
 * reads (z, p) are zero outside the removed pixels and on the border.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LEVELS 32

typedef struct {
    int h, w, W;       /* grid size, padded row length w + 2 */
    float *mw;         /* removed mask / 12 */
    float *d12;        /* 12 x the in-image neighbour weights (2 per edge, 1 per corner) */
    float *dinv;       /* omega x mask / diagonal */
    float *m16;        /* removed mask / 16 (the transfer operators' factor) */
    float *r, *z, *t;  /* V-cycle right-hand side, result, residual (levels > 0: r) */
    float *tmp;        /* transfer scratch: ceil(h / 2) + 2 rows of W */
} level_t;

static size_t padded(int h, int w) { return (size_t)(h + 2) * (size_t)(w + 2); }

/* out = A u on the removed pixels (0 elsewhere): mw (d12 u - 2 (edge sum) - corner sum). */
static void apply(const level_t *L, const float *u, float *out)
{
    const int W = L->W;
    for (int i = 0; i < L->h; i++) {
        const size_t k0 = (size_t)(i + 1) * W + 1;
        const float *restrict uc = u + k0, *restrict un = u + k0 - W, *restrict us = u + k0 + W;
        const float *restrict mw = L->mw + k0, *restrict d12 = L->d12 + k0;
        float *restrict o = out + k0;
        for (int j = 0; j < L->w; j++) {
            float edge = (uc[j - 1] + uc[j + 1]) + (un[j] + us[j]);
            float corner = (un[j - 1] + un[j + 1]) + (us[j - 1] + us[j + 1]);
            o[j] = mw[j] * ((d12[j] * uc[j] - 2.0f * edge) - corner);
        }
    }
}

/* c (K x L) = m16_c x the transpose of prolong (per axis f[2I-1] + 3 f[2I] + 3 f[2I+1]
 * + f[2I+2], the ends repeated, rows and columns past the fine grid zero). */
static void restrict_(const level_t *F, const level_t *C, const float *f, float *c)
{
    const int W = F->W, K = C->h, Lc = C->w;
    float *tmp = F->tmp;  /* K rows of the fine width, row I at (I + 1) * W */
    for (int I = 0; I < K; I++) {
        int a = 2 * I - 1 < 0 ? 0 : 2 * I - 1, d = 2 * I + 2 > 2 * K - 1 ? 2 * K - 1 : 2 * I + 2;
        /* fine rows 2I, 2I+1 (a padding row when past the grid), a, d */
        const float *restrict ra = f + (size_t)(a + 1) * W, *restrict rb = f + (size_t)(2 * I + 1) * W;
        const float *restrict rc = f + (size_t)(2 * I + 2) * W, *restrict rd = f + (size_t)(d + 1) * W;
        float *restrict t = tmp + (size_t)(I + 1) * W;
        for (int j = 0; j < W; j++) t[j] = (ra[j] + rd[j]) + 3.0f * (rb[j] + rc[j]);
    }
    for (int I = 0; I < K; I++) {
        const float *t = tmp + (size_t)(I + 1) * W + 1;  /* column j at t[j], t[w] = 0 */
        const float *m16 = C->m16 + (size_t)(I + 1) * C->W + 1;
        float *out = c + (size_t)(I + 1) * C->W + 1;
        for (int J = 0; J < Lc; J++) {
            int a = 2 * J - 1 < 0 ? 0 : 2 * J - 1, d = 2 * J + 2 > 2 * Lc - 1 ? 2 * Lc - 1 : 2 * J + 2;
            out[J] = m16[J] * ((t[a] + t[d]) + 3.0f * (t[2 * J] + t[2 * J + 1]));
        }
    }
}

/* z (fine) -= m16 x prolong(c): per axis fine 2I = 3 c[I] + c[I-1], fine 2I+1 =
 * 3 c[I] + c[I+1], the ends repeated, cropped to the fine grid. */
static void prolong_sub(const level_t *F, const level_t *C, const float *c, float *z)
{
    const int W = F->W, K = C->h, Lc = C->w;
    float *tmp = F->tmp;  /* K rows of the fine width, row I at (I + 1) * W */
    for (int I = 0; I < K; I++) {
        const float *cr = c + (size_t)(I + 1) * C->W + 1;
        float *t = tmp + (size_t)(I + 1) * W + 1;
        for (int J = 0; J < Lc; J++) {
            float lo = cr[J > 0 ? J - 1 : 0], hi = cr[J + 1 < Lc ? J + 1 : Lc - 1];
            t[2 * J] = 3.0f * cr[J] + lo;
            if (2 * J + 1 < F->w) t[2 * J + 1] = 3.0f * cr[J] + hi;
        }
    }
    for (int i = 0; i < F->h; i++) {
        int I = i / 2, n = (i % 2 == 0) ? (I > 0 ? I - 1 : 0) : (I + 1 < K ? I + 1 : K - 1);
        const float *restrict t0 = tmp + (size_t)(I + 1) * W + 1, *restrict t1 = tmp + (size_t)(n + 1) * W + 1;
        const float *restrict m16 = F->m16 + (size_t)(i + 1) * W + 1;
        float *restrict zr = z + (size_t)(i + 1) * W + 1;
        for (int j = 0; j < F->w; j++) zr[j] -= m16[j] * (3.0f * t0[j] + t1[j]);
    }
}

/* z -= dinv (A z - r), with t as scratch (Jacobi sweep). */
static void jacobi(const level_t *L, const float *r, float *z, float *t)
{
    const size_t n = padded(L->h, L->w);
    apply(L, z, t);
    for (size_t k = 0; k < n; k++) z[k] -= L->dinv[k] * (t[k] - r[k]);
}

/* z = one symmetric V-cycle applied to r on level l (an SPD approximation of A^-1 r). */
static void vcycle(level_t *lv, int nlev, int l, const float *r, float *z, int coarse_sweeps)
{
    level_t *L = lv + l;
    const size_t n = padded(L->h, L->w);
    for (size_t k = 0; k < n; k++) z[k] = L->dinv[k] * r[k];
    if (l + 1 < nlev) {
        level_t *C = lv + l + 1;
        apply(L, z, L->t);
        for (size_t k = 0; k < n; k++) L->t[k] -= r[k];  /* minus the residual */
        restrict_(L, C, L->t, C->r);
        vcycle(lv, nlev, l + 1, C->r, C->z, coarse_sweeps);
        prolong_sub(L, C, C->z, z);  /* the cycle is linear: minus the cycle of minus r */
    } else {
        for (int s = 0; s < coarse_sweeps; s++) jacobi(L, r, z, L->t);
    }
    jacobi(L, r, z, L->t);
}

/* Inner product: 8 float lanes (vectorisable without reassociation flags) per block of
 * 1024 values, the blocks' lanes summed in double. */
static double dot(const float *a, const float *b, size_t n)
{
    double s = 0.0;
    for (size_t k0 = 0; k0 < n; k0 += 1024) {
        size_t k1 = k0 + 1024 < n ? k0 + 1024 : n, k = k0;
        float acc[8] = {0};
        for (; k + 8 <= k1; k += 8)
            for (int l = 0; l < 8; l++) acc[l] += a[k + l] * b[k + l];
        for (; k < k1; k++) acc[0] += a[k] * b[k];
        for (int l = 0; l < 8; l++) s += acc[l];
    }
    return s;
}

/* max |a|: the bit patterns of |a| order as their values, and an integer max vectorises. */
static float absmax(const float *a, size_t n)
{
    uint32_t m = 0;
    for (size_t k = 0; k < n; k++) {
        uint32_t v;
        memcpy(&v, a + k, sizeof v);  /* the bits, without breaking aliasing rules */
        v &= 0x7fffffffu;
        m = v > m ? v : m;
    }
    float out;
    memcpy(&out, &m, sizeof out);
    return out;
}

static void free_levels(level_t *lv, int nlev)
{
    for (int l = 0; l < nlev; l++) {
        free(lv[l].mw); free(lv[l].d12); free(lv[l].dinv); free(lv[l].m16);
        free(lv[l].r); free(lv[l].z); free(lv[l].t); free(lv[l].tmp);
    }
}

/* Build the levels of one mask (h x w, 0/1, unpadded); returns the level count or -1. */
static int build_levels(level_t *lv, const float *mask, int h, int w, int min_side, float omega)
{
    int nlev = 0;
    float *m = malloc(sizeof(float) * padded(h, w));  /* padded mask of the current level */
    if (!m) return -1;
    memset(m, 0, sizeof(float) * padded(h, w));
    for (int i = 0; i < h; i++)
        memcpy(m + (size_t)(i + 1) * (w + 2) + 1, mask + (size_t)i * w, sizeof(float) * w);
    for (;;) {
        level_t *L = lv + nlev;
        size_t n = padded(h, w);
        int K = (h + 1) / 2;
        memset(L, 0, sizeof *L);
        L->h = h; L->w = w; L->W = w + 2;
        L->mw = calloc(n, sizeof(float)); L->d12 = calloc(n, sizeof(float));
        L->dinv = calloc(n, sizeof(float)); L->m16 = calloc(n, sizeof(float));
        L->r = calloc(n, sizeof(float)); L->z = calloc(n, sizeof(float));
        L->t = calloc(n, sizeof(float)); L->tmp = calloc((size_t)(K + 2) * (w + 2), sizeof(float));
        nlev++;
        if (!L->mw || !L->d12 || !L->dinv || !L->m16 || !L->r || !L->z || !L->t || !L->tmp) {
            free(m);
            return -nlev - 1;
        }
        for (int i = 0; i < h; i++) {
            int a = (i > 0) + (i < h - 1);
            for (int j = 0; j < w; j++) {
                size_t k = (size_t)(i + 1) * L->W + j + 1;
                int b = (j > 0) + (j < w - 1);
                float d12 = (float)(2 * (a + b) + a * b);
                L->d12[k] = d12;
                L->mw[k] = m[k] / 12.0f;
                L->m16[k] = m[k] / 16.0f;
                L->dinv[k] = d12 > 0 ? omega * m[k] * 12.0f / d12 : 0.0f;
            }
        }
        if ((h < w ? h : w) < 2 * min_side || nlev == MAX_LEVELS) break;
        /* coarse pixel removed when its 2x2 pixels all are (past the grid counts as removed) */
        int Kc = (h + 1) / 2, Lc = (w + 1) / 2, any = 0;
        float *mc = calloc(padded(Kc, Lc), sizeof(float));
        if (!mc) { free(m); return -nlev - 1; }
        for (int I = 0; I < Kc; I++)
            for (int J = 0; J < Lc; J++) {
                int all = 1;
                for (int di = 0; di < 2; di++)
                    for (int dj = 0; dj < 2; dj++) {
                        int i = 2 * I + di, j = 2 * J + dj;
                        if (i < h && j < w && m[(size_t)(i + 1) * (w + 2) + j + 1] == 0.0f) all = 0;
                    }
                mc[(size_t)(I + 1) * (Lc + 2) + J + 1] = (float)all;
                any |= all;
            }
        free(m);
        m = mc;
        if (!any) break;
        h = Kc; w = Lc;
    }
    free(m);
    return nlev;
}

/* Solve nmask * c systems (c right-hand sides per mask), h x w each, unpadded row-major:
 * mask (nmask, h, w) 0/1; b and u (nmask * c, h, w), u written with the solution on
 * the removed pixels (0 elsewhere), each system starting from 0; tol (nmask * c,) the max
 * |residual| to stop at. iters (nmask * c,) gets
 * each system's iterations, -1 where max_iter did not suffice. Returns the number of
 * systems not converged after max_iter iterations, or -1 when memory ran out. */
int dnb_impute(int nmask, int c, int h, int w, const float *mask, const float *b, float *u,
               const float *tol, int max_iter, int min_side, int coarse_sweeps, float omega,
               int *iters)
{
    const size_t n = padded(h, w), W = (size_t)w + 2;
    int failed = 0;
    float *buf = calloc(5 * n, sizeof(float));
    if (!buf) return -1;
    float *x = buf, *r = buf + n, *z = buf + 2 * n, *p = buf + 3 * n, *ap = buf + 4 * n;
    for (int g = 0; g < nmask; g++) {
        level_t lv[MAX_LEVELS];
        int nlev = build_levels(lv, mask + (size_t)g * h * w, h, w, min_side, omega);
        if (nlev < 0) { free_levels(lv, -nlev - 1); free(buf); return -1; }
        const level_t *L = lv;
        for (int ch = 0; ch < c; ch++) {
            const size_t s = (size_t)g * c + ch;
            const float *bs = b + s * h * w;
            float *us = u + s * h * w;
            memset(x, 0, sizeof(float) * n);  /* start from 0: the residual is b */
            memset(r, 0, sizeof(float) * n);
            for (int i = 0; i < h; i++)
                for (int j = 0; j < w; j++) {
                    size_t k = (size_t)(i + 1) * W + j + 1;
                    if (L->mw[k] != 0.0f) r[k] = bs[(size_t)i * w + j];
                }
            vcycle(lv, nlev, 0, r, z, coarse_sweeps);
            memcpy(p, z, sizeof(float) * n);
            double rz = dot(r, z, n);
            int it = 0;
            for (;;) {
                if (absmax(r, n) <= tol[s]) break;
                if (it >= max_iter) { failed++; it = -1; break; }
                apply(L, p, ap);
                double pap = dot(p, ap, n);
                float alpha = (float)(rz / (pap > 1e-30 ? pap : 1e-30));
                for (size_t k = 0; k < n; k++) {
                    x[k] += alpha * p[k];
                    r[k] -= alpha * ap[k];
                }
                vcycle(lv, nlev, 0, r, z, coarse_sweeps);
                double rz_new = dot(r, z, n);
                float beta = (float)(rz_new / (rz > 1e-30 ? rz : 1e-30));
                for (size_t k = 0; k < n; k++) p[k] = z[k] + beta * p[k];
                rz = rz_new;
                it++;
            }
            iters[s] = it;
            for (int i = 0; i < h; i++)
                memcpy(us + (size_t)i * w, x + (size_t)(i + 1) * W + 1, sizeof(float) * w);
        }
        free_levels(lv, nlev);
    }
    free(buf);
    return failed;
}
