/* dln_step.h -- one full-batch GD step of a deep linear network, all layers
 * in one call (the C kernel of engine's ``cblas`` backend; see
 * docs/design.md, "The step schedule" and "The physical limit", and
 * engine/kernels/numpy_backend.py, whose semantics these kernels reproduce
 * up to rounding).
 *
 * Storage is row-major (NumPy C order).  Layer i (0-based, i = 0..L-1) is
 * M_{i+1}, shape widths[i+1] x widths[i], with widths[0] = r (the first
 * layer is B_1 = A_1 U_r, d_1 x r) and widths[L] = d_out.
 *
 * The kernels call no BLAS: every product is a register-blocked micro-kernel
 * (csrc/dln_step_impl.h) that does all the work touching one tile of a
 * layer -- advance the carried chain, apply the rank-K update, advance the
 * new chain -- while the tile is in registers and L1.  No allocation: the
 * caller passes dln_work_size() scalars of scratch.
 */
#ifndef DLN_STEP_H
#define DLN_STEP_H

#define DLN_FORM_P 0   /* prefix chain P_i = M_i...M_1 X_red stored (r < d_out)   */
#define DLN_FORM_T 1   /* suffix chain S_i = beta M_L...M_{i+1} stored (r >= d_out) */
#define DLN_SINGLE 2   /* single-pass alternating schedule: both chains stored */

/* Threads the kernels may use (omp_get_max_threads), 0 if built without
 * OpenMP.  Parallel sweeps split a layer into disjoint row ranges (T and P
 * chains) or column ranges (S chains), never a reduction, and every number
 * is computed by the same code whatever the split: results are bitwise
 * independent of the thread count. */
int dln_openmp_threads(void);

/* The vector instruction set the kernels were compiled for ("avx512f",
 * "avx2", "avx", "sse2", "neon", "generic") and the vector width in bytes. */
const char *dln_build_isa(void);
int dln_vector_bytes(void);

/* 1 if this CPU runs what the build assumed (checked at run time with
 * __builtin_cpu_supports; 1 where that cannot be checked). */
int dln_cpu_ok(void);

/* Scalars of scratch the step needs for these widths, form, up to
 * `nthreads` threads (per-thread buffers; nthreads >= 1) and the
 * block_bytes every step will be called with. */
long long dln_work_size(int L, const int *widths, int form, int nthreads,
                        long long block_bytes);

/* One GD step, two-pass schedule (or, with do_update = 0, only the loss).
 *
 * layers   L pointers to the layers, each C-contiguous, updated in place
 * c        (L,) per-layer A-space steps c_i = eta / s_i^2
 * beta     output scale of the normalized network
 * xs       (r,) singular values of X (reduced input X_red = diag(xs))
 * yred     (d_out, r) reduced targets Y V_r
 * form     DLN_FORM_P or DLN_FORM_T
 * block_bytes  target bytes of one tile of a layer (sized for L1)
 * nthreads threads to use (<= the count work was sized for; <= 0: all)
 * work     dln_work_size(L, widths, form, nthreads, block_bytes) scalars
 * lo, hi   the update is written only if the excess e is finite and
 *          lo < e <= hi; otherwise no weight is touched
 * excess   out: e = 1/2 ||R||_F^2 before the step, summed in double
 *
 * Returns 1 when the update was applied, 0 when not.
 */
int dln_step_f64(int L, const int *widths, double **layers, const double *c, double beta,
                 const double *xs, const double *yred, int form, long long block_bytes,
                 int nthreads, double *work, double lo, double hi, int do_update,
                 double *excess);

int dln_step_f32(int L, const int *widths, float **layers, const double *c, double beta,
                 const float *xs, const float *yred, int form, long long block_bytes,
                 int nthreads, float *work, double lo, double hi, int do_update,
                 double *excess);

/* Single-pass alternating schedule (2 weight passes per step, docs/design.md,
 * "The step schedule").  Same arguments and gate as dln_step_*, plus
 * `state`, which the caller keeps between steps: 0 = nothing valid (set it
 * to 0 whenever the weights, beta, xs or yred may have changed behind the
 * kernel's back), 1 / 2 = the suffix / prefix chain and R in `work` belong
 * to the current weights (the next sweep is bottom-up / top-down), 3 =
 * nothing valid but the next sweep must be top-down (to resume a run on its
 * own rounding path).  The excess then comes from the stored residual at no
 * extra pass.  `work` has dln_work_size(L, widths, DLN_SINGLE, nthreads, block_bytes)
 * scalars and must persist with state. */
int dln_step1_f64(int L, const int *widths, double **layers, const double *c, double beta,
                  const double *xs, const double *yred, long long block_bytes, int nthreads,
                  double *work, double lo, double hi, int do_update, int *state,
                  double *excess);

int dln_step1_f32(int L, const int *widths, float **layers, const double *c, double beta,
                  const float *xs, const float *yred, long long block_bytes, int nthreads,
                  float *work, double lo, double hi, int do_update, int *state,
                  double *excess);

/* K same-shape networks (an ensemble), one GD step each, in parallel over
 * the members (dynamic schedule, one thread per member: each member gets
 * the bits a step of it alone gives).  layers[k], c[k], beta[k], work[k]
 * (dln_work_size(..., nthreads = 1, ...)), state[k] (single-pass; form
 * DLN_SINGLE) and hi[k] per member; members with active[k] = 0 are
 * skipped.  Out: excess[k], applied[k] (as dln_step / dln_step1). */
void dln_members_f64(int K, int L, const int *widths, double ***layers, const double **c,
                     const double *beta, const double *xs, const double *yred, int form,
                     long long block_bytes, int nthreads, double **work, int *state, double lo,
                     const double *hi, const int *active, double *excess, int *applied);
void dln_members_f32(int K, int L, const int *widths, float ***layers, const double **c,
                     const double *beta, const float *xs, const float *yred, int form,
                     long long block_bytes, int nthreads, float **work, int *state, double lo,
                     const double *hi, const int *active, double *excess, int *applied);

#endif
