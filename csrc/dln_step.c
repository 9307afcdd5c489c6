/* dln_step.c -- the C kernel of engine's ``cblas`` backend (see dln_step.h). */
#include <math.h>
#include "dln_step.h"

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
