/* dln_step.h -- one full-batch GD step of a deep linear network, all layers
 * in one call (the ``cblas`` backend of engine; see docs/design.md, "The step
 * schedule" and "The physical limit", and engine/kernels/numpy_backend.py,
 * whose semantics these kernels reproduce exactly up to rounding).
 *
 * Storage is row-major (NumPy C order).  Layer i (0-based, i = 0..L-1) is
 * M_{i+1}, shape widths[i+1] x widths[i], with widths[0] = r (the first
 * layer is B_1 = A_1 U_r, d_1 x r) and widths[L] = d_out.
 *
 * BLAS is not linked: the caller passes the address of a Fortran-convention
 * ?gemm (every argument by pointer), e.g. the one SciPy exports through
 * scipy.linalg.cython_blas.  No link-time BLAS dependency, no allocation.
 */
#ifndef DLN_STEP_H
#define DLN_STEP_H

#define DLN_FORM_P 0   /* prefix chain P_i = M_i...M_1 X_red stored (r < d_out)   */
#define DLN_FORM_T 1   /* suffix chain S_i = beta M_L...M_{i+1} stored (r >= d_out) */
#define DLN_SINGLE 2   /* single-pass alternating schedule: both chains stored */

/* Threads the kernels may use (omp_get_max_threads), 0 if built without
 * OpenMP.  Parallel loops split layers into disjoint row or column ranges,
 * never a reduction, so results do not depend on the thread count beyond
 * what BLAS does inside one product.  The caller should keep BLAS itself
 * single-threaded while the kernel runs (nested threading oversubscribes). */
int dln_openmp_threads(void);

/* Number of scalars of scratch the step needs for these widths and form. */
long long dln_work_size(int L, const int *widths, int form);

/* One GD step (or, with do_update = 0, only the loss).
 *
 * layers   L pointers to the layers, each C-contiguous, updated in place
 * c        (L,) per-layer A-space steps c_i = eta / s_i^2
 * beta     output scale of the normalized network
 * xs       (r,) singular values of X (reduced input X_red = diag(xs))
 * yred     (d_out, r) reduced targets Y V_r
 * work     dln_work_size(...) scalars of scratch
 * block_bytes  target size of a row block of a layer in the fused pass
 * lo, hi   the update is written only if the excess e is finite and
 *          lo < e <= hi; otherwise no weight is touched
 * excess   out: e = 1/2 ||R||_F^2 before the step, summed in double
 *
 * Returns 1 when the update was applied, 0 when not.
 */
int dln_step_f64(void *dgemm, int L, const int *widths, double **layers,
                 const double *c, double beta, const double *xs,
                 const double *yred, int form, long long block_bytes,
                 double *work, double lo, double hi, int do_update,
                 double *excess);

int dln_step_f32(void *sgemm, int L, const int *widths, float **layers,
                 const double *c, double beta, const float *xs,
                 const float *yred, int form, long long block_bytes,
                 float *work, double lo, double hi, int do_update,
                 double *excess);

/* Single-pass alternating schedule (2 weight passes per step, docs/design.md).
 * Same arguments and gate as dln_step_*, plus `state`, which the caller
 * keeps between steps: 0 = nothing valid (set it to 0 whenever the weights,
 * beta, xs or yred may have changed behind the kernel's back), 1 / 2 = the
 * suffix / prefix chain and R in `work` belong to the current weights (the
 * next sweep is bottom-up / top-down), 3 = nothing valid but the next sweep
 * must be top-down (to resume a run on its own rounding path).  The
 * excess then comes from the stored residual at no extra pass.  `work` has
 * dln_work_size(L, widths, DLN_SINGLE) scalars and must persist with state. */
int dln_step1_f64(void *dgemm, int L, const int *widths, double **layers,
                  const double *c, double beta, const double *xs,
                  const double *yred, long long block_bytes, double *work,
                  double lo, double hi, int do_update, int *state, double *excess);

int dln_step1_f32(void *sgemm, int L, const int *widths, float **layers,
                  const double *c, double beta, const float *xs,
                  const float *yred, long long block_bytes, float *work,
                  double lo, double hi, int do_update, int *state, double *excess);

#endif
