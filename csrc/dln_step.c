/* dln_step.c -- the C kernel of engine's ``cblas`` backend (see dln_step.h). */
#include <math.h>
#include <stddef.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include "dln_step.h"

/* Layers with fewer elements than this run on one thread: below it a fork
 * costs more than the work (a 256 KiB float64 layer, ~0.1 ms of traffic). */
#define DLN_PAR_MIN 32768LL

int dln_openmp_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 0;
#endif
}

/* Threads for a layer of `elems` scalars (1: run serially). */
static int dln_threads(long long elems)
{
#ifdef _OPENMP
    if (elems >= DLN_PAR_MIN) {
        const int n = omp_get_max_threads();
        return n > 1 ? n : 1;
    }
#else
    (void)elems;
#endif
    return 1;
}

/* Start of part t of n of the range [0, len), rounded down to a multiple of
 * 8 scalars (a cache line of doubles) except at the end. */
static int dln_split(int len, int n, int t)
{
    if (t >= n) return len;
    return (int)(((long long)len * t / n) & ~7LL);
}

/* Fortran ?gemm, all arguments by pointer (scipy.linalg.cython_blas). */
typedef void (*dln_dgemm_fn)(char *, char *, int *, int *, int *, double *, double *, int *,
                             double *, int *, double *, double *, int *);
typedef void (*dln_sgemm_fn)(char *, char *, int *, int *, int *, float *, float *, int *,
                             float *, int *, float *, float *, int *);

long long dln_work_size(int L, const int *widths, int form)
{
    const long long r = widths[0], d_out = widths[L];
    long long maxd = 0, maxd0 = r, tot = 0;
    for (int i = 1; i <= L; i++) {
        if (widths[i] > maxd) maxd = widths[i];
        if (i < L && widths[i] > maxd0) maxd0 = widths[i];
    }
    if (form == DLN_FORM_P) {
        for (int i = 1; i <= L; i++) tot += widths[i] * r;         /* P_1 .. P_L */
        return tot + d_out * r + maxd * r + 2 * d_out * maxd;     /* R, Q, S ping-pong */
    }
    for (int i = 1; i < L; i++) tot += d_out * widths[i];           /* S_1 .. S_{L-1} */
    if (form == DLN_FORM_T)
        return tot + 2 * d_out * r + 2 * maxd0 * d_out;            /* S_0, R, T ping-pong */
    for (int i = 1; i <= L; i++) tot += widths[i] * r;              /* single pass: + P_1 .. P_L */
    return tot + 2 * d_out * r + maxd * r + 2 * d_out * maxd + 2 * maxd0 * d_out;
}

#define REAL double
#define GEMM_FN dln_dgemm_fn
#define SFX(x) x##_f64
#include "dln_step_impl.h"
#undef REAL
#undef GEMM_FN
#undef SFX

#define REAL float
#define GEMM_FN dln_sgemm_fn
#define SFX(x) x##_f32
#include "dln_step_impl.h"
#undef REAL
#undef GEMM_FN
#undef SFX
