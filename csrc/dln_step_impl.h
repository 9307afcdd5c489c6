/* dln_step_impl.h -- body of the GD step, written once for both precisions.
 *
 * Included twice by dln_step.c, with
 *   REAL     the scalar type (double / float)
 *   GEMM_FN  the matching Fortran ?gemm pointer type
 *   SFX(x)   appends the precision suffix to a name
 *
 * Notation (docs/design.md, "Chain products"; engine/kernels/numpy_backend.py):
 *   suffix   S_i = beta M_L ... M_{i+1}   (d_out x d_i),  S_L = beta I
 *   prefix   P_i = M_i ... M_1 X_red      (d_i x r),      P_0 = X_red = diag(xs)
 *   residual R = S_0 X_red - Y_red = beta P_L - Y_red     (d_out x r)
 *   gradient dl/dM_i = S_i^T R P_{i-1}^T = S_i^T T_{i-1}^T,
 *            T_{i-1} = M_{i-1} ... M_1 X_red R^T          (d_{i-1} x d_out)
 *
 * Two-pass schedule (docs/design.md, "The step schedule"):
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

/* Read-only pass computing the suffix chain S_{L-1} .. S_1 (stored at
 * Sch + sum_{1<=k<j} d_out d_k) and S_0 (d_out x r), docs/design.md pass 1 of the
 * T form.  Each product S_j = S_{j+1} M_{j+1} is split by columns across
 * threads (disjoint outputs: deterministic).  With block_bytes > 0 (the
 * single-pass schedule rebuilding its chain after a reset) it instead sums,
 * serially, over the row blocks of the top-down sweep, to match its bits. */
static void SFX(suffix_pass)(GEMM_FN gemm, int L, const int *widths, REAL **layers, REAL rbeta,
                             REAL *Sch, long long totS, REAL *s0, long long block_bytes)
{
    const int r = widths[0], d_out = widths[L];
    if (L == 1) {
        for (long long k = 0; k < (long long)d_out * r; k++) s0[k] = layers[0][k] * rbeta;
        return;
    }
    REAL *S = Sch + totS - (long long)d_out * widths[L - 1];       /* S_{L-1} = beta M_L */
    for (long long k = 0; k < (long long)d_out * widths[L - 1]; k++) S[k] = layers[L - 1][k] * rbeta;
    for (int j = L - 2; j >= 0; j--) {       /* S_j = S_{j+1} M_{j+1}; j = 0 gives S_0 */
        const int dn = widths[j + 1], dp = widths[j];
        REAL *Sj = j > 0 ? S - (long long)d_out * dp : s0;
        const REAL *M = layers[j];
        if (block_bytes > 0 && j > 0) {
            /* accumulate over the row blocks the top-down sweep uses, so a
             * chain rebuilt after reset is bit for bit the one that sweep
             * would have carried (resume from a checkpoint) */
            const int rb = SFX(block_rows)(block_bytes, dp);
            for (int a = 0; a < dn; a += rb) {
                const int nb = (dn - a < rb) ? dn - a : rb;
                SFX(mm)(gemm, 'N', 'N', d_out, dp, nb, (REAL)1, S + a, dn, M + (long long)a * dp, dp,
                        a == 0 ? (REAL)0 : (REAL)1, Sj, dp);
            }
            S = Sj;
            continue;
        }
        const int nt = j > 0 ? dln_threads((long long)dn * dp) : 1;   /* S_0 as the sweep does */
        if (nt > 1) {
#ifdef _OPENMP
            #pragma omp parallel num_threads(nt)
            {
                const int t = omp_get_thread_num(), nth = omp_get_num_threads();
                const int c0 = dln_split(dp, nth, t), c1 = dln_split(dp, nth, t + 1);
                if (c1 > c0)
                    SFX(mm)(gemm, 'N', 'N', d_out, c1 - c0, dn, (REAL)1, S, dn, M + c0, dp, (REAL)0,
                            Sj + c0, dp);
            }
#endif
        } else {                             /* no team: a fork costs ~1 us per layer */
            SFX(mm)(gemm, 'N', 'N', d_out, dp, dn, (REAL)1, S, dn, M, dp, (REAL)0, Sj, dp);
        }
        S = Sj;
    }
}

/* Read-only pass computing the prefix chain P_1 .. P_L (stored at
 * Pch + sum_{1<=k<j} d_k r), docs/design.md pass 1 of the P form.  Each product
 * P_{j+1} = M_{j+1} P_j is split by rows across threads. */
static void SFX(prefix_pass)(GEMM_FN gemm, int L, const int *widths, REAL **layers,
                             const REAL *xs, REAL *Pch)
{
    const int r = widths[0];
    REAL *P = Pch;                           /* P_1 = B_1 diag(xs) */
    for (int p = 0; p < widths[1]; p++)
        for (int q = 0; q < r; q++)
            P[(long long)p * r + q] = layers[0][(long long)p * r + q] * xs[q];
    for (int j = 1; j < L; j++) {
        const int dn = widths[j + 1], dp = widths[j];
        REAL *Pn = P + (long long)dp * r;
        const REAL *M = layers[j];
        const int nt = dln_threads((long long)dn * dp);
        if (nt > 1) {
#ifdef _OPENMP
            #pragma omp parallel num_threads(nt)
            {
                const int t = omp_get_thread_num(), nth = omp_get_num_threads();
                const int r0 = dln_split(dn, nth, t), r1 = dln_split(dn, nth, t + 1);
                if (r1 > r0)
                    SFX(mm)(gemm, 'N', 'N', r1 - r0, r, dp, (REAL)1, M + (long long)r0 * dp, dp, P, r,
                            (REAL)0, Pn + (long long)r0 * r, r);
            }
#endif
        } else {
            SFX(mm)(gemm, 'N', 'N', dn, r, dp, (REAL)1, M, dp, P, r, (REAL)0, Pn, r);
        }
        P = Pn;
    }
}

/* Row blocks of a dn x dp layer for the fused passes: at most block_bytes
 * each, and at least one block per thread when the layer is split. */
static int SFX(fused_rows)(long long block_bytes, int dn, int dp, int nt)
{
    int rb = SFX(block_rows)(block_bytes, dp);
    const int share = (dn + nt - 1) / nt;
    return rb < share ? rb : share;
}


/* Top-down fused sweep over layer i (0-based, i >= 1) of the P-form update:
 *   S_old_i = S_old_{i+1} M_i           (old block; i = L-1: beta M_L)
 *   M_i    -= Q P_i^T                    (Q = c_i S_{i+1}^T R, rank r)
 *   S_new_i = S_new_{i+1} M_i            (new block; only if Snew != NULL)
 * Threads own disjoint column ranges of M_i (so of S_i: no reduction, same
 * arithmetic for any thread count); each walks its columns in row blocks,
 * and every tile is used by all products while it is in cache. */
static void SFX(topdown_part)(int t, int nth, GEMM_FN gemm, int top, int dn, int dp, int d_out, int r,
                              REAL rbeta, REAL *M, const REAL *S, REAL *Sn, const REAL *Q,
                              const REAL *Pi, const REAL *SnewUp, REAL *Snew, long long block_bytes)
{
    {
        const int c0 = dln_split(dp, nth, t), c1 = dln_split(dp, nth, t + 1), cw = c1 - c0;
        /* row blocks sized on the full row, not this thread's columns: the
         * S products then sum the same K blocks for any thread count */
        const int rb = SFX(block_rows)(block_bytes, dp);
        for (int a = 0; cw > 0 && a < dn; a += rb) {
            const int nb = (dn - a < rb) ? dn - a : rb;
            REAL *Mt = M + (long long)a * dp + c0;           /* tile nb x cw, ld dp */
            const REAL b0 = a == 0 ? (REAL)0 : (REAL)1;
            if (top) {
                for (int p = 0; p < nb; p++)
                    for (int q = 0; q < cw; q++)
                        Sn[(long long)(a + p) * dp + c0 + q] = Mt[(long long)p * dp + q] * rbeta;
            } else {
                SFX(mm)(gemm, 'N', 'N', d_out, cw, nb, (REAL)1, S + a, dn, Mt, dp, b0, Sn + c0, dp);
            }
            SFX(mm)(gemm, 'N', 'T', nb, cw, r, (REAL)-1, Q + (long long)a * r, r,
                    Pi + (long long)c0 * r, r, (REAL)1, Mt, dp);
            if (Snew == NULL) continue;
            if (top) {
                for (int p = 0; p < nb; p++)
                    for (int q = 0; q < cw; q++)
                        Snew[(long long)(a + p) * dp + c0 + q] = Mt[(long long)p * dp + q] * rbeta;
            } else {
                SFX(mm)(gemm, 'N', 'N', d_out, cw, nb, (REAL)1, SnewUp + a, dn, Mt, dp, b0,
                        Snew + c0, dp);
            }
        }
    }
}

static void SFX(topdown_layer)(GEMM_FN gemm, int top, int dn, int dp, int d_out, int r, REAL rbeta,
                               REAL *M, const REAL *S, REAL *Sn, const REAL *Q, const REAL *Pi,
                               const REAL *SnewUp, REAL *Snew, long long block_bytes)
{
    const int nt = dln_threads((long long)dn * dp);
    if (nt > 1) {
#ifdef _OPENMP
        #pragma omp parallel num_threads(nt)
        SFX(topdown_part)(omp_get_thread_num(), omp_get_num_threads(), gemm, top, dn, dp, d_out, r,
                          rbeta, M, S, Sn, Q, Pi, SnewUp, Snew, block_bytes);
#endif
    } else {
        SFX(topdown_part)(0, 1, gemm, top, dn, dp, d_out, r, rbeta, M, S, Sn, Q, Pi, SnewUp, Snew,
                          block_bytes);
    }
}

/* Bottom-up fused sweep over layer i (0-based, i < L-1) of the T-form update:
 *   T_{i+1} = M T_i                      (old block)
 *   M      -= c_i S_{i+1}^T T_i^T        (rank d_out)
 *   P_{i+1} = M P_i                      (new block; only if Pn != NULL;
 *                                         i = 0: P_1 = M diag(xs))
 * Rows are independent: threads own disjoint row blocks. */
static void SFX(bottomup_part)(int t, int nth, int rb, GEMM_FN gemm, int first, int dn, int dp,
                               int d_out, int r, REAL mci, REAL *M, const REAL *T, REAL *Tn,
                               const REAL *S, const REAL *xs, const REAL *Pp, REAL *Pn)
{
    const int nblk = (dn + rb - 1) / rb;     /* this thread: blocks [b0, b1) */
    const int b0 = (int)((long long)nblk * t / nth), b1 = (int)((long long)nblk * (t + 1) / nth);
    for (int bi = b0; bi < b1; bi++) {
        const int a = bi * rb, nb = (dn - a < rb) ? dn - a : rb;
        REAL *Mb = M + (long long)a * dp;
        SFX(mm)(gemm, 'N', 'N', nb, d_out, dp, (REAL)1, Mb, dp, T, d_out, (REAL)0,
                Tn + (long long)a * d_out, d_out);
        SFX(mm)(gemm, 'T', 'T', nb, dp, d_out, mci, S + a, dn, T, d_out, (REAL)1, Mb, dp);
        if (Pn == NULL) continue;
        if (first) {
            for (int p = 0; p < nb; p++)
                for (int q = 0; q < r; q++)
                    Pn[(long long)(a + p) * r + q] = Mb[(long long)p * r + q] * xs[q];
        } else {
            SFX(mm)(gemm, 'N', 'N', nb, r, dp, (REAL)1, Mb, dp, Pp, r, (REAL)0,
                    Pn + (long long)a * r, r);
        }
    }
}

static void SFX(bottomup_layer)(GEMM_FN gemm, int first, int dn, int dp, int d_out, int r, REAL mci,
                                REAL *M, const REAL *T, REAL *Tn, const REAL *S, const REAL *xs,
                                const REAL *Pp, REAL *Pn, long long block_bytes)
{
    const int nt = dln_threads((long long)dn * dp);
    const int rb = SFX(fused_rows)(block_bytes, dn, dp, nt);
    if (nt > 1) {
#ifdef _OPENMP
        #pragma omp parallel num_threads(nt)
        SFX(bottomup_part)(omp_get_thread_num(), omp_get_num_threads(), rb, gemm, first, dn, dp,
                           d_out, r, mci, M, T, Tn, S, xs, Pp, Pn);
#endif
    } else {
        SFX(bottomup_part)(0, 1, rb, gemm, first, dn, dp, d_out, r, mci, M, T, Tn, S, xs, Pp, Pn);
    }
}

/* Q = c_i S_{i+1}^T R (dn x r); the top layer has S_L = beta I. */
static void SFX(make_Q)(GEMM_FN gemm, int top, int dn, int d_out, int r, REAL rbeta, REAL ci,
                        const REAL *S, const REAL *R, REAL *Q)
{
    if (top) {
        for (long long k = 0; k < (long long)dn * r; k++) Q[k] = (R[k] * rbeta) * ci;
    } else {
        SFX(mm)(gemm, 'T', 'N', dn, r, d_out, (REAL)1, S, dn, R, r, (REAL)0, Q, r);
        for (long long k = 0; k < (long long)dn * r; k++) Q[k] *= ci;
    }
}

/* T_0 = X_red R^T (r x d_out). */
static void SFX(make_T0)(int d_out, int r, const REAL *R, const REAL *xs, REAL *T)
{
    for (int p = 0; p < d_out; p++)
        for (int q = 0; q < r; q++)
            T[(long long)q * d_out + p] = R[(long long)p * r + q] * xs[q];
}

/* Top layer of a bottom-up sweep: S_L = beta I, so M_L -= beta c_L T^T. */
static void SFX(top_T_update)(int dn, int dp, int d_out, REAL bc, REAL *M, const REAL *T)
{
    for (int p = 0; p < dn; p++)
        for (int q = 0; q < dp; q++)
            M[(long long)p * dp + q] -= T[(long long)q * d_out + p] * bc;
}

int SFX(dln_step)(void *gemm_ptr, int L, const int *widths, REAL **layers,
                  const double *c, double beta, const REAL *xs, const REAL *yred,
                  int form, long long block_bytes, REAL *work, double lo, double hi,
                  int do_update, double *excess)
{
    GEMM_FN gemm = (GEMM_FN)gemm_ptr;
    const int r = widths[0], d_out = widths[L];
    const long long ndr = (long long)d_out * r;
    const REAL rbeta = (REAL)beta;
    int maxd = 0, maxd0 = r;                 /* max d_1..d_L, max d_0..d_{L-1} */
    long long totS = 0, totP = 0;
    for (int i = 1; i <= L; i++) {
        if (widths[i] > maxd) maxd = widths[i];
        if (i < L && widths[i] > maxd0) maxd0 = widths[i];
        if (i < L) totS += (long long)d_out * widths[i];
        totP += (long long)widths[i] * r;
    }
    double e;

    if (form == DLN_FORM_P) {
        /* work: P_1..P_L | R | Q | S ping-pong */
        REAL *Pch = work;
        REAL *R = Pch + totP;
        REAL *Q = R + ndr;
        REAL *S = Q + (long long)maxd * r, *Sn = S + (long long)d_out * maxd;
        /* ---- pass 1, bottom-up (read-only): P_1 .. P_L, R = beta P_L - Y_red ---- */
        SFX(prefix_pass)(gemm, L, widths, layers, xs, Pch);
        const REAL *PL = Pch + totP - ndr;
        for (long long k = 0; k < ndr; k++) R[k] = PL[k] * rbeta - yred[k];
        e = SFX(half_sq)(R, ndr);
        *excess = e;
        if (!do_update || !(isfinite(e) && lo < e && e <= hi)) return 0;
        /* ---- pass 2, top-down: carry S from old blocks, rank-r update ---- */
        long long offP = totP - (long long)widths[L] * r;
        for (int i = L - 1; i >= 0; i--) {
            const int dn = widths[i + 1], dp = widths[i];
            REAL *M = layers[i];
            SFX(make_Q)(gemm, i == L - 1, dn, d_out, r, rbeta, (REAL)c[i], S, R, Q);
            if (i == 0) {                    /* P_0 = diag(xs): M_1 -= Q diag(xs) */
                for (int p = 0; p < dn; p++)
                    for (int q = 0; q < r; q++)
                        M[(long long)p * r + q] -= Q[(long long)p * r + q] * xs[q];
                break;
            }
            offP -= (long long)dp * r;       /* P_i, dp x r */
            SFX(topdown_layer)(gemm, i == L - 1, dn, dp, d_out, r, rbeta, M, S, Sn, Q, Pch + offP,
                               NULL, NULL, block_bytes);
            REAL *tmp = S; S = Sn; Sn = tmp;
        }
        return 1;
    }

    /* ---- T form.  work: S_1..S_{L-1} | S_0 | R | T ping-pong ---- */
    REAL *Sch = work;
    REAL *s0 = Sch + totS;
    REAL *R = s0 + ndr;
    REAL *T = R + ndr, *Tn = T + (long long)maxd0 * d_out;
    /* pass 1, top-down (read-only): S_{L-1} .. S_0, then R = S_0 X_red - Y_red */
    SFX(suffix_pass)(gemm, L, widths, layers, rbeta, Sch, totS, s0, 0);
    for (int p = 0; p < d_out; p++)
        for (int q = 0; q < r; q++)
            R[(long long)p * r + q] = s0[(long long)p * r + q] * xs[q] - yred[(long long)p * r + q];
    e = SFX(half_sq)(R, ndr);
    *excess = e;
    if (!do_update || !(isfinite(e) && lo < e && e <= hi)) return 0;
    /* pass 2, bottom-up: carry T from old blocks, rank-d_out update */
    SFX(make_T0)(d_out, r, R, xs, T);
    long long offS = 0;                      /* S_{i+1} for 0-based layer i */
    for (int i = 0; i < L; i++) {
        const int dn = widths[i + 1], dp = widths[i];
        if (i == L - 1) {
            SFX(top_T_update)(dn, dp, d_out, (REAL)(beta * c[i]), layers[i], T);
            break;
        }
        SFX(bottomup_layer)(gemm, i == 0, dn, dp, d_out, r, (REAL)(-c[i]), layers[i], T, Tn,
                            Sch + offS, xs, NULL, NULL, block_bytes);
        REAL *tmp = T; T = Tn; Tn = tmp;
        offS += (long long)d_out * dn;
    }
    return 1;
}

/* ------------------------------------------------------------------------
 * Single-pass alternating schedule (docs/design.md, "The step schedule": 2 weight
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
 *     computes the suffix chain and R (state 1) first;
 *   state 3 (nothing valid, next sweep top-down; resuming a run whose
 *     next sweep was top-down): a read-only pass computes the prefix chain
 *     and R (state 2) first.
 * The read-only passes group their sums as the sweeps do, so a rebuilt
 * chain is bit for bit the one the uninterrupted run would have carried.
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
    const long long ndr = (long long)d_out * r;
    const REAL rbeta = (REAL)beta;
    int maxd = 0, maxd0 = r;
    long long totS = 0, totP = 0;
    for (int i = 1; i <= L; i++) {
        if (widths[i] > maxd) maxd = widths[i];
        if (i < L && widths[i] > maxd0) maxd0 = widths[i];
        if (i < L) totS += (long long)d_out * widths[i];
        totP += (long long)widths[i] * r;
    }
    /* work: S_1..S_{L-1} | S_0 | P_1..P_L | R | Q | S ping-pong | T ping-pong */
    REAL *Sch = work;
    REAL *s0 = Sch + totS;
    REAL *Pch = s0 + ndr;
    REAL *R = Pch + totP;
    REAL *Q = R + ndr;
    REAL *Sa = Q + (long long)maxd * r;
    REAL *Sb = Sa + (long long)d_out * maxd;
    REAL *Ta = Sb + (long long)d_out * maxd;
    REAL *Tb = Ta + (long long)maxd0 * d_out;

    if (*state == 3) {                       /* read-only pass: prefix chain and R */
        SFX(prefix_pass)(gemm, L, widths, layers, xs, Pch);
        const REAL *PL = Pch + totP - ndr;
        for (long long k = 0; k < ndr; k++) R[k] = PL[k] * rbeta - yred[k];
        *state = 2;
    } else if (*state != 1 && *state != 2) { /* read-only pass: suffix chain and R */
        SFX(suffix_pass)(gemm, L, widths, layers, rbeta, Sch, totS, s0, block_bytes);
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
        SFX(make_T0)(d_out, r, R, xs, T);
        long long offS = 0, offP = 0;        /* S_{i+1}, P_{i+1} for 0-based layer i */
        for (int i = 0; i < L; i++) {
            const int dn = widths[i + 1], dp = widths[i];
            REAL *M = layers[i];
            REAL *Pn = Pch + offP;           /* new P_{i+1}, dn x r */
            const REAL *Pp = Pn - (long long)dp * r;   /* new P_i (i >= 1) */
            if (i == L - 1) {
                SFX(top_T_update)(dn, dp, d_out, (REAL)(beta * c[i]), M, T);
                if (i == 0) {
                    for (int p = 0; p < dn; p++)
                        for (int q = 0; q < r; q++)
                            Pn[(long long)p * r + q] = M[(long long)p * r + q] * xs[q];
                } else {
                    SFX(mm)(gemm, 'N', 'N', dn, r, dp, (REAL)1, M, dp, Pp, r, (REAL)0, Pn, r);
                }
                break;
            }
            SFX(bottomup_layer)(gemm, i == 0, dn, dp, d_out, r, (REAL)(-c[i]), M, T, Tn,
                                Sch + offS, xs, Pp, Pn, block_bytes);
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
    REAL *S = Sa, *Sn = Sb;                  /* old S_{i+1}, old S_i */
    long long offP = totP - (long long)widths[L] * r;   /* P_i = offP - d_i r */
    long long offSn = totS;                  /* new S_i = Sch + offSn - d_out d_i */
    for (int i = L - 1; i >= 0; i--) {
        const int dn = widths[i + 1], dp = widths[i];
        REAL *M = layers[i];
        SFX(make_Q)(gemm, i == L - 1, dn, d_out, r, rbeta, (REAL)c[i], S, R, Q);
        const REAL *SnewUp = Sch + offSn;    /* new S_{i+1} (i < L-1), d_out x dn */
        if (i == 0) {                        /* M_1 -= Q diag(xs); new S_0 = S_1 M_1 */
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
        offSn -= (long long)d_out * dp;
        SFX(topdown_layer)(gemm, i == L - 1, dn, dp, d_out, r, rbeta, M, S, Sn, Q, Pch + offP,
                           SnewUp, Sch + offSn, block_bytes);
        REAL *tmp = S; S = Sn; Sn = tmp;
    }
    for (int p = 0; p < d_out; p++)
        for (int q = 0; q < r; q++)
            R[(long long)p * r + q] = s0[(long long)p * r + q] * xs[q] - yred[(long long)p * r + q];
    *state = 1;
    return 1;
}
