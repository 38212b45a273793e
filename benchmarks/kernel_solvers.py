r"""Kernel solvers vs scikit-learn, a hyperparameter sweep as one program, and
a FALKON solve at scale. Ratios are measured in this process, never promised.

  python -m benchmarks.kernel_solvers                      # peers + sweep
  python -m benchmarks.kernel_solvers --parts=scale        # n=1e6, M=1e4

* ``peers``: random Fourier features + ridge (``--features``) and exact
  kernel ridge at ``--n`` rows (procedural regression, Gaussian kernel):
  ours (jitted, timed after compile) vs ``RBFSampler`` + ``Ridge`` and
  ``KernelRidge``, both sides on the same float32 arrays (scikit-learn keeps
  float32 input float32: its float64 fits took 1.6x as long), fit + predict
  on ``--n_test`` rows. Every time is the best of ``--repeats`` on OpenBLAS's
  default threads and as many on one (``best_time``: each side its better
  setting, printed).
* ``sweep``: ``--sweep_bandwidths`` x ``--sweep_lams`` exact kernel ridge fits
  at each of ``--sweep_n`` rows: one program (``kernel_ridge.exact_sweep``:
  a kernel matrix per bandwidth, a Cholesky per pair, the pairs split
  over the host's cores) vs a loop of ``KernelRidge`` fits (float32 both).
* ``scale``: FALKON-preconditioned CG at ``--scale_n`` rows and
  ``--scale_centres`` centres, rows sharded over the host's cores: the
  iterations, residuals, time, rate (``measure.falkon_flops``) and the
  process's peak resident memory.

"First call" times compile as a fresh process does: the persistent
compilation cache stays off (unless ``JAX_ENABLE_COMPILATION_CACHE`` says
otherwise; loaded programs are then counted and said).
"""

import os
import sys
import time

from absl import app
from absl import flags

from benchmarks import measure
from rahimi_jax import cli

flags.DEFINE_list('parts', ['peers', 'sweep'], 'peers, sweep, scale.')
flags.DEFINE_integer('n', 10000, 'Training rows of the peers part.')
flags.DEFINE_integer('n_test', 1000, 'Test rows.')
flags.DEFINE_integer('features', 1000, 'Random Fourier features.')
flags.DEFINE_integer('in_dim', 8, 'Input dimension.')
flags.DEFINE_float('lam', 1e-5, 'Ridge per sample.')
flags.DEFINE_integer('repeats', 3, 'Timed runs of each; the fastest counts.')
flags.DEFINE_list('sweep_n', ['500', '1000', '2000'],
                  'Training rows of the sweeps (one sweep per size).')
flags.DEFINE_list('sweep_bandwidths', ['0.5', '1', '2', '4'], 'Bandwidths.')
flags.DEFINE_list('sweep_lams', ['1e-6', '1e-5', '1e-4', '1e-3'], 'Ridges.')
flags.DEFINE_integer('scale_n', 1000000, 'Rows of the scale run.')
flags.DEFINE_integer('scale_centres', 10000, 'Centres of the scale run.')
flags.DEFINE_float('scale_tol', 1e-5, 'Relative residual of the scale run.')
flags.DEFINE_integer('scale_maxiter', 100, 'Iterations cap of the scale run.')
flags.DEFINE_integer('block_size', None, 'Rows per kernel block (default: '
                     'kernels.default_block_size).')
flags.DEFINE_integer('peak_n', None, 'Side of the peak matmul (default 2048 '
                     'on a CPU).')
flags.DEFINE_bool('dry_run', False, 'Check the flags, print the plan, exit.')
cli.define_precision_flag()  # applied by cli.start

FLAGS = flags.FLAGS
PARTS = ('peers', 'sweep', 'scale')



def best_time(fn, repeats):
  """Fastest of ``repeats`` calls of ``fn`` (which blocks) on OpenBLAS's
  default threads and as many on one thread; its last output, and the
  threads of the fastest (``'default'`` or ``'1 BLAS thread'``).

  Each side gets its better setting: LAPACK on small matrices ran faster on
  one thread (scikit-learn's 16 ``KernelRidge`` fits at n = 1000, in a
  process without JAX: 0.94 s on OpenBLAS's 2 threads, 0.50 s on one; 2-core
  Intel Xeon), big ones on all (n = 1e4 Cholesky: ours 2.8 vs 4.0 s).
  """
  import threadpoolctl  # pylint: disable=g-import-not-at-top
  best, out, threads = float('inf'), None, None
  for limit in (None, 1):
    with threadpoolctl.threadpool_limits(limits=limit, user_api='blas'):
      for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - start
        if seconds < best:
          best, threads = seconds, ('default' if limit is None
                                    else '1 BLAS thread')
  return best, out, threads


def peers(d, bandwidth, peak):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from sklearn import kernel_approximation  # pylint: disable=g-import-not-at-top
  from sklearn import kernel_ridge  # pylint: disable=g-import-not-at-top
  from sklearn import linear_model  # pylint: disable=g-import-not-at-top
  from rahimi_jax import kernels  # pylint: disable=g-import-not-at-top
  from rahimi_jax.solvers import kernel_ridge as kr  # pylint: disable=g-import-not-at-top
  from rahimi_jax.studies import kernel_data  # pylint: disable=g-import-not-at-top
  kernel = kernels.get_kernel('gaussian')
  n, lam = len(d.x), FLAGS.lam
  gamma = kernel.gamma(bandwidth)
  x32, y32, t32 = (np.asarray(a, np.float32) for a in (d.x, d.y, d.x_test))

  @jax.jit
  def rff(x, y, x_test, key):
    r = kernels.draw_rff(key, kernel, x.shape[1], FLAGS.features)
    w = kr.ridge_fit(kernels.rff_features(r, x, bandwidth), y, lam)
    return kernels.rff_features(r, x_test, bandwidth) @ w

  @jax.jit
  def exact(x, y, x_test):
    coef = kr.exact_fit(kernel, x, y, bandwidth, lam)
    return kernels.kernel_matvec(kernel, x_test, x, coef, bandwidth)

  def sk_rff():
    f = kernel_approximation.RBFSampler(gamma=gamma,
                                        n_components=FLAGS.features,
                                        random_state=0).fit(x32)
    m = linear_model.Ridge(alpha=n * lam, fit_intercept=False).fit(
        f.transform(x32), y32)
    return m.predict(f.transform(t32))

  def sk_exact():
    return kernel_ridge.KernelRidge(alpha=n * lam, kernel=kernel.sklearn_name,
                                    gamma=gamma).fit(x32, y32).predict(t32)

  key = jax.random.key(0)
  rows = []
  dim, n_test = d.x.shape[1], len(d.x_test)
  for name, ours, theirs, flops in (
      (f'RFF D={FLAGS.features} + ridge', lambda: jax.block_until_ready(
          rff(d.x, d.y, d.x_test, key)), sk_rff,
       measure.rff_ridge_flops(n, n_test, dim, FLAGS.features)),
      ('exact KRR (Cholesky)', lambda: jax.block_until_ready(
          exact(d.x, d.y, d.x_test)), sk_exact, measure.krr_flops(n, n_test, dim))):
    start = time.perf_counter()
    ours()  # compile + first run
    first = time.perf_counter() - start
    t_ours, p_ours, ours_on = best_time(ours, FLAGS.repeats)
    t_sk, p_sk, sk_on = best_time(theirs, FLAGS.repeats)
    mse = [kernel_data.score('regression', p, d.y_test)
           for p in (p_ours, p_sk)]
    rows.append(f'{name:<26} ours {t_ours:7.3f}s ({ours_on}; first call '
                f'{first:6.2f}s; {measure.rate(flops, t_ours, peak)}) scikit-learn '
                f'{t_sk:7.3f}s ({sk_on})  ratio {t_sk / t_ours:5.2f}x  test mse '
                f'{mse[0]:.5f} vs {mse[1]:.5f}')
  return rows


def sweep(n, bandwidths, lams, peak):
  """``len(bandwidths) x len(lams)`` exact KRR fits at ``n`` rows: one
  ``kernel_ridge.exact_sweep`` program vs a loop of ``KernelRidge`` fits."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from sklearn import kernel_ridge  # pylint: disable=g-import-not-at-top
  from rahimi_jax import kernels  # pylint: disable=g-import-not-at-top
  from rahimi_jax.solvers import kernel_ridge as kr  # pylint: disable=g-import-not-at-top
  from rahimi_jax.studies import kernel_data  # pylint: disable=g-import-not-at-top
  d = kernel_data.procedural(n, FLAGS.n_test, FLAGS.in_dim)
  kernel = kernels.get_kernel('gaussian')
  bws = np.array(bandwidths, np.float32)
  ls = np.array(lams, np.float32)
  x32, y32, t32 = (np.asarray(a, np.float32) for a in (d.x, d.y, d.x_test))

  # The pairs split over the devices (one per core), each device's
  # pairs one after another: on one BLAS thread, 16 pairs at n = 2000 took
  # 0.49 s on 2 devices against 0.41 s for 8 on one (2-core Intel Xeon;
  # WORKSPACE.md, "Sweep, third pass"). On OpenBLAS's default threads two
  # devices' calls oversubscribe the cores (0.81 s): ``best_time`` keeps the
  # faster setting.
  mesh = kernels.row_mesh()

  @jax.jit
  def grid(x, y, x_test, bws, ls):
    coefs = kr.exact_sweep(kernel, x, y, bws, ls, block_size=FLAGS.block_size,
                           mesh=mesh)
    return jax.vmap(lambda bw, c: jax.vmap(
        lambda cc: kernels.kernel_matvec(kernel, x_test, x, cc, bw))(c))(
            bws, coefs)

  def ours():
    return jax.block_until_ready(grid(d.x, d.y, d.x_test, bws, ls))

  def theirs():
    return [kernel_ridge.KernelRidge(
        alpha=n * l, kernel=kernel.sklearn_name, gamma=kernel.gamma(b)
    ).fit(x32, y32).predict(t32) for b in bandwidths for l in lams]

  start = time.perf_counter()
  ours()
  first = time.perf_counter() - start
  t_ours, p_ours, ours_on = best_time(ours, FLAGS.repeats)
  kernel_ridge.KernelRidge(alpha=1.0).fit(d.x[:10], d.y[:10])  # warm-up
  t_sk, p_sk, sk_on = best_time(theirs, FLAGS.repeats)
  p_ours = np.asarray(p_ours).reshape(len(p_sk), *np.shape(p_sk[0]))
  gap = max(float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
            for a, b in zip(p_ours, p_sk))
  # A kernel matrix per bandwidth, a factorization per pair: per pair, the
  # fit's FLOPs less the kernel matrices' products, which it shares.
  pairs = len(bandwidths) * len(lams)
  flops = pairs * measure.krr_flops(n, len(d.x_test), d.x.shape[1]) - (
      pairs - len(bandwidths)) * 2 * n * (n + len(d.x_test)) * d.x.shape[1]
  return [f'sweep of {pairs} (bandwidth, lam) exact KRR '
          f'fits at n={n}: one program {t_ours:.3f}s ({ours_on}; first call '
          f'{first:.2f}s; {measure.rate(flops, t_ours, peak)}), scikit-learn loop '
          f'{t_sk:.3f}s ({sk_on}), ratio '
          f'{t_sk / t_ours:.2f}x (first call {t_sk / first:.2f}x); largest '
          f'relative prediction difference {gap:.1e}']


def scale(peak):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from rahimi_jax import kernels  # pylint: disable=g-import-not-at-top
  from rahimi_jax.solvers import kernel_ridge as kr  # pylint: disable=g-import-not-at-top
  from rahimi_jax.studies import kernel_data  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  d = kernel_data.procedural(FLAGS.scale_n, FLAGS.n_test, FLAGS.in_dim)
  data_s = time.perf_counter() - start
  bandwidth = kernel_data.median_distance(d.x)
  kernel = kernels.get_kernel('gaussian')
  mesh = kernels.row_mesh()

  @jax.jit
  def solve(x, y, x_test):
    c = x[kernels.choose_centres(jax.random.key(0), x.shape[0],
                                 FLAGS.scale_centres)]
    res = kr.nystrom_fit(kernel, x, y, c, bandwidth, FLAGS.lam,
                         tol=FLAGS.scale_tol, maxiter=FLAGS.scale_maxiter,
                         block_size=FLAGS.block_size, mesh=mesh)
    return res, kernels.kernel_matvec(kernel, x_test, c, res.coef, bandwidth)

  start = time.perf_counter()
  compiled = solve.lower(d.x, d.y, d.x_test).compile()
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  res, pred = jax.block_until_ready(compiled(d.x, d.y, d.x_test))
  run_s = time.perf_counter() - start
  it = int(res.iterations)
  mse = float(np.mean((np.asarray(pred) - d.y_test)**2))
  flops = measure.falkon_flops(FLAGS.scale_n, FLAGS.n_test, FLAGS.in_dim,
                               FLAGS.scale_centres, it)
  entries = measure.falkon_kernel_entries(FLAGS.scale_n, FLAGS.n_test,
                                         FLAGS.scale_centres, it)
  history = ', '.join(f'{r:.1e}' for r in np.asarray(res.residuals)[:it + 1])
  block = FLAGS.block_size or kernels.ACCELERATOR_BLOCK_SIZE
  tile = kernels.default_block_size(FLAGS.scale_centres)
  return [f'FALKON n={FLAGS.scale_n} M={FLAGS.scale_centres} d={FLAGS.in_dim} '
          f'lam={FLAGS.lam:g} on {len(jax.devices())} device(s), blocks of '
          f'{block} rows in tiles of {tile if block % tile == 0 else block}: {it} '
          f'iterations (tol {FLAGS.scale_tol:g}), the Nyström system\'s residual '
          f'{float(res.residual):.1e} (converged {bool(res.converged)}); data '
          f'{data_s:.1f}s, compile {compile_s:.1f}s, '
          f'solve + predict {run_s:.1f}s ('
          f'{measure.rate(flops, run_s, peak)}; {entries / run_s / 1e9:.2f} '
          f'G kernel entries/s, each an exponential); peak RSS {measure.maxrss_mb():.0f} MB; '
          f'test mse {mse:.5f} (noise variance 0.01)',
          f'residual history (the recurrence\'s): {history}']


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  parts = FLAGS.parts
  for part in parts:
    if part not in PARTS:
      print(f'error: --parts: {part!r}; accepted: {", ".join(PARTS)}.',
            file=sys.stderr)
      return 1
  bad = [v for v in FLAGS.sweep_n if not v.strip().isdigit() or int(v) < 2]
  if bad:
    print(f'error: --sweep_n: {bad[0]!r}; accepted: integers >= 2.',
          file=sys.stderr)
    return 1
  for name in ('n', 'n_test', 'features', 'in_dim', 'repeats', 'scale_n',
               'scale_centres', 'scale_maxiter'):
    if FLAGS[name].value < 1:
      print(f'error: --{name}={FLAGS[name].value}; accepted: an integer >= 1.',
            file=sys.stderr)
      return 1
  for name in ('lam', 'scale_tol', 'sweep_bandwidths', 'sweep_lams'):
    values = FLAGS[name].value
    for v in values if isinstance(values, list) else [values]:
      try:
        ok = float(v) > 0 and float(v) < float('inf')
      except ValueError:
        ok = False
      if not ok:
        print(f'error: --{name}: {v!r}; accepted: finite numbers > 0.',
              file=sys.stderr)
        return 1
  if FLAGS.dry_run:
    print(f'parts {", ".join(parts)}; peers at n={FLAGS.n}, sweep of '
          f'{len(FLAGS.sweep_bandwidths) * len(FLAGS.sweep_lams)} pairs at '
          f'n={",".join(FLAGS.sweep_n)}, scale n={FLAGS.scale_n} M={FLAGS.scale_centres}')
    print('dry run: the input is valid; nothing was run.')
    return
  # First calls compile, as in a fresh process (a cache that the user turns
  # on is counted below).
  import jax  # pylint: disable=g-import-not-at-top
  if 'JAX_ENABLE_COMPILATION_CACHE' not in os.environ:  # read at jax's import
    jax.config.update('jax_enable_compilation_cache', False)
  cli.start(argv)
  from rahimi_jax import program  # pylint: disable=g-import-not-at-top
  from rahimi_jax.studies import kernel_data  # pylint: disable=g-import-not-at-top
  print(f'CPU: {measure.cpu_model()}; {len(jax.devices())} XLA device(s); jax '
        f'{jax.__version__}', flush=True)
  peak = measure.measure_peak(FLAGS.peak_n)
  print(measure.peak_line(peak) + '; rates below: textbook FLOPs (Cholesky '
        'n^3/3, products 2mnk) over our time, against the best peak reading '
        'so far (read again before each part: the host drifts)', flush=True)
  used = peak['peak']
  if 'peers' in parts:
    d = kernel_data.procedural(FLAGS.n, FLAGS.n_test, FLAGS.in_dim)
    bandwidth = kernel_data.median_distance(d.x)
    print(f'peers at n={FLAGS.n}, bandwidth {bandwidth:.3f}, lam {FLAGS.lam:g}, '
          'float32 on both sides:')
    for row in peers(d, bandwidth, peak):
      print('  ' + row, flush=True)
  if 'sweep' in parts:
    peak = measure.best_peak(peak, measure.measure_peak(FLAGS.peak_n))
    used = peak['peak']
    for n in FLAGS.sweep_n:
      for row in sweep(int(n), [float(b) for b in FLAGS.sweep_bandwidths],
                       [float(l) for l in FLAGS.sweep_lams], peak):
        print(row, flush=True)
  if 'scale' in parts:
    peak = measure.best_peak(peak, measure.measure_peak(FLAGS.peak_n))
    used = peak['peak']
    for row in scale(peak):
      print(row, flush=True)
  peak = measure.best_peak(peak, measure.measure_peak(FLAGS.peak_n))
  print(f'read again at the end: {measure.peak_line(peak)}' + (
      f'; the shares above divide by {used:.1f} GFLOP/s or less: of this '
      f'best reading each is at most {used / peak["peak"]:.2f}x the share '
      'printed'
      if peak['peak'] > used else ''), flush=True)
  hits = program.compile_cache_hits()
  if hits:
    print(f'{hits} program(s) loaded from the compilation cache, not '
          'compiled: their "first call" times are loads.', flush=True)

if __name__ == '__main__':
  app.run(main)
