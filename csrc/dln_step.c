/* dln_step.c -- the C kernel of engine's ``cblas`` backend (see dln_step.h).
 *
 * The vector width and the register-block sizes of the micro-kernels are
 * fixed here, at compile time, from the instruction set the compiler targets
 * (the build uses -march=native where the compiler accepts it, and a
 * portable baseline otherwise; engine/kernels/_cblas_build.py).  The
 * kernels are written with GCC/Clang vector extensions, so the same source
 * compiles to AVX-512, AVX2, SSE2 or NEON, or to scalar code.
 */
#include <math.h>
#include <stddef.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include "dln_step.h"

typedef ptrdiff_t dln_ix;

/* Vector bytes and how many vector registers the register blocks may fill.
 * Block sizes below keep every micro-kernel's accumulators, operands and
 * temporaries within the register file (32 registers: AVX-512, NEON; 16:
 * AVX/AVX2, SSE2), so the inner loops never spill. */
#if defined(__AVX512F__)
#define DLN_VB 64
#define DLN_ISA "avx512f"
#define DLN_REGS 32
#elif defined(__AVX2__) && defined(__FMA__)
#define DLN_VB 32
#define DLN_ISA "avx2"
#define DLN_REGS 16
#elif defined(__AVX__)
#define DLN_VB 32
#define DLN_ISA "avx"
#define DLN_REGS 16
#elif defined(__aarch64__)
#define DLN_VB 16
#define DLN_ISA "neon"
#define DLN_REGS 32
#elif defined(__SSE2__)
#define DLN_VB 16
#define DLN_ISA "sse2"
#define DLN_REGS 16
#else
#define DLN_VB 16
#define DLN_ISA "generic"
#define DLN_REGS 16
#endif

#if DLN_REGS >= 32
/* RD: 4 rows x 6 dot products = 24 accumulators + 4 row vectors + 1 operand.
 * UP: 2 rows x 12 coefficients + 2 sums + 2 rows + 1 operand = 29.
 * CA, UPW: 2 column vectors x 12 = 24 + 2 + 1. */
#define DLN_RD_RB 4
#define DLN_RD_QG 6
#define DLN_UP_KG 12
#define DLN_CA_QG 12
#else
#define DLN_RD_RB 2
#define DLN_RD_QG 5
#define DLN_UP_KG 5
#define DLN_CA_QG 6
#endif

/* Rows of a bottom-up tile and of a top-down tile (the other side of each
 * is sized from block_bytes), and the
 * fewest weights a layer needs to be split across threads: below it the
 * barrier at the end of the layer (~1 us) costs more than the layer. */
#define DLN_RBLK 8
#define DLN_HROWS 8
/* Top-down tiles are prefetched this many tiles ahead. */
#ifndef DLN_PF_TILES
#define DLN_PF_TILES 2
#endif
#ifndef DLN_PF_RW
#define DLN_PF_RW 1
#define DLN_PF_LOC 3
#endif
#define DLN_PAR_MIN 32768LL

#define DLN_AI static inline __attribute__((always_inline))

int dln_openmp_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 0;
#endif
}

const char *dln_build_isa(void) { return DLN_ISA; }

int dln_vector_bytes(void) { return DLN_VB; }

int dln_cpu_ok(void)
{
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
    __builtin_cpu_init();
#if defined(__AVX512F__)
    if (!__builtin_cpu_supports("avx512f")) return 0;
#endif
#if defined(__AVX2__)
    if (!__builtin_cpu_supports("avx2")) return 0;
#endif
#if defined(__FMA__)
    if (!__builtin_cpu_supports("fma")) return 0;
#endif
#if defined(__AVX__)
    if (!__builtin_cpu_supports("avx")) return 0;
#endif
#endif
    return 1;
}

/* Start of part t of n of [0, len), rounded down to a multiple of `mult`
 * (len itself for t = n). */
static dln_ix dln_split(dln_ix len, int n, int t, dln_ix mult)
{
    if (t >= n) return len;
    return (len * t / n) / mult * mult;
}

/* Group g of ng of [0, K): balanced sizes, each <= the register block. */
DLN_AI int dln_g0(int K, int ng, int g) { return (int)((long long)K * g / ng); }

/* ---------------------------------------------------------------------------
 * Workspace layout (in scalars of the step's precision), shared by both
 * precisions.  Every buffer starts at a multiple of 64 bytes from `work`.
 *
 *   S   suffixes S_0 .. S_{L-1} (d_out x d_i each)      forms T, single
 *   P   transposed prefixes P_1^T .. P_L^T (r x d_i)      forms P, single
 *       (every chain row of width d has leading dimension dln_ldc(d))
 *   R   residual (d_out x r)
 *   I   beta I (d_out x d_out): S_L
 *   T   carried T^T chain, ping-pong (2 x d_out x ld(maxd)) forms T, single
 *   O   carried old suffix, ping-pong (2 x d_out x ld(maxd)) forms P, single
 *   W   R P_i^T for a top-down T-form update (d_out x ld(maxd))  single, r > d_out
 *   per thread: the RD lane partials kept between k-chunks (DLN_RBLK x d_out
 *               and DLN_RBLK x r vectors, where a layer's rows span several
 *               chunks) and U (maxd x K, K the rank of a top-down update)
 * ------------------------------------------------------------------------- */
typedef struct {
    dln_ix S, P, R, I, T, O, W, thr, per_thr, total, totS, totP, ldmax;
    dln_ix abP, U;     /* per-thread offsets: P-dot lane partials, update factor */
    dln_ix kc_vec;     /* k-chunk of a bottom-up tile, in vectors */
} dln_layout;

static dln_ix dln_round(dln_ix n, dln_ix a) { return (n + a - 1) / a * a; }

/* Leading dimension (scalars) of a stored chain row of width d: rows of 512
 * bytes or more are whole cache lines, plus one line when they would be a
 * multiple of 512 bytes, so the rows of a chain (read together, one line
 * from each, by every micro-kernel) spread over cache sets instead of all
 * sharing one; shorter rows are not padded (they span a few lines). */
static dln_ix dln_ldc(dln_ix d, dln_ix size)
{
    if (d * size < 512) return d;   /* a few lines: no sets to collide in, no padding */
    dln_ix b = dln_round(d * size, 64);
    if (b % 512 == 0) b += 64;
    return b / size;
}

/* block_bytes as the sweeps use it (at least one vector per row of a tile) */
static long long dln_block(long long block_bytes)
{
    return block_bytes < (long long)(DLN_RBLK * DLN_VB) ? (long long)(DLN_RBLK * DLN_VB) : block_bytes;
}

static void dln_make_layout(int L, const int *w, int form, int nthreads, int size,
                            long long block_bytes, dln_layout *lo)
{
    const dln_ix r = w[0], D = w[L], a = 64 / size, vl = DLN_VB / size;
    dln_ix maxd = 0, maxin = 0, totS = 0, totP = 0;
    for (int i = 0; i <= L; i++) if (w[i] > maxd) maxd = w[i];
    for (int i = 0; i < L; i++) if (w[i] > maxin) maxin = w[i];
    for (int i = 0; i < L; i++) totS += D * dln_ldc(w[i], size);
    for (int i = 1; i <= L; i++) totP += r * dln_ldc(w[i], size);
    const dln_ix ldmax = dln_ldc(maxd, size);
    const int useS = form != DLN_FORM_P, useP = form != DLN_FORM_T;
    const int useW = form == DLN_SINGLE && r > D;
    /* top-down update rank: P form r, single-pass min(r, d_out) (T form when r > d_out) */
    const dln_ix K = form == DLN_FORM_P ? r : (form == DLN_SINGLE ? (r < D ? r : D) : 0);
    /* row dots keep lane partials between k-chunks only where a layer's rows
     * are longer than one chunk: T dots (d_out of them) and P dots (r) */
    lo->kc_vec = (dln_ix)(dln_block(block_bytes) / (DLN_RBLK * DLN_VB));
    const int chunked = maxin / vl > lo->kc_vec;
    const dln_ix abT = chunked && useS ? DLN_RBLK * D * vl : 0;
    const dln_ix abP = chunked && useP ? DLN_RBLK * r * vl : 0;
    dln_ix o = 0;
    lo->totS = totS;
    lo->totP = totP;
    lo->ldmax = ldmax;
    lo->S = o; o += dln_round(useS ? totS : 0, a);
    lo->P = o; o += dln_round(useP ? totP : 0, a);
    lo->R = o; o += dln_round(D * r, a);
    lo->I = o; o += dln_round(D * dln_ldc(D, size), a);
    lo->T = o; o += dln_round(useS ? 2 * D * ldmax : 0, a);
    lo->O = o; o += dln_round(useP ? 2 * D * ldmax : 0, a);
    lo->W = o; o += dln_round(useW ? D * ldmax : 0, a);
    lo->abP = abT;
    lo->U = dln_round(abT + abP, a);
    lo->per_thr = dln_round(lo->U + maxd * K, a);
    lo->thr = o;
    if (nthreads < 1) nthreads = 1;
    o += lo->per_thr * nthreads;
    lo->total = o + a;              /* + slack to align `work` itself */
}

long long dln_work_size(int L, const int *widths, int form, int nthreads, long long block_bytes)
{
    dln_layout a, b;
    dln_make_layout(L, widths, form, nthreads, 8, block_bytes, &a);
    dln_make_layout(L, widths, form, nthreads, 4, block_bytes, &b);
    return (long long)(a.total > b.total ? a.total : b.total);
}

/* integer lanes of a shuffle mask for each precision */
#define DLN_IDX(T) DLN_IDX_(T)
#define DLN_IDX_(T) DLN_IDX_##T
#define DLN_IDX_double long long
#define DLN_IDX_float int
#define DLN_FMA_BUILTIN(T) DLN_FMA_(T)
#define DLN_FMA_(T) DLN_FMA_##T
#define DLN_FMA_double __builtin_fma
#define DLN_FMA_float __builtin_fmaf

#define REAL double
#define SFX(x) x##_f64
#include "dln_step_impl.h"
#undef REAL
#undef SFX

#define REAL float
#define SFX(x) x##_f32
#include "dln_step_impl.h"
#undef REAL
#undef SFX
