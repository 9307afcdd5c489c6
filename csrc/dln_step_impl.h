/* dln_step_impl.h -- body of the GD step, written once for both precisions.
 *
 * Included twice by dln_step.c, with
 *   REAL     the scalar type (double / float)
 *   GEMM_FN  the matching Fortran ?gemm pointer type
 *   SFX(x)   appends the precision suffix to a name
 *
 * Notation (DESIGN.md, "Chain products"; engine/kernels/numpy_backend.py):
 *   suffix   S_i = beta M_L ... M_{i+1}   (d_out x d_i),  S_L = beta I
 *   prefix   P_i = M_i ... M_1 X_red      (d_i x r),      P_0 = X_red = diag(xs)
 *   residual R = S_0 X_red - Y_red = beta P_L - Y_red     (d_out x r)
 *   gradient dl/dM_i = S_i^T R P_{i-1}^T = S_i^T T_{i-1}^T,
 *            T_{i-1} = M_{i-1} ... M_1 X_red R^T          (d_{i-1} x d_out)
 *
 * Two-pass schedule (DESIGN.md, "The step schedule"):
 *   pass 1, read-only: one chain (P bottom-up, or S top-down) and R;
 *   pass 2, fused read-write: per row block of M_i (sized to stay in L2),
 *   advance the other chain from the OLD block, then apply the rank-d_out
 *   (T form) or rank-r (P form) update to that block while it is in cache.
 */

/* Row-major C (M x N) = alpha op(A) op(B) + beta C, with A, B, C row-major.
 * A row-major matrix is its own transpose in column-major order, so this is
 * the column-major product C^T = alpha op(B)^T op(A)^T: same flags, operands
 * swapped. */
static void SFX(mm)(GEMM_FN gemm, char ta, char tb, int M, int N, int K, REAL alpha,
                    const REAL *A, int lda, const REAL *B, int ldb, REAL beta,
                    REAL *C, int ldc)
{
    gemm(&tb, &ta, &N, &M, &K, &alpha, (REAL *)B, &ldb, (REAL *)A, &lda, &beta, C, &ldc);
}

/* Rows of a layer with `cols` columns that fit in `block_bytes`. */
static int SFX(block_rows)(long long block_bytes, int cols)
{
    long long rb = block_bytes / ((long long)cols * (long long)sizeof(REAL));
    return rb < 1 ? 1 : (rb > 0x7fffffff ? 0x7fffffff : (int)rb);
}

/* excess = 1/2 ||R||_F^2, accumulated in double like the numpy backend. */
static double SFX(half_sq)(const REAL *R, long long n)
{
    double s = 0.0;
    for (long long k = 0; k < n; k++) {
        double v = (double)R[k];
        s += v * v;
    }
    return 0.5 * s;
}

int SFX(dln_step)(void *gemm_ptr, int L, const int *widths, REAL **layers,
                  const double *c, double beta, const REAL *xs, const REAL *yred,
                  int form, long long block_bytes, REAL *work, double lo, double hi,
                  int do_update, double *excess)
{
    GEMM_FN gemm = (GEMM_FN)gemm_ptr;
    const int r = widths[0], d_out = widths[L];
    const REAL rbeta = (REAL)beta;
    int maxd = 0, maxd0 = r;                 /* max d_1..d_L, max d_0..d_{L-1} */
    for (int i = 1; i <= L; i++) {
        if (widths[i] > maxd) maxd = widths[i];
        if (i < L && widths[i] > maxd0) maxd0 = widths[i];
    }
    REAL *R;
    double e;

    if (form == DLN_FORM_P) {
        /* ---- pass 1, bottom-up: P_1 .. P_L, then R = beta P_L - Y_red ---- */
        REAL *chain = work;                  /* P_i at chain + off[i] */
        long long tot = 0;
        for (int i = 1; i <= L; i++) tot += (long long)widths[i] * r;
        R = chain + tot;
        REAL *Q = R + (long long)d_out * r;
        REAL *Sa = Q + (long long)maxd * r;
        REAL *Sb = Sa + (long long)d_out * maxd;

        REAL *P = chain;                     /* P_1 = B_1 diag(xs) */
        {
            const REAL *B = layers[0];
            for (int p = 0; p < widths[1]; p++)
                for (int q = 0; q < r; q++)
                    P[(long long)p * r + q] = B[(long long)p * r + q] * xs[q];
        }
        for (int j = 1; j < L; j++) {        /* P_{j+1} = M_{j+1} P_j */
            REAL *Pn = P + (long long)widths[j] * r;
            SFX(mm)(gemm, 'N', 'N', widths[j + 1], r, widths[j], (REAL)1, layers[j], widths[j],
                    P, r, (REAL)0, Pn, r);
            P = Pn;
        }
        for (long long k = 0; k < (long long)d_out * r; k++) R[k] = P[k] * rbeta - yred[k];
        e = SFX(half_sq)(R, (long long)d_out * r);
        *excess = e;
        if (!do_update || !(isfinite(e) && lo < e && e <= hi)) return 0;

        /* ---- pass 2, top-down: carry S, update each block of M_i ---- */
        REAL *S = Sa, *Sn = Sb;              /* S = S_{i+1} for layer i (0-based) */
        /* P_i (paper), used by 0-based layer i >= 1, starts at chain + sum_{j=1}^{i-1} d_j r */
        long long offP = tot - (long long)widths[L] * r    /* start of P_{L-1} */
                         - (L >= 2 ? (long long)widths[L - 1] * r : 0);
        for (int i = L - 1; i >= 0; i--) {
            const int dn = widths[i + 1], dp = widths[i];
            REAL *M = layers[i];
            const REAL ci = (REAL)c[i];
            /* Q = c_i S_{i+1}^T R  (dn x r); the top layer has S_L = beta I */
            if (i == L - 1) {
                for (long long k = 0; k < (long long)dn * r; k++) Q[k] = (R[k] * rbeta) * ci;
            } else {
                SFX(mm)(gemm, 'T', 'N', dn, r, d_out, (REAL)1, S, dn, R, r, (REAL)0, Q, r);
                for (long long k = 0; k < (long long)dn * r; k++) Q[k] *= ci;
            }
            if (i == 0) {                    /* P_0 = diag(xs): M_1 -= Q diag(xs) */
                for (int p = 0; p < dn; p++)
                    for (int q = 0; q < r; q++)
                        M[(long long)p * r + q] -= Q[(long long)p * r + q] * xs[q];
                break;
            }
            const REAL *Pi = chain + offP;   /* P_i, dp x r */
            const int rb = SFX(block_rows)(block_bytes, dp);
            for (int a = 0; a < dn; a += rb) {
                const int nb = (dn - a < rb) ? dn - a : rb;
                REAL *Mb = M + (long long)a * dp;
                /* S_i = S_{i+1} M_i from the OLD block */
                if (i == L - 1) {
                    for (long long k = 0; k < (long long)nb * dp; k++)
                        Sn[(long long)a * dp + k] = Mb[k] * rbeta;
                } else {
                    SFX(mm)(gemm, 'N', 'N', d_out, dp, nb, (REAL)1, S + a, dn, Mb, dp,
                            a == 0 ? (REAL)0 : (REAL)1, Sn, dp);
                }
                /* M_i[a:b] -= Q[a:b] P_i^T while the block is in cache */
                SFX(mm)(gemm, 'N', 'T', nb, dp, r, (REAL)-1, Q + (long long)a * r, r, Pi, r,
                        (REAL)1, Mb, dp);
            }
            REAL *tmp = S; S = Sn; Sn = tmp;
            if (i >= 2) offP -= (long long)widths[i - 1] * r;
        }
        return 1;
    }

    /* ---- T form.  pass 1, top-down: S_{L-1} .. S_1, S_0, then R ---- */
    long long tot = 0;
    for (int i = 1; i < L; i++) tot += (long long)d_out * widths[i];
    REAL *chain = work;                      /* S_j at chain + sum_{i<j} d_out d_i */
    REAL *s0 = chain + tot;
    R = s0 + (long long)d_out * r;
    REAL *Ta = R + (long long)d_out * r;
    REAL *Tb = Ta + (long long)maxd0 * d_out;
    if (L == 1) {
        for (long long k = 0; k < (long long)d_out * r; k++) s0[k] = layers[0][k] * rbeta;
    } else {
        REAL *S = chain + tot - (long long)d_out * widths[L - 1];   /* S_{L-1} = beta M_L */
        for (long long k = 0; k < (long long)d_out * widths[L - 1]; k++)
            S[k] = layers[L - 1][k] * rbeta;
        for (int j = L - 2; j >= 1; j--) {   /* S_j = S_{j+1} M_{j+1} */
            REAL *Sj = S - (long long)d_out * widths[j];
            SFX(mm)(gemm, 'N', 'N', d_out, widths[j], widths[j + 1], (REAL)1, S, widths[j + 1],
                    layers[j], widths[j], (REAL)0, Sj, widths[j]);
            S = Sj;
        }
        SFX(mm)(gemm, 'N', 'N', d_out, r, widths[1], (REAL)1, S, widths[1], layers[0], r,
                (REAL)0, s0, r);             /* S_0 = S_1 M_1 */
    }
    for (int p = 0; p < d_out; p++)
        for (int q = 0; q < r; q++)
            R[(long long)p * r + q] = s0[(long long)p * r + q] * xs[q] - yred[(long long)p * r + q];
    e = SFX(half_sq)(R, (long long)d_out * r);
    *excess = e;
    if (!do_update || !(isfinite(e) && lo < e && e <= hi)) return 0;

    /* ---- pass 2, bottom-up: carry T, update each block of M_i ---- */
    REAL *T = Ta, *Tn = Tb;
    for (int p = 0; p < d_out; p++)          /* T_0 = X_red R^T (r x d_out) */
        for (int q = 0; q < r; q++)
            T[(long long)q * d_out + p] = R[(long long)p * r + q] * xs[q];
    long long offS = 0;                      /* S_{i+1} for 0-based layer i */
    for (int i = 0; i < L; i++) {
        const int dn = widths[i + 1], dp = widths[i];
        REAL *M = layers[i];
        if (i == L - 1) {                    /* S_L = beta I: M_L -= beta c_L T^T */
            const REAL bc = (REAL)(beta * c[i]);
            for (int p = 0; p < dn; p++)
                for (int q = 0; q < dp; q++)
                    M[(long long)p * dp + q] -= T[(long long)q * d_out + p] * bc;
            break;
        }
        const REAL *S = chain + offS;        /* S_{i+1}, d_out x dn */
        const REAL mci = (REAL)(-c[i]);
        const int rb = SFX(block_rows)(block_bytes, dp);
        for (int a = 0; a < dn; a += rb) {
            const int nb = (dn - a < rb) ? dn - a : rb;
            REAL *Mb = M + (long long)a * dp;
            /* T_{i+1}[a:b] = M_{i+1}[a:b] T_i from the OLD block */
            SFX(mm)(gemm, 'N', 'N', nb, d_out, dp, (REAL)1, Mb, dp, T, d_out, (REAL)0,
                    Tn + (long long)a * d_out, d_out);
            /* M[a:b] -= c_i S_{i+1}[:, a:b]^T T_i^T while the block is in cache */
            SFX(mm)(gemm, 'T', 'T', nb, dp, d_out, mci, S + a, dn, T, d_out, (REAL)1, Mb, dp);
        }
        REAL *tmp = T; T = Tn; Tn = tmp;
        offS += (long long)d_out * dn;
    }
    return 1;
}

/* ------------------------------------------------------------------------
 * Single-pass alternating schedule (DESIGN.md, "The step schedule": 2 weight
 * passes per step, the floor).  Each step is ONE sweep over the layers; per
 * row block of M_i it advances the OLD chain from the old block, applies the
 * update, and advances the NEW chain (for the next step) from the new block,
 * all while the block is in cache.  Sweeps alternate direction:
 *
 *   state 1 (S_1..S_{L-1}, S_0 and R valid for the current weights):
 *     bottom-up sweep = T-form update (carry T_i from old blocks, stored S)
 *                       + new prefix P_i from new blocks  -> state 2
 *   state 2 (P_1..P_L and R valid for the current weights):
 *     top-down sweep  = P-form update (carry S_i from old blocks, stored P)
 *                       + new suffix S_i from new blocks  -> state 1
 *   state 0 (nothing valid: first call, or after reset): a read-only pass
 *     computes the suffix chain and R (state 1) first.
 *
 * A step that is not applied (gate or non-finite excess) leaves weights and
 * state as they were.  Work layout: see dln_work_size (form 2).
 * ------------------------------------------------------------------------ */
int SFX(dln_step1)(void *gemm_ptr, int L, const int *widths, REAL **layers,
                   const double *c, double beta, const REAL *xs, const REAL *yred,
                   long long block_bytes, REAL *work, double lo, double hi,
                   int do_update, int *state, double *excess)
{
    GEMM_FN gemm = (GEMM_FN)gemm_ptr;
    const int r = widths[0], d_out = widths[L];
    const REAL rbeta = (REAL)beta;
    int maxd = 0, maxd0 = r;
    long long totS = 0, totP = 0;
    for (int i = 1; i <= L; i++) {
        if (widths[i] > maxd) maxd = widths[i];
        if (i < L && widths[i] > maxd0) maxd0 = widths[i];
        if (i < L) totS += (long long)d_out * widths[i];
        totP += (long long)widths[i] * r;
    }
    REAL *Sch = work;                          /* S_j at Sch + sum_{1<=k<j} d_out d_k */
    REAL *s0 = Sch + totS;                     /* S_0, d_out x r */
    REAL *Pch = s0 + (long long)d_out * r;     /* P_j at Pch + sum_{1<=k<j} d_k r */
    REAL *R = Pch + totP;
    REAL *Q = R + (long long)d_out * r;
    REAL *Sa = Q + (long long)maxd * r;
    REAL *Sb = Sa + (long long)d_out * maxd;
    REAL *Ta = Sb + (long long)d_out * maxd;
    REAL *Tb = Ta + (long long)maxd0 * d_out;
    const long long ndr = (long long)d_out * r;

    if (*state != 1 && *state != 2) {
        /* read-only pass: the suffix chain and R, exactly as pass 1 of the T form */
        if (L == 1) {
            for (long long k = 0; k < ndr; k++) s0[k] = layers[0][k] * rbeta;
        } else {
            REAL *S = Sch + totS - (long long)d_out * widths[L - 1];
            for (long long k = 0; k < (long long)d_out * widths[L - 1]; k++)
                S[k] = layers[L - 1][k] * rbeta;
            for (int j = L - 2; j >= 1; j--) {
                REAL *Sj = S - (long long)d_out * widths[j];
                SFX(mm)(gemm, 'N', 'N', d_out, widths[j], widths[j + 1], (REAL)1, S, widths[j + 1],
                        layers[j], widths[j], (REAL)0, Sj, widths[j]);
                S = Sj;
            }
            SFX(mm)(gemm, 'N', 'N', d_out, r, widths[1], (REAL)1, S, widths[1], layers[0], r,
                    (REAL)0, s0, r);
        }
        for (int p = 0; p < d_out; p++)
            for (int q = 0; q < r; q++)
                R[(long long)p * r + q] = s0[(long long)p * r + q] * xs[q] - yred[(long long)p * r + q];
        *state = 1;
    }
    const double e = SFX(half_sq)(R, ndr);
    *excess = e;
    if (!do_update || !(isfinite(e) && lo < e && e <= hi)) return 0;

    if (*state == 1) {
        /* ---- bottom-up sweep: T-form update + new prefix chain ---- */
        REAL *T = Ta, *Tn = Tb;
        for (int p = 0; p < d_out; p++)        /* T_0 = X_red R^T (r x d_out) */
            for (int q = 0; q < r; q++)
                T[(long long)q * d_out + p] = R[(long long)p * r + q] * xs[q];
        long long offS = 0, offP = 0;          /* S_{i+1}, P_{i+1} for 0-based layer i */
        for (int i = 0; i < L; i++) {
            const int dn = widths[i + 1], dp = widths[i];
            REAL *M = layers[i];
            REAL *Pn = Pch + offP;             /* new P_{i+1}, dn x r */
            const REAL *Pp = Pn - (long long)dp * r;   /* new P_i (i >= 1), dp x r */
            if (i == L - 1) {                  /* S_L = beta I: M_L -= beta c_L T^T */
                const REAL bc = (REAL)(beta * c[i]);
                for (int p = 0; p < dn; p++)
                    for (int q = 0; q < dp; q++)
                        M[(long long)p * dp + q] -= T[(long long)q * d_out + p] * bc;
                if (i == 0) {
                    for (int p = 0; p < dn; p++)
                        for (int q = 0; q < r; q++)
                            Pn[(long long)p * r + q] = M[(long long)p * r + q] * xs[q];
                } else {
                    SFX(mm)(gemm, 'N', 'N', dn, r, dp, (REAL)1, M, dp, Pp, r, (REAL)0, Pn, r);
                }
                break;
            }
            const REAL *S = Sch + offS;        /* stored S_{i+1} (old weights), d_out x dn */
            const REAL mci = (REAL)(-c[i]);
            const int rb = SFX(block_rows)(block_bytes, dp);
            for (int a = 0; a < dn; a += rb) {
                const int nb = (dn - a < rb) ? dn - a : rb;
                REAL *Mb = M + (long long)a * dp;
                SFX(mm)(gemm, 'N', 'N', nb, d_out, dp, (REAL)1, Mb, dp, T, d_out, (REAL)0,
                        Tn + (long long)a * d_out, d_out);           /* old chain */
                SFX(mm)(gemm, 'T', 'T', nb, dp, d_out, mci, S + a, dn, T, d_out, (REAL)1, Mb, dp);
                if (i == 0) {                                         /* new chain */
                    for (int p = 0; p < nb; p++)
                        for (int q = 0; q < r; q++)
                            Pn[(long long)(a + p) * r + q] = Mb[(long long)p * r + q] * xs[q];
                } else {
                    SFX(mm)(gemm, 'N', 'N', nb, r, dp, (REAL)1, Mb, dp, Pp, r, (REAL)0,
                            Pn + (long long)a * r, r);
                }
            }
            REAL *tmp = T; T = Tn; Tn = tmp;
            offS += (long long)d_out * dn;
            offP += (long long)dn * r;
        }
        const REAL *PL = Pch + totP - ndr;
        for (long long k = 0; k < ndr; k++) R[k] = PL[k] * rbeta - yred[k];
        *state = 2;
        return 1;
    }

    /* ---- state 2: top-down sweep: P-form update + new suffix chain ---- */
    REAL *S = Sa, *Sn = Sb;                    /* old S_{i+1}, old S_i */
    long long offP = totP - (long long)widths[L] * r;   /* P_L; P_i = offP - d_i r */
    long long offSn = totS;                    /* new S_i = Sch + offSn - d_out d_i */
    for (int i = L - 1; i >= 0; i--) {
        const int dn = widths[i + 1], dp = widths[i];
        REAL *M = layers[i];
        const REAL ci = (REAL)c[i];
        if (i == L - 1) {
            for (long long k = 0; k < (long long)dn * r; k++) Q[k] = (R[k] * rbeta) * ci;
        } else {
            SFX(mm)(gemm, 'T', 'N', dn, r, d_out, (REAL)1, S, dn, R, r, (REAL)0, Q, r);
            for (long long k = 0; k < (long long)dn * r; k++) Q[k] *= ci;
        }
        const REAL *SnewUp = Sch + offSn;      /* new S_{i+1} (i < L-1), d_out x dn */
        if (i == 0) {                          /* M_1 -= Q diag(xs); new S_0 = S_1 M_1 */
            for (int p = 0; p < dn; p++)
                for (int q = 0; q < r; q++)
                    M[(long long)p * r + q] -= Q[(long long)p * r + q] * xs[q];
            if (L == 1) {
                for (long long k = 0; k < ndr; k++) s0[k] = M[k] * rbeta;
            } else {
                SFX(mm)(gemm, 'N', 'N', d_out, r, dn, (REAL)1, SnewUp, dn, M, r, (REAL)0, s0, r);
            }
            break;
        }
        offP -= (long long)dp * r;
        const REAL *Pi = Pch + offP;           /* stored P_i (old weights), dp x r */
        offSn -= (long long)d_out * dp;
        REAL *Snew = Sch + offSn;              /* new S_i, d_out x dp */
        const int rb = SFX(block_rows)(block_bytes, dp);
        for (int a = 0; a < dn; a += rb) {
            const int nb = (dn - a < rb) ? dn - a : rb;
            REAL *Mb = M + (long long)a * dp;
            const REAL b0 = a == 0 ? (REAL)0 : (REAL)1;
            if (i == L - 1) {                  /* old chain */
                for (long long k = 0; k < (long long)nb * dp; k++)
                    Sn[(long long)a * dp + k] = Mb[k] * rbeta;
            } else {
                SFX(mm)(gemm, 'N', 'N', d_out, dp, nb, (REAL)1, S + a, dn, Mb, dp, b0, Sn, dp);
            }
            SFX(mm)(gemm, 'N', 'T', nb, dp, r, (REAL)-1, Q + (long long)a * r, r, Pi, r,
                    (REAL)1, Mb, dp);
            if (i == L - 1) {                  /* new chain */
                for (long long k = 0; k < (long long)nb * dp; k++)
                    Snew[(long long)a * dp + k] = Mb[k] * rbeta;
            } else {
                SFX(mm)(gemm, 'N', 'N', d_out, dp, nb, (REAL)1, SnewUp + a, dn, Mb, dp, b0,
                        Snew, dp);
            }
        }
        REAL *tmp = S; S = Sn; Sn = tmp;
    }
    for (int p = 0; p < d_out; p++)
        for (int q = 0; q < r; q++)
            R[(long long)p * r + q] = s0[(long long)p * r + q] * xs[q] - yred[(long long)p * r + q];
    *state = 1;
    return 1;
}
