/* dln_step_impl.h -- the GD step, written once for both precisions.
 *
 * Included twice by dln_step.c, with
 *   REAL     the scalar type (double / float)
 *   SFX(x)   appends the precision suffix to a name
 *
 * Notation (docs/design.md, "Chain products"; engine/kernels/numpy_backend.py):
 *   suffix   S_i = beta M_L ... M_{i+1}   (d_out x d_i),  S_L = beta I
 *   prefix   P_i = M_i ... M_1 X_red      (d_i x r),      P_0 = X_red = diag(xs)
 *   residual R = S_0 X_red - Y_red = beta P_L - Y_red     (d_out x r)
 *   gradient dl/dM_i = S_i^T R P_{i-1}^T = S_i^T T_{i-1}^T,
 *            T_{i-1} = M_{i-1} ... M_1 X_red R^T          (d_{i-1} x d_out)
 * The T and P chains are stored transposed (T^T: d_out x d_i, P^T: r x d_i)
 * so that every chain operand is read along a layer's rows, contiguously.
 *
 * Three micro-kernels do all the arithmetic on a tile of a layer M
 * (dn x dp, row-major), each register-blocked with compile-time block sizes
 * (one instance per size, chosen by a table) so its accumulators live in
 * vector registers:
 *
 *   RD  row dots        out[q][j] = sum_k M[j][k] V[q][k]      (T and P chains)
 *       RB rows x QG dot products, vectors along k; lane partial sums are
 *       carried across k-chunks and summed (fixed order) at the row's end.
 *   UP  rank-K update   M[j][k] -= sum_e U[j][e] W[e][k]
 *       g = U[j][0] W[0][k] + ... (FMA chain in e), then M -= g; UP keeps
 *       2 rows' coefficients in registers (bottom-up sweeps), UPW keeps a
 *       2-vector strip of W in registers (top-down tiles).
 *   CA  column accumulate  out[q][k] += sum_j U[j][q] M[j][k]  (S chains)
 *       2 column vectors x QG rows of S, summed over j in order.
 *
 * Every output number is computed by the same sequence of operations
 * whatever the tile sizes, row groups, chunking and thread split: RD sums a
 * lane over k in order, CA sums over j in order, UP's grouping of K depends
 * only on K and the instruction set.  So results are bitwise independent of
 * the thread count and of block_bytes, and a read-only pass that rebuilds a
 * chain (after a reset) gives exactly the chain a fused sweep would have left.
 *
 * Fused sweeps (docs/design.md, "The step schedule"):
 *   bottom-up, per tile of DLN_RBLK rows x a k-chunk sized for L1:
 *     RD  T_{i+1}^T[:, j] from the OLD rows        (carried chain, d_out dots)
 *     UP  M -= c_i S_{i+1}^T T_i^T                  (rank d_out)
 *     RD  P_{i+1}^T[:, j] from the NEW rows         (single-pass: next chain)
 *   top-down, per tile of h rows x one 2-vector column strip:
 *     CA  S_old_i = S_old_{i+1} M_OLD               (carried chain)
 *     UPW M -= U W   (P form: U = c S^T R, W = P_i^T, rank r;
 *                     T form: U = c S^T, W = R P_i^T, rank d_out)
 *     CA  S_new_i = S_new_{i+1} M_NEW               (single-pass: next chain)
 * Each weight is loaded once per sweep; everything that needs it is done
 * while it is in registers or L1.  Layers split across threads by rows
 * (bottom-up) or columns (top-down) inside one parallel region per sweep,
 * with one barrier per split layer; layers under DLN_PAR_MIN weights run on
 * one thread with no barrier.
 */

/* Keep a loaded operand in a register: without this the compiler folds the
 * load into each FMA that uses it (a memory operand per FMA), which makes
 * the loops load-bound. An empty asm with a register constraint (x86). */
#ifndef DLN_IN_REG
#if defined(__AVX512F__) && defined(__GNUC__)
#define DLN_IN_REG(x) __asm__("" : "+v"(x))
#elif (defined(__AVX__) || defined(__SSE2__)) && defined(__GNUC__)
#define DLN_IN_REG(x) __asm__("" : "+x"(x))
#else
#define DLN_IN_REG(x) ((void)0)
#endif
#endif

#define VEC SFX(vec)
#define VL ((dln_ix)(DLN_VB / sizeof(REAL)))
typedef REAL VEC __attribute__((vector_size(DLN_VB)));
typedef DLN_IDX(REAL) SFX(imask) __attribute__((vector_size(DLN_VB)));

DLN_AI VEC SFX(vld)(const REAL *p)
{
    VEC v;
    memcpy(&v, p, sizeof v);
    return v;
}

DLN_AI void SFX(vst)(REAL *p, VEC v) { memcpy(p, &v, sizeof v); }

/* a*b + c with one rounding where the target has FMA (and a*b + c where
 * not, like the vector code): the scalar paths say so explicitly, because
 * the vectorizer may otherwise split a contracted reduction into separate
 * multiplies and adds depending on the trip count, which would make a
 * number's bits depend on how a layer was tiled. */
DLN_AI REAL SFX(fmas)(REAL a, REAL b, REAL c)
{
#if defined(__FMA__) || defined(__ARM_FEATURE_FMA) || defined(__aarch64__)
    return DLN_FMA_BUILTIN(REAL)(a, b, c);
#else
    return a * b + c;
#endif
}

DLN_AI VEC SFX(vsplat)(REAL s)
{
    /* a broadcast: a shuffle of lane 0 (0 + s would add, for the sign of
     * zero; a lane-by-lane loop compiles to one masked load per lane) */
    const VEC t = {s};
    const SFX(imask) zero = {0};
    return __builtin_shuffle(t, zero);
}

/* Ask for the lines of a tile (rows x ncols at p, ld ldm) ahead of use: the
 * sweeps walk a layer in tiles whose rows are far apart in memory, which the
 * hardware prefetchers follow poorly (the first loads of each tile would
 * otherwise wait on memory). For writing: every tile is also updated. */
DLN_AI void SFX(prefetch_tile)(const REAL *p, dln_ix ldm, dln_ix rows, dln_ix ncols)
{
    const dln_ix step = 64 / (dln_ix)sizeof(REAL);
    for (dln_ix j = 0; j < rows; j++)
        for (dln_ix c = 0; c < ncols; c += step) __builtin_prefetch(p + j * ldm + c, DLN_PF_RW, DLN_PF_LOC);
}

/* Lane sums of n <= VL accumulators at once, by a tree of pairwise
 * shuffles and adds (log2 VL levels; ~3 operations per sum instead of VL-1
 * dependent scalar adds).  Level t adds lanes l and l + VL/2^(t+1) of each
 * accumulator's partials, so every accumulator is summed by the same tree,
 * whatever the others in its batch: a dot product's bits depend only on its
 * inputs. */

static SFX(imask) SFX(red_lo)[8], SFX(red_hi)[8];
static int SFX(red_ready);

static void SFX(red_init)(void)
{
    int t = 0;
    for (dln_ix b = VL; b > 1; b >>= 1, t++) {
        const dln_ix half = b / 2, hv = VL / 2;
        for (dln_ix p = 0; p < VL; p++) {
            const dln_ix src = p < hv ? 0 : VL, pp = p % hv, q = pp / half, o = pp % half;
            SFX(red_lo)[t][p] = (DLN_IDX(REAL))(src + q * b + o);
            SFX(red_hi)[t][p] = (DLN_IDX(REAL))(src + q * b + half + o);
        }
    }
    SFX(red_ready) = 1;
}

/* a[0..n) (n <= VL; a has room for VL vectors, clobbered) -> out[k] */
DLN_AI void SFX(lane_sums)(VEC *a, int n, REAL *out)
{
    const VEC z = {0};
    for (int k = n; k < (int)VL; k++) a[k] = z;
    int cnt = (int)VL, t = 0;
    while (cnt > 1) {
        for (int k = 0; k < cnt / 2; k++)
            a[k] = __builtin_shuffle(a[2 * k], a[2 * k + 1], SFX(red_lo)[t])
                 + __builtin_shuffle(a[2 * k], a[2 * k + 1], SFX(red_hi)[t]);
        cnt /= 2;
        t++;
    }
    for (int k = 0; k < n; k++) out[k] = a[0][k];
}

/* ---------------------------------------------------------------- RD ---- */
/* For each group of RB rows at A (nrows, a multiple of RB) and QG rows of V:
 * out[q * ldo + r] = sum_k A[r * lda + k] V[q * ldv + k], over vectors kv in
 * [kv0, kv1) of k; lane partials persist in `ab` (row r's QG vectors at
 * ab + r * abq * VL) between chunks; `first` starts them at zero and `fin`
 * adds the scalar tail k in [n - n % VL, n) and writes out. */
DLN_AI void SFX(rd_body)(const int RB, const int QG, dln_ix nrows, const REAL *A, dln_ix lda,
                         dln_ix kv0, dln_ix kv1, const REAL *V, dln_ix ldv, REAL *ab, dln_ix abq,
                         int first, int fin, dln_ix n, REAL *out, dln_ix ldo)
{
    for (dln_ix j = 0; j < nrows; j += RB, A += RB * lda, ab += RB * abq * VL, out += RB) {
        VEC acc[4][12];     /* fixed sizes (not RB x QG, a VLA): scalarized into registers */
#pragma GCC unroll 16
        for (int r = 0; r < RB; r++)
#pragma GCC unroll 16
            for (int q = 0; q < QG; q++)
                acc[r][q] = first ? SFX(vsplat)((REAL)0) : SFX(vld)(ab + (r * abq + q) * VL);
        for (dln_ix kv = kv0; kv < kv1; kv++) {
            VEC a[4];
#pragma GCC unroll 16
            for (int r = 0; r < RB; r++) {
                a[r] = SFX(vld)(A + r * lda + kv * VL);
                DLN_IN_REG(a[r]);
            }
#pragma GCC unroll 16
            for (int q = 0; q < QG; q++) {
                VEC v = SFX(vld)(V + q * ldv + kv * VL);
                DLN_IN_REG(v);
#pragma GCC unroll 16
                for (int r = 0; r < RB; r++) acc[r][q] += a[r] * v;
            }
        }
        if (!fin) {
#pragma GCC unroll 16
            for (int r = 0; r < RB; r++)
#pragma GCC unroll 16
                for (int q = 0; q < QG; q++) SFX(vst)(ab + (r * abq + q) * VL, acc[r][q]);
            continue;
        }
        /* sums of the lanes, in batches of VL, then the scalar tail */
        VEC batch[DLN_VB / sizeof(REAL)];
        REAL sums[4 * 12];
        int nb = 0, done = 0;
#pragma GCC unroll 16
        for (int r = 0; r < RB; r++)
#pragma GCC unroll 16
            for (int q = 0; q < QG; q++) {
                batch[nb++] = acc[r][q];
                if (nb == (int)VL || (r == RB - 1 && q == QG - 1)) {
                    SFX(lane_sums)(batch, nb, sums + done);
                    done += nb;
                    nb = 0;
                }
            }
        const dln_ix k0 = n - n % VL;
        for (int r = 0; r < RB; r++)
            for (int q = 0; q < QG; q++) {
                REAL s = sums[r * QG + q];
                for (dln_ix k = k0; k < n; k++) s = SFX(fmas)(A[r * lda + k], V[q * ldv + k], s);
                out[q * ldo + r] = s;
            }
    }
}

/* ---------------------------------------------------------------- UP ---- */
/* The update term of one weight, g = sum_e u_e w_e, is summed in two FMA
 * chains (even and odd e) added at the end: half the dependent latency of
 * one chain.  Every path -- vector lanes, scalar tails, either kernel --
 * computes g this way for the same K grouping, so the bits agree. */

/* For each group of RB rows at M (nrows, a multiple of RB):
 * M[r][k] -= sum_{e < KG} (cu U[r * ldur + e * ldue]) W[e * ldw + k],
 * over vectors [kv0, kv1) and scalars [t0, t1) of k. */
DLN_AI void SFX(up_body)(const int RB, const int KG, dln_ix nrows, REAL *M, dln_ix ldm,
                         dln_ix kv0, dln_ix kv1, dln_ix t0, dln_ix t1, const REAL *U, dln_ix ldur,
                         dln_ix ldue, REAL cu, const REAL *W, dln_ix ldw)
{
    for (dln_ix j = 0; j < nrows; j += RB, M += RB * ldm, U += RB * ldur) {
        REAL us[2][12];
        VEC u[2][12];
#pragma GCC unroll 16
        for (int r = 0; r < RB; r++)
#pragma GCC unroll 16
            for (int e = 0; e < KG; e++) {
                us[r][e] = cu * U[r * ldur + e * ldue];
                u[r][e] = SFX(vsplat)(us[r][e]);
            }
        for (dln_ix kv = kv0; kv < kv1; kv++) {
            VEC ga[2], gb[2];
            VEC wv = SFX(vld)(W + kv * VL);
            DLN_IN_REG(wv);
#pragma GCC unroll 16
            for (int r = 0; r < RB; r++) ga[r] = u[r][0] * wv;
            if (KG > 1) {
                wv = SFX(vld)(W + ldw + kv * VL);
                DLN_IN_REG(wv);
#pragma GCC unroll 16
                for (int r = 0; r < RB; r++) gb[r] = u[r][1] * wv;
            }
#pragma GCC unroll 16
            for (int e = 2; e < KG; e++) {
                wv = SFX(vld)(W + e * ldw + kv * VL);
                DLN_IN_REG(wv);
#pragma GCC unroll 16
                for (int r = 0; r < RB; r++) {
                    if (e & 1) gb[r] += u[r][e] * wv;
                    else ga[r] += u[r][e] * wv;
                }
            }
#pragma GCC unroll 16
            for (int r = 0; r < RB; r++) {
                REAL *p = M + r * ldm + kv * VL;
                SFX(vst)(p, SFX(vld)(p) - (KG > 1 ? ga[r] + gb[r] : ga[r]));
            }
        }
        for (dln_ix k = t0; k < t1; k++)
            for (int r = 0; r < RB; r++) {
                REAL ga = us[r][0] * W[k], gb = 0;
                if (KG > 1) gb = us[r][1] * W[ldw + k];
                for (int e = 2; e < KG; e++) {
                    if (e & 1) gb = SFX(fmas)(us[r][e], W[e * ldw + k], gb);
                    else ga = SFX(fmas)(us[r][e], W[e * ldw + k], ga);
                }
                M[r * ldm + k] -= (KG > 1 ? ga + gb : ga);
            }
    }
}

/* --------------------------------------------------------------- UPW ---- */
/* For each of ns strips of CB vectors of columns at M, W (the strip of W
 * held in registers): M[j][c] -= sum_{e < KG} U[j * ldur + e * ldue] W[e * ldw + c]
 * for j < nr. */
DLN_AI void SFX(upw_body)(const int CB, const int KG, dln_ix ns, REAL *M, dln_ix ldm, dln_ix nr,
                          const REAL *U, dln_ix ldur, dln_ix ldue, const REAL *W, dln_ix ldw)
{
    for (dln_ix st = 0; st < ns; st++, M += CB * VL, W += CB * VL) {
        VEC w[12][2];
#pragma GCC unroll 16
        for (int e = 0; e < KG; e++)
#pragma GCC unroll 16
            for (int c = 0; c < CB; c++) w[e][c] = SFX(vld)(W + e * ldw + c * VL);
        for (dln_ix j = 0; j < nr; j++) {
            const REAL *uj = U + j * ldur;
            VEC ga[2], gb[2];
            {
                const VEC u = SFX(vsplat)(uj[0]);
#pragma GCC unroll 16
                for (int c = 0; c < CB; c++) ga[c] = u * w[0][c];
            }
            if (KG > 1) {
                const VEC u = SFX(vsplat)(uj[ldue]);
#pragma GCC unroll 16
                for (int c = 0; c < CB; c++) gb[c] = u * w[1][c];
            }
#pragma GCC unroll 16
            for (int e = 2; e < KG; e++) {
                const VEC u = SFX(vsplat)(uj[e * ldue]);
#pragma GCC unroll 16
                for (int c = 0; c < CB; c++) {
                    if (e & 1) gb[c] += u * w[e][c];
                    else ga[c] += u * w[e][c];
                }
            }
#pragma GCC unroll 16
            for (int c = 0; c < CB; c++) {
                REAL *p = M + j * ldm + c * VL;
                SFX(vst)(p, SFX(vld)(p) - (KG > 1 ? ga[c] + gb[c] : ga[c]));
            }
        }
    }
}

/* ---------------------------------------------------------------- CA ---- */
/* For each of ns strips of CB vectors of columns at M, out (`first`: start
 * from 0): out[q * ldo + c] (+)= sum_{j < nr} U[j * ldur + q * lduq] M[j * ldm + c]. */
DLN_AI void SFX(ca_body)(const int CB, const int QG, dln_ix ns, const REAL *M, dln_ix ldm,
                         dln_ix nr, const REAL *U, dln_ix ldur, dln_ix lduq, REAL *out,
                         dln_ix ldo, int first)
{
    for (dln_ix st = 0; st < ns; st++, M += CB * VL, out += CB * VL) {
        VEC acc[12][2];
#pragma GCC unroll 16
        for (int q = 0; q < QG; q++)
#pragma GCC unroll 16
            for (int c = 0; c < CB; c++)
                acc[q][c] = first ? SFX(vsplat)((REAL)0) : SFX(vld)(out + q * ldo + c * VL);
        for (dln_ix j = 0; j < nr; j++) {
            VEC m[2];
#pragma GCC unroll 16
            for (int c = 0; c < CB; c++) {
                m[c] = SFX(vld)(M + j * ldm + c * VL);
                DLN_IN_REG(m[c]);
            }
#pragma GCC unroll 16
            for (int q = 0; q < QG; q++) {
                const VEC u = SFX(vsplat)(U[j * ldur + q * lduq]);
#pragma GCC unroll 16
                for (int c = 0; c < CB; c++) acc[q][c] += u * m[c];
            }
        }
#pragma GCC unroll 16
        for (int q = 0; q < QG; q++)
#pragma GCC unroll 16
            for (int c = 0; c < CB; c++) SFX(vst)(out + q * ldo + c * VL, acc[q][c]);
    }
}

/* ------------------------------------------- instances and their tables -- */
typedef void (*SFX(rd_fn))(dln_ix, const REAL *, dln_ix, dln_ix, dln_ix, const REAL *, dln_ix,
                           REAL *, dln_ix, int, int, dln_ix, REAL *, dln_ix);
typedef void (*SFX(up_fn))(dln_ix, REAL *, dln_ix, dln_ix, dln_ix, dln_ix, dln_ix, const REAL *,
                           dln_ix, dln_ix, REAL, const REAL *, dln_ix);
typedef void (*SFX(upw_fn))(dln_ix, REAL *, dln_ix, dln_ix, const REAL *, dln_ix, dln_ix,
                            const REAL *, dln_ix);
typedef void (*SFX(ca_fn))(dln_ix, const REAL *, dln_ix, dln_ix, const REAL *, dln_ix, dln_ix,
                           REAL *, dln_ix, int);

#define DLN_RD(RB, QG)                                                                        \
    static void SFX(rd_##RB##_##QG)(dln_ix nrows, const REAL *A, dln_ix lda, dln_ix kv0,       \
                                    dln_ix kv1, const REAL *V, dln_ix ldv, REAL *ab,           \
                                    dln_ix abq, int first, int fin, dln_ix n, REAL *out,       \
                                    dln_ix ldo)                                                \
    {                                                                                          \
        SFX(rd_body)(RB, QG, nrows, A, lda, kv0, kv1, V, ldv, ab, abq, first, fin, n, out,     \
                     ldo);                                                                     \
    }
#define DLN_UP(RB, KG)                                                                        \
    static void SFX(up_##RB##_##KG)(dln_ix nrows, REAL *M, dln_ix ldm, dln_ix kv0, dln_ix kv1, \
                                    dln_ix t0, dln_ix t1, const REAL *U, dln_ix ldur,          \
                                    dln_ix ldue, REAL cu, const REAL *W, dln_ix ldw)           \
    {                                                                                          \
        SFX(up_body)(RB, KG, nrows, M, ldm, kv0, kv1, t0, t1, U, ldur, ldue, cu, W, ldw);      \
    }
#define DLN_UPW(CB, KG)                                                                       \
    static void SFX(upw_##CB##_##KG)(dln_ix ns, REAL *M, dln_ix ldm, dln_ix nr, const REAL *U, \
                                     dln_ix ldur, dln_ix ldue, const REAL *W, dln_ix ldw)      \
    {                                                                                          \
        SFX(upw_body)(CB, KG, ns, M, ldm, nr, U, ldur, ldue, W, ldw);                          \
    }
#define DLN_CA(CB, QG)                                                                        \
    static void SFX(ca_##CB##_##QG)(dln_ix ns, const REAL *M, dln_ix ldm, dln_ix nr,           \
                                    const REAL *U, dln_ix ldur, dln_ix lduq, REAL *out,        \
                                    dln_ix ldo, int first)                                     \
    {                                                                                          \
        SFX(ca_body)(CB, QG, ns, M, ldm, nr, U, ldur, lduq, out, ldo, first);                  \
    }
#define DLN_SIZES(X, A)                                                                       \
    X(A, 1) X(A, 2) X(A, 3) X(A, 4) X(A, 5) X(A, 6) X(A, 7) X(A, 8) X(A, 9) X(A, 10) X(A, 11) X(A, 12)
#define DLN_TAB(name, A)                                                                      \
    { NULL, SFX(name##_##A##_1), SFX(name##_##A##_2), SFX(name##_##A##_3), SFX(name##_##A##_4), \
      SFX(name##_##A##_5), SFX(name##_##A##_6), SFX(name##_##A##_7), SFX(name##_##A##_8),      \
      SFX(name##_##A##_9), SFX(name##_##A##_10), SFX(name##_##A##_11), SFX(name##_##A##_12) }

DLN_SIZES(DLN_RD, 1)
#if DLN_RD_RB == 4
DLN_SIZES(DLN_RD, 4)
#else
DLN_SIZES(DLN_RD, 2)
#endif
DLN_SIZES(DLN_UP, 1)
DLN_SIZES(DLN_UP, 2)
DLN_SIZES(DLN_UPW, 1)
DLN_SIZES(DLN_UPW, 2)
DLN_SIZES(DLN_CA, 1)
DLN_SIZES(DLN_CA, 2)

#if DLN_RD_RB == 4
static const SFX(rd_fn) SFX(rd_tab)[2][13] = { DLN_TAB(rd, 1), DLN_TAB(rd, 4) };
#else
static const SFX(rd_fn) SFX(rd_tab)[2][13] = { DLN_TAB(rd, 1), DLN_TAB(rd, 2) };
#endif
static const SFX(up_fn) SFX(up_tab)[2][13] = { DLN_TAB(up, 1), DLN_TAB(up, 2) };
static const SFX(upw_fn) SFX(upw_tab)[2][13] = { DLN_TAB(upw, 1), DLN_TAB(upw, 2) };
static const SFX(ca_fn) SFX(ca_tab)[2][13] = { DLN_TAB(ca, 1), DLN_TAB(ca, 2) };

/* ------------------------------------------------- grouped drivers ------- */
/* Bounds of group g of ng over [0, K): balanced, each <= the register block. */
#define DLN_GROUPS(K, MAXG) (((K) + (MAXG) - 1) / (MAXG))
#define DLN_G0(K, ng, g) ((int)((K) * (g) / (ng)))

/* RD over `nrows` rows at A and all Q rows of V; `ab` holds nrows x Q vectors. */
static void SFX(rd)(dln_ix nrows, int Q, const REAL *A, dln_ix lda, dln_ix kv0, dln_ix kv1,
                    const REAL *V, dln_ix ldv, REAL *ab, int first, int fin, dln_ix n, REAL *out,
                    dln_ix ldo)
{
    const int ng = DLN_GROUPS(Q, DLN_RD_QG);
    const dln_ix nw = nrows / DLN_RD_RB * DLN_RD_RB;
    for (int g = 0; g < ng; g++) {
        const int q0 = DLN_G0(Q, ng, g), q1 = DLN_G0(Q, ng, g + 1);
        if (nw > 0)
            SFX(rd_tab)[1][q1 - q0](nw, A, lda, kv0, kv1, V + q0 * ldv, ldv, ab + q0 * VL, Q,
                                    first, fin, n, out + q0 * ldo, ldo);
        if (nrows > nw)
            SFX(rd_tab)[0][q1 - q0](nrows - nw, A + nw * lda, lda, kv0, kv1, V + q0 * ldv, ldv,
                                    ab + (nw * Q + q0) * VL, Q, first, fin, n,
                                    out + q0 * ldo + nw, ldo);
    }
}

/* UP over `nrows` rows at M with K coefficients per row (U[r*ldur + e*ldue]). */
static void SFX(up)(dln_ix nrows, int K, REAL *M, dln_ix ldm, dln_ix kv0, dln_ix kv1, dln_ix t0,
                    dln_ix t1, const REAL *U, dln_ix ldur, dln_ix ldue, REAL cu, const REAL *W,
                    dln_ix ldw)
{
    const int ng = DLN_GROUPS(K, DLN_UP_KG);
    const dln_ix nw = nrows / 2 * 2;
    for (int g = 0; g < ng; g++) {
        const int e0 = DLN_G0(K, ng, g), e1 = DLN_G0(K, ng, g + 1);
        if (nw > 0)
            SFX(up_tab)[1][e1 - e0](nw, M, ldm, kv0, kv1, t0, t1, U + e0 * ldue, ldur, ldue, cu,
                                    W + e0 * ldw, ldw);
        if (nrows > nw)
            SFX(up_tab)[0][e1 - e0](nrows - nw, M + nw * ldm, ldm, kv0, kv1, t0, t1,
                                    U + nw * ldur + e0 * ldue, ldur, ldue, cu, W + e0 * ldw, ldw);
    }
}

/* UPW over nr rows and `ncols` columns at M (strips of 2 vectors, then 1,
 * then fewer than VL columns in scalars, with the same grouping of K). */
static void SFX(upw)(dln_ix ncols, dln_ix nr, int K, REAL *M, dln_ix ldm, const REAL *U,
                     dln_ix ldur, dln_ix ldue, const REAL *W, dln_ix ldw)
{
    const int ng = DLN_GROUPS(K, DLN_UP_KG);
    const dln_ix n2 = ncols / (2 * VL), n1 = (ncols - n2 * 2 * VL) / VL;
    const dln_ix c0 = n2 * 2 * VL + n1 * VL;
    for (int g = 0; g < ng; g++) {
        const int e0 = DLN_G0(K, ng, g), e1 = DLN_G0(K, ng, g + 1);
        const REAL *Ug = U + e0 * ldue, *Wg = W + e0 * ldw;
        if (n2)
            SFX(upw_tab)[1][e1 - e0](n2, M, ldm, nr, Ug, ldur, ldue, Wg, ldw);
        if (n1)
            SFX(upw_tab)[0][e1 - e0](n1, M + n2 * 2 * VL, ldm, nr, Ug, ldur, ldue,
                                     Wg + n2 * 2 * VL, ldw);
        for (dln_ix j = 0; j < nr; j++)
            for (dln_ix c = c0; c < ncols; c++) {      /* as upw_body, in scalars */
                REAL ga = Ug[j * ldur] * Wg[c], gb = 0;
                if (e1 - e0 > 1) gb = Ug[j * ldur + ldue] * Wg[ldw + c];
                for (int e = 2; e < e1 - e0; e++) {
                    if (e & 1) gb = SFX(fmas)(Ug[j * ldur + e * ldue], Wg[e * ldw + c], gb);
                    else ga = SFX(fmas)(Ug[j * ldur + e * ldue], Wg[e * ldw + c], ga);
                }
                M[j * ldm + c] -= (e1 - e0 > 1 ? ga + gb : ga);
            }
    }
}

/* CA over nr rows and `ncols` columns at M into out (Q rows, ld ldo). */
static void SFX(ca)(dln_ix ncols, dln_ix nr, int Q, const REAL *M, dln_ix ldm, const REAL *U,
                    dln_ix ldur, dln_ix lduq, REAL *out, dln_ix ldo, int first)
{
    const int ng = DLN_GROUPS(Q, DLN_CA_QG);
    const dln_ix n2 = ncols / (2 * VL), n1 = (ncols - n2 * 2 * VL) / VL;
    const dln_ix c0 = n2 * 2 * VL + n1 * VL;
    for (int g = 0; g < ng; g++) {
        const int q0 = DLN_G0(Q, ng, g), q1 = DLN_G0(Q, ng, g + 1);
        if (n2)
            SFX(ca_tab)[1][q1 - q0](n2, M, ldm, nr, U + q0 * lduq, ldur, lduq, out + q0 * ldo, ldo,
                                    first);
        if (n1)
            SFX(ca_tab)[0][q1 - q0](n1, M + n2 * 2 * VL, ldm, nr, U + q0 * lduq, ldur, lduq,
                                    out + q0 * ldo + n2 * 2 * VL, ldo, first);
        for (int q = q0; q < q1; q++)
            for (dln_ix c = c0; c < ncols; c++) {
                REAL s = first ? (REAL)0 : out[q * ldo + c];
                for (dln_ix j = 0; j < nr; j++)
                    s = SFX(fmas)(U[j * ldur + q * lduq], M[j * ldm + c], s);
                out[q * ldo + c] = s;
            }
    }
}

/* ------------------------------------------------------------ sweeps ---- */
enum { SFX(UP_SWEEP) = 0, SFX(DOWN_SWEEP) = 1 };

/* Leading dimension of a stored chain row of width d (dln_ldc). */
#define LDC(d) dln_ldc((d), sizeof(REAL))

typedef struct {
    int L, D, r, kind;
    const int *w;
    REAL **layers;
    const double *c;
    const REAL *xs;
    REAL beta;
    /* bottom-up: T chain (do_T), update (do_up), new prefix (do_P);
     * top-down: old suffix (has_old), update (do_up), new suffix (do_new),
     * T-form update (tform: K = d_out) or P form (K = r). */
    int do_T, do_up, do_P, has_old, do_new, tform;
    REAL *S, *P, *R, *I, *T, *O, *W, *thr;
    dln_ix totS, totP, per_thr, ldmax, kc_vec, h_rows, tile_cols, block_bytes, abP_off, U_off;
} SFX(sweep_t);

/* Rows [j0, j1) of bottom-up layer i: tiles of DLN_RBLK rows x kc_vec vectors.
 * Tin: T_i^T (ld ldp), Tout: T_{i+1}^T (ld ldn), Sup: S_{i+1} (ld ldn),
 * Pin: P_i^T (ld ldp), Pout: P_{i+1}^T (ld ldn). */
static void SFX(up_part)(const SFX(sweep_t) *s, int i, dln_ix j0, dln_ix j1, REAL *ab,
                         const REAL *Tin, REAL *Tout, const REAL *Sup, const REAL *Pin, REAL *Pout,
                         int do_T)
{
    const dln_ix dp = s->w[i], ldp = LDC(s->w[i]), ldn = LDC(s->w[i + 1]);
    const int D = s->D, r = s->r;
    REAL *M = s->layers[i];
    const REAL ci = (REAL)s->c[i];
    const dln_ix nv = dp / VL;
    REAL *abT = ab, *abP = ab + s->abP_off;
    const int do_P = s->do_P && i > 0;       /* layer 0: P_1^T = (M diag(xs))^T below */
    for (dln_ix jb = j0; jb < j1; jb += DLN_RBLK) {
        const dln_ix nb = (j1 - jb < DLN_RBLK) ? j1 - jb : DLN_RBLK;
        REAL *Mb = M + jb * dp;
        for (dln_ix kv0 = 0;; kv0 += s->kc_vec) {
            const dln_ix kv1 = (kv0 + s->kc_vec < nv) ? kv0 + s->kc_vec : nv;
            const int first = kv0 == 0, fin = kv1 == nv;
            if (!fin)                         /* the next chunk of these rows, or the next rows */
                SFX(prefetch_tile)(Mb + kv1 * VL, dp, nb, (kv1 + s->kc_vec < nv ? s->kc_vec : nv - kv1) * VL);
            else if (jb + DLN_RBLK < j1)
                SFX(prefetch_tile)(Mb + DLN_RBLK * dp, dp, (j1 - jb - DLN_RBLK < DLN_RBLK) ? j1 - jb - DLN_RBLK : DLN_RBLK,
                                   (nv < s->kc_vec ? nv : s->kc_vec) * VL);
            if (do_T)
                SFX(rd)(nb, D, Mb, dp, kv0, kv1, Tin, ldp, abT, first, fin, dp, Tout + jb, ldn);
            if (s->do_up)
                SFX(up)(nb, D, Mb, dp, kv0, kv1, fin ? nv * VL : 0, fin ? dp : 0, Sup + jb, 1, ldn,
                        ci, Tin, ldp);
            if (do_P)
                SFX(rd)(nb, r, Mb, dp, kv0, kv1, Pin, ldp, abP, first, fin, dp, Pout + jb, ldn);
            if (fin) break;
        }
        if (s->do_P && i == 0)
            for (dln_ix j = jb; j < jb + nb; j++)
                for (int q = 0; q < r; q++) Pout[q * ldn + j] = M[j * dp + q] * s->xs[q];
    }
}

/* Columns [c0, c1) of top-down layer i, in tiles of h_rows rows x tile_cols
 * columns (a layer within twice the tile budget: one tile of all its rows
 * and columns).  Oup: old S_{i+1}, Snup: new S_{i+1} (ld ldn); Oout,
 * Snout: S_i (ld ldp); U (dn x K, ld K); Wm (K x dp, ld ldw). */
static void SFX(down_part)(const SFX(sweep_t) *s, int i, dln_ix c0, dln_ix c1, const REAL *Oup,
                           REAL *Oout, const REAL *U, int K, const REAL *Wm, dln_ix ldw,
                           const REAL *Snup, REAL *Snout)
{
    const dln_ix dn = s->w[i + 1], dp = s->w[i], ldp = LDC(s->w[i]), ldn = LDC(s->w[i + 1]);
    const int D = s->D;
    REAL *M = s->layers[i];
    const int has_old = s->has_old && i > 0;
    const int upd_w = s->do_up && !(i == 0 && !s->tform);   /* P form, layer 0: diag below */
    const int small = dn * dp * (dln_ix)sizeof(REAL) <= 2 * s->block_bytes;
    const dln_ix h = small ? dn : s->h_rows;
    const dln_ix tw = small ? c1 - c0 : s->tile_cols;
    for (dln_ix a0 = 0; a0 < dn; a0 += h) {
        const dln_ix nr = (dn - a0 < h) ? dn - a0 : h;
        const int first = a0 == 0;
        REAL *Mb = M + a0 * dp;
        for (dln_ix k = c0; k < c1; k += tw) {
            const dln_ix ncols = (c1 - k < tw) ? c1 - k : tw;
            if (!small) {                     /* the tile DLN_PF_TILES ahead (row-major order) */
                const dln_ix nk = (c1 - c0 + tw - 1) / tw;
                const dln_ix t = (a0 / h) * nk + (k - c0) / tw + DLN_PF_TILES;
                const dln_ix pa = (t / nk) * h, pk = c0 + (t % nk) * tw;
                if (pa < dn)
                    SFX(prefetch_tile)(M + pa * dp + pk, dp, (dn - pa < h) ? dn - pa : h,
                                       (c1 - pk < tw) ? c1 - pk : tw);
            }
            if (has_old)
                SFX(ca)(ncols, nr, D, Mb + k, dp, Oup + a0, 1, ldn, Oout + k, ldp, first);
            if (upd_w)
                SFX(upw)(ncols, nr, K, Mb + k, dp, U + a0 * K, K, 1, Wm + k, ldw);
            else if (s->do_up)                /* M_1 -= U diag(xs) */
                for (dln_ix j = 0; j < nr; j++)
                    for (dln_ix q = k; q < k + ncols; q++)
                        Mb[j * dp + q] = SFX(fmas)(-U[(a0 + j) * K + q], s->xs[q], Mb[j * dp + q]);
            if (s->do_new)
                SFX(ca)(ncols, nr, D, Mb + k, dp, Snup + a0, 1, ldn, Snout + k, ldp, first);
        }
    }
}

/* Top-down update factors of layer i for columns [c0, c1): U (dn x K, this
 * thread's buffer): P form c_i S_{i+1}^T R, T form c_i S_{i+1}^T (S_{i+1}
 * the old suffix, Oup); W: P form P_i^T itself (returned), T form R P_i^T
 * for the columns [c0, c1) into the shared W buffer. */
static const REAL *SFX(down_factors)(const SFX(sweep_t) *s, int i, dln_ix c0, dln_ix c1,
                                     const REAL *Oup, const REAL *Pi, REAL *U, int K)
{
    const dln_ix dn = s->w[i + 1], dp = s->w[i], ldp = LDC(s->w[i]), ldn = LDC(s->w[i + 1]);
    const int D = s->D, r = s->r;
    const REAL ci = (REAL)s->c[i];
    const REAL *R = s->R;
    if (s->tform) {
        for (dln_ix j = 0; j < dn; j++)
            for (int e = 0; e < D; e++) U[j * K + e] = ci * Oup[e * ldn + j];
    } else {
        for (dln_ix j = 0; j < dn; j++)
            for (int e = 0; e < r; e++) {
                REAL t = Oup[j] * R[e];
                for (int d = 1; d < D; d++) t = SFX(fmas)(Oup[d * ldn + j], R[d * r + e], t);
                U[j * K + e] = t * ci;
            }
        return Pi;                                  /* P_i^T (unused for i = 0) */
    }
    REAL *Wb = s->W;                                /* W = R P_i^T, ld ldp */
    if (i == 0) {                                   /* P_0 = diag(xs) */
        for (int d = 0; d < D; d++)
            for (dln_ix k = c0; k < c1; k++) Wb[d * ldp + k] = R[d * r + k] * s->xs[k];
        return Wb;
    }
    /* W[d][k] = R[d][0] P[0][k] + ... (one FMA per further q), vectors along k;
     * the scalar tail does the same operations, column by column */
    const dln_ix kv1 = c0 + (c1 - c0) / VL * VL;
    for (int d = 0; d < D; d++) {
        const REAL *Rd = R + d * r;
        for (dln_ix k = c0; k < kv1; k += VL) {
            VEC t = SFX(vsplat)(Rd[0]) * SFX(vld)(Pi + k);
            for (int q = 1; q < r; q++) t += SFX(vsplat)(Rd[q]) * SFX(vld)(Pi + q * ldp + k);
            SFX(vst)(Wb + d * ldp + k, t);
        }
        for (dln_ix k = kv1; k < c1; k++) {
            REAL t = Rd[0] * Pi[k];
            for (int q = 1; q < r; q++) t = SFX(fmas)(Rd[q], Pi[q * ldp + k], t);
            Wb[d * ldp + k] = t;
        }
    }
    (void)dp;
    return Wb;
}

/* One thread's share of a sweep over all layers (tid of nth; nth = 1: all). */
static void SFX(sweep_thread)(const SFX(sweep_t) *s, int tid, int nth)
{
    const int L = s->L, D = s->D, r = s->r;
    const int *w = s->w;
    const int down = s->kind == SFX(DOWN_SWEEP);
    REAL *ab = s->thr + s->per_thr * tid;             /* RD lane partials */
    REAL *U = ab + s->U_off;                          /* top-down update factor */
    const int K = s->tform ? D : r;
    /* Running offsets into the stored chains. Bottom-up: oS = S_i, oP = P_i^T
     * (i >= 1). Top-down: oS = S_{i+1}, oP = P_{i+1}^T. (S_L = beta I and
     * P_0 = diag(xs) are not stored in the chains.) */
    dln_ix oS = 0, oP = 0;
    if (down) {
        oS = s->totS;
        oP = s->totP - (dln_ix)r * LDC(w[L]);
    }
    for (int idx = 0; idx < L; idx++) {
        const int i = down ? L - 1 - idx : idx;
        const int p = idx & 1;
        const dln_ix dn = w[i + 1], dp = w[i], ldp = LDC(w[i]);
        const int split = nth > 1 && (long long)dn * dp >= DLN_PAR_MIN;
        const int mine = split || tid == 0;
        const int parts = split ? nth : 1, part = split ? tid : 0;
        if (!down) {
            const REAL *Sup = (i == L - 1) ? s->I : s->S + oS + (dln_ix)D * ldp;
            const REAL *Pin = s->P + oP;
            REAL *Pout = s->P + (i == 0 ? 0 : oP + (dln_ix)r * ldp);
            const REAL *Tin = s->T + (dln_ix)p * D * s->ldmax;
            REAL *Tout = s->T + (dln_ix)(1 - p) * D * s->ldmax;
            if (mine)
                SFX(up_part)(s, i, dln_split(dn, parts, part, 4), dln_split(dn, parts, part + 1, 4),
                             ab, Tin, Tout, Sup, Pin, Pout, s->do_T && i < L - 1);
            oS += (dln_ix)D * ldp;
            if (i > 0) oP += (dln_ix)r * ldp;
        } else {
            const REAL *Oup = (i == L - 1) ? s->I : s->O + (dln_ix)p * D * s->ldmax;
            REAL *Oout = s->O + (dln_ix)(1 - p) * D * s->ldmax;
            const REAL *Snup = (i == L - 1) ? s->I : s->S + oS;
            REAL *Snout = s->S + oS - (dln_ix)D * ldp;
            const REAL *Pi = i > 0 ? s->P + oP - (dln_ix)r * ldp : NULL;   /* P_i^T */
            if (mine) {
                const dln_ix c0 = dln_split(dp, parts, part, VL);
                const dln_ix c1 = dln_split(dp, parts, part + 1, VL);
                const REAL *Wm = s->do_up ? SFX(down_factors)(s, i, c0, c1, Oup, Pi, U, K) : NULL;
                SFX(down_part)(s, i, c0, c1, Oup, Oout, U, K, Wm, ldp, Snup, Snout);
            }
            oS -= (dln_ix)D * ldp;
            if (i > 0) oP -= (dln_ix)r * ldp;
        }
        if (nth > 1 && idx + 1 < L) {
            const int ni = down ? i - 1 : i + 1;
            const int nsplit = (long long)w[ni + 1] * w[ni] >= DLN_PAR_MIN;
            if (split || nsplit) {
#ifdef _OPENMP
#pragma omp barrier
#endif
            }
        }
    }
}

static void SFX(run_sweep)(const SFX(sweep_t) *s, int nt)
{
    int any = 0;
    for (int i = 0; i < s->L; i++)
        if ((long long)s->w[i + 1] * s->w[i] >= DLN_PAR_MIN) any = 1;
#ifdef _OPENMP
    if (nt > 1 && any) {
#pragma omp parallel num_threads(nt)
        SFX(sweep_thread)(s, omp_get_thread_num(), omp_get_num_threads());
        return;
    }
#else
    (void)any;
    (void)nt;
#endif
    SFX(sweep_thread)(s, 0, 1);
}

/* ----------------------------------------------------------- residual --- */
/* excess = 1/2 ||R||_F^2, accumulated in double like the numpy backend. */
static double SFX(half_sq)(const REAL *R, dln_ix n)
{
    double acc = 0.0;
    for (dln_ix k = 0; k < n; k++) {
        const double v = (double)R[k];
        acc += v * v;
    }
    return 0.5 * acc;
}

/* R = S_0 X_red - Y_red (S_0: D x r, ld LDC(r)) */
static void SFX(res_from_S)(const REAL *S0, const REAL *xs, const REAL *yred, int D, int r, REAL *R)
{
    const dln_ix ld = LDC(r);
    for (int d = 0; d < D; d++)
        for (int q = 0; q < r; q++) R[d * r + q] = S0[d * ld + q] * xs[q] - yred[d * r + q];
}

/* R = beta P_L - Y_red, from P_L^T (r x D, ld LDC(D)) */
static void SFX(res_from_P)(const REAL *PLt, REAL beta, const REAL *yred, int D, int r, REAL *R)
{
    const dln_ix ld = LDC(D);
    for (int d = 0; d < D; d++)
        for (int q = 0; q < r; q++) R[d * r + q] = PLt[q * ld + d] * beta - yred[d * r + q];
}

/* T_0^T = R X_red^T = R diag(xs) (D x r, ld LDC(r)) */
static void SFX(make_T0)(const REAL *R, const REAL *xs, int D, int r, REAL *Tt)
{
    const dln_ix ld = LDC(r);
    for (int d = 0; d < D; d++)
        for (int q = 0; q < r; q++) Tt[d * ld + q] = R[d * r + q] * xs[q];
}

__attribute__((constructor)) static void SFX(init)(void) { SFX(red_init)(); }

static void SFX(setup)(SFX(sweep_t) *s, int L, const int *w, REAL **layers, const double *c,
                       double beta, const REAL *xs, int form, long long block_bytes, int nthreads,
                       REAL *work)
{
    dln_layout lo;
    dln_make_layout(L, w, form, nthreads, (int)sizeof(REAL), block_bytes, &lo);
    REAL *base = (REAL *)(((size_t)work + 63) & ~(size_t)63);
    memset(s, 0, sizeof *s);
    s->L = L;
    s->w = w;
    s->D = w[L];
    s->r = w[0];
    s->layers = layers;
    s->c = c;
    s->xs = xs;
    s->beta = (REAL)beta;
    s->S = base + lo.S;
    s->P = base + lo.P;
    s->R = base + lo.R;
    s->I = base + lo.I;
    s->T = base + lo.T;
    s->O = base + lo.O;
    s->W = base + lo.W;
    s->thr = base + lo.thr;
    s->per_thr = lo.per_thr;
    s->totS = lo.totS;
    s->totP = lo.totP;
    s->ldmax = lo.ldmax;
    s->abP_off = lo.abP;
    s->U_off = lo.U;
    block_bytes = dln_block(block_bytes);
    /* bottom-up tile: DLN_RBLK rows x kc_vec vectors (16 KiB: 8 x 32 vectors);
     * top-down tile: DLN_HROWS rows x tile_cols columns (16 KiB: 8 x 256
     * doubles): few rows, because the rows of a layer are often a power of
     * two bytes apart and the lines of a column strip then all fall into the
     * same cache sets */
    s->block_bytes = (dln_ix)block_bytes;
    s->kc_vec = lo.kc_vec;
    s->h_rows = DLN_HROWS;
    s->tile_cols = (dln_ix)(block_bytes / (DLN_HROWS * sizeof(REAL))) / (2 * VL) * (2 * VL);
    if (s->tile_cols < 2 * VL) s->tile_cols = 2 * VL;
    const dln_ix ldD = LDC(s->D);
    for (int d = 0; d < s->D; d++)
        for (int e = 0; e < s->D; e++) s->I[d * ldD + e] = d == e ? s->beta : (REAL)0;
}

/* Read-only pass: suffixes S_{L-1} .. S_0 (top-down, CA only). */
static void SFX(suffix_pass)(SFX(sweep_t) *s, int nt)
{
    s->kind = SFX(DOWN_SWEEP);
    s->has_old = s->do_up = s->tform = 0;
    s->do_new = 1;
    SFX(run_sweep)(s, nt);
}

/* Read-only pass: prefixes P_1^T .. P_L^T (bottom-up, RD only). */
static void SFX(prefix_pass)(SFX(sweep_t) *s, int nt)
{
    s->kind = SFX(UP_SWEEP);
    s->do_T = s->do_up = 0;
    s->do_P = 1;
    SFX(run_sweep)(s, nt);
}

static int SFX(threads)(int nthreads)
{
#ifdef _OPENMP
    if (nthreads <= 0) nthreads = omp_get_max_threads();
#endif
    return nthreads < 1 ? 1 : nthreads;
}

int SFX(dln_step)(int L, const int *widths, REAL **layers, const double *c, double beta,
                  const REAL *xs, const REAL *yred, int form, long long block_bytes, int nthreads,
                  REAL *work, double lo, double hi, int do_update, double *excess)
{
    SFX(sweep_t) s;
    const int nt = SFX(threads)(nthreads);
    SFX(setup)(&s, L, widths, layers, c, beta, xs, form, block_bytes, nt, work);
    const int D = s.D, r = s.r;
    double e;
    if (form == DLN_FORM_P) {
        /* pass 1, bottom-up (read-only): P_1 .. P_L, R = beta P_L - Y_red */
        SFX(prefix_pass)(&s, nt);
        SFX(res_from_P)(s.P + s.totP - (dln_ix)r * LDC(D), s.beta, yred, D, r, s.R);
        e = SFX(half_sq)(s.R, (dln_ix)D * r);
        *excess = e;
        if (!do_update || !(isfinite(e) && lo < e && e <= hi)) return 0;
        /* pass 2, top-down: carry S from old tiles, rank-r update */
        s.kind = SFX(DOWN_SWEEP);
        s.has_old = s.do_up = 1;
        s.do_new = s.tform = 0;
        SFX(run_sweep)(&s, nt);
        return 1;
    }
    /* T form. pass 1, top-down (read-only): S_{L-1} .. S_0, R = S_0 X_red - Y_red */
    SFX(suffix_pass)(&s, nt);
    SFX(res_from_S)(s.S, xs, yred, D, r, s.R);
    e = SFX(half_sq)(s.R, (dln_ix)D * r);
    *excess = e;
    if (!do_update || !(isfinite(e) && lo < e && e <= hi)) return 0;
    /* pass 2, bottom-up: carry T from old tiles, rank-d_out update */
    SFX(make_T0)(s.R, xs, D, r, s.T);
    s.kind = SFX(UP_SWEEP);
    s.do_T = s.do_up = 1;
    s.do_P = 0;
    SFX(run_sweep)(&s, nt);
    return 1;
}

/* ------------------------------------------------------------------------
 * Single-pass alternating schedule (docs/design.md, "The step schedule": 2
 * weight passes per step).  Each step is ONE sweep over the layers; per
 * tile it advances the OLD chain from the old weights, applies the update,
 * and advances the NEW chain (for the next step) from the new weights, all
 * while the tile is in registers / L1.  Sweeps alternate direction:
 *
 *   state 1 (S_0..S_{L-1} and R valid for the current weights):
 *     bottom-up sweep = T-form update (carry T_i, stored S) + new prefix -> state 2
 *   state 2 (P_1..P_L and R valid for the current weights):
 *     top-down sweep  = update (carry old S_i, stored P) + new suffix -> state 1
 *   state 0 (nothing valid: first call, or after reset): a read-only pass
 *     computes the suffix chain and R (state 1) first;
 *   state 3 (nothing valid, next sweep top-down): a read-only pass computes
 *     the prefix chain and R (state 2) first.
 * The read-only passes run the same micro-kernels as the sweeps, so a
 * rebuilt chain is bit for bit the one the uninterrupted run would have
 * carried.  A step that is not applied (gate or non-finite excess) leaves
 * weights and state as they were.
 * ------------------------------------------------------------------------ */
int SFX(dln_step1)(int L, const int *widths, REAL **layers, const double *c, double beta,
                   const REAL *xs, const REAL *yred, long long block_bytes, int nthreads,
                   REAL *work, double lo, double hi, int do_update, int *state, double *excess)
{
    SFX(sweep_t) s;
    const int nt = SFX(threads)(nthreads);
    SFX(setup)(&s, L, widths, layers, c, beta, xs, DLN_SINGLE, block_bytes, nt, work);
    const int D = s.D, r = s.r;
    REAL *PLt = s.P + s.totP - (dln_ix)r * LDC(D);
    if (*state == 3) {
        SFX(prefix_pass)(&s, nt);
        SFX(res_from_P)(PLt, s.beta, yred, D, r, s.R);
        *state = 2;
    } else if (*state != 1 && *state != 2) {
        SFX(suffix_pass)(&s, nt);
        SFX(res_from_S)(s.S, xs, yred, D, r, s.R);
        *state = 1;
    }
    const double e = SFX(half_sq)(s.R, (dln_ix)D * r);
    *excess = e;
    if (!do_update || !(isfinite(e) && lo < e && e <= hi)) return 0;
    if (*state == 1) {
        SFX(make_T0)(s.R, xs, D, r, s.T);
        s.kind = SFX(UP_SWEEP);
        s.do_T = s.do_up = s.do_P = 1;
        SFX(run_sweep)(&s, nt);
        SFX(res_from_P)(PLt, s.beta, yred, D, r, s.R);
        *state = 2;
        return 1;
    }
    s.kind = SFX(DOWN_SWEEP);
    s.has_old = s.do_up = s.do_new = 1;
    s.tform = r > D;
    SFX(run_sweep)(&s, nt);
    SFX(res_from_S)(s.S, xs, yred, D, r, s.R);
    *state = 1;
    return 1;
}

/* ------------------------------------------------------------------------
 * K same-shape networks (an ensemble), one step each, in parallel over the
 * members: each member's step runs on one thread (dln_step / dln_step1
 * with nthreads = 1, so the same bits as a step of that member alone), and
 * members are handed out dynamically, so a descheduled thread delays at
 * most the member it holds.  Per member k: layers[k] (L pointers), c[k],
 * beta[k], work[k] (sized for 1 thread), state[k] (single-pass), hi[k];
 * members with active[k] == 0 are skipped.  Out: excess[k], applied[k].
 * ------------------------------------------------------------------------ */
void SFX(dln_members)(int K, int L, const int *widths, REAL ***layers, const double **c,
                      const double *beta, const REAL *xs, const REAL *yred, int form,
                      long long block_bytes, int nthreads, REAL **work, int *state, double lo,
                      const double *hi, const int *active, double *excess, int *applied)
{
    int nt = SFX(threads)(nthreads);
    if (nt > K) nt = K;
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt) if (nt > 1)
#endif
    for (int k = 0; k < K; k++) {
        if (!active[k]) {
            applied[k] = 0;
            continue;
        }
        if (form == DLN_SINGLE)
            applied[k] = SFX(dln_step1)(L, widths, layers[k], c[k], beta[k], xs, yred, block_bytes, 1,
                                        work[k], lo, hi[k], 1, &state[k], &excess[k]);
        else
            applied[k] = SFX(dln_step)(L, widths, layers[k], c[k], beta[k], xs, yred, form,
                                       block_bytes, 1, work[k], lo, hi[k], 1, &excess[k]);
    }
}

#undef LDC
#undef VEC
#undef VL
