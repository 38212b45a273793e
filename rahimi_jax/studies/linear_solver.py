"""Linear solvers that scale: kernel ridge systems of growing ``n``.

For each ``n`` (a procedural nonlinear regression, ``kernel_data.procedural``)
the Nyström kernel ridge system ``(K_nM^T K_nM / n + lam K_MM) a = K_nM^T y /
n`` over ``M`` random centres is solved by plain conjugate gradients and by
FALKON-preconditioned CG (``solvers.kernel_ridge.nystrom_fit``), rows sharded
over the host's devices; exact kernel ridge (Cholesky of the ``n x n``
system) beside them while ``n`` is small. Per solve: iterations until the
CG recurrence's relative residual reached the tolerance, its history, the
Nyström system's residual recomputed at the end, the same system for both
solvers (``converged`` is read from it: in float32 it stalls above a small
``tol`` while the recurrence's keeps falling, and the report says so), and
recomputed along the way (``checkpoints``), so that the report compares the
two solvers' iterations to the same residual of the same system, compile
and run time, XLA's peak memory estimate of the compiled program
(arguments + outputs + temporaries), the test error, and how far the test
predictions are from those of the same system solved in float64 by NumPy
(``reference_gap``): a relative residual is not an error, and plain CG's
residual is dominated by the large eigenvalues, so this shows what stopping
at ``tol`` bought. ``dtype='float64'`` runs the same data in float64.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from rahimi_jax import kernels
from rahimi_jax import provenance
from rahimi_jax import results as results_lib
from rahimi_jax import stats
from rahimi_jax import studies
from rahimi_jax.solvers import kernel_ridge as kr
from rahimi_jax.studies import kernel_data

SOLVERS = ('falkon', 'cg', 'exact')
DTYPES = ('float32', 'float64')
# The Nyström system's residual is recomputed at every iteration up to this,
# then 1/DENSE apart (``checkpoints``).
DENSE = 16


@dataclasses.dataclass(frozen=True)
class LinearSolverConfig:
  """The linear solver study.

  Attributes:
    sizes: training set sizes ``n``, increasing.
    centres: Nyström centres ``M`` (``<= n`` for every size).
    kernel: ``kernels.KERNELS``.
    bandwidth: the kernel's; None: the median pairwise distance in the
      kernel's norm (``Kernel.distance_ord``).
    lam: ridge per sample.
    tol: relative residual to stop at.
    maxiter: the most CG iterations (plain and preconditioned).
    exact_max: exact kernel ridge for sizes up to this (0: never).
    in_dim: input dimension of the procedural data.
    block_size: rows per kernel block.
    devices: devices to shard the rows over (0: all local devices).
    dtype: the arithmetic: ``'float32'``, or ``'float64'`` (needs
      ``jax_enable_x64``; the launcher sets it), where the Nyström system's
      residual can reach a ``tol`` that float32's cannot.
  """
  sizes: tuple[int, ...] = (1000, 2000, 4000, 8000)
  centres: int = 500
  kernel: str = 'gaussian'
  bandwidth: float | None = None
  lam: float = 1e-5
  tol: float = 1e-6
  maxiter: int = 1000
  exact_max: int = 4000
  in_dim: int = 8
  block_size: int | None = None  # None: kernels.default_block_size
  devices: int = 0
  dtype: str = 'float32'

  def __post_init__(self):
    kernels.get_kernel(self.kernel)
    studies.check_dtype(self.dtype, DTYPES)
    s = self.sizes
    if (not s or any(not isinstance(n, int) or n < 1 for n in s)
        or list(s) != sorted(set(s))):
      raise ValueError(f'sizes={list(s)}; accepted: increasing integers >= 1.')
    if not (isinstance(self.centres, int) and 1 <= self.centres <= s[0]):
      raise ValueError(f'M={self.centres} centres with n={s[0]} rows; '
                       'accepted: 1 <= M <= n (the smallest size).')
    if self.bandwidth is not None:
      kernels.check_positive('bandwidth', self.bandwidth)
    kernels.check_positive('lam', self.lam)
    kernels.check_positive('tol', self.tol)
    if not self.tol < 1:  # a relative residual: 1 at the start
      raise ValueError(f'tol={self.tol!r}; accepted: a relative residual in '
                       '(0, 1).')
    kernels.check_block_size(self.block_size)
    for name, low in (('maxiter', 1), ('exact_max', 0), ('in_dim', 1),
                      ('devices', 0)):
      value = getattr(self, name)
      if not (isinstance(value, int) and value >= low):
        raise ValueError(f'{name}={value!r}; accepted: an integer >= {low}.')
    if self.devices > len(jax.local_devices()):
      raise ValueError(f'devices={self.devices}; accepted: 0 (all) .. '
                       f'{len(jax.local_devices())}.')


def checkpoints(maxiter: int, dense: int = DENSE) -> tuple[int, ...]:
  """Iteration counts at which the Nyström system's residual is recomputed:
  every one up to ``dense``, then ``1 / dense`` apart (for maxiter 1000: 113
  checkpoints, multiplied by ``H`` in one product at the end)."""
  points, i = list(range(min(dense, maxiter) + 1)), dense
  while i < maxiter:
    i = min(maxiter, i + i // dense)
    points.append(i)
  return tuple(points)


def solve(config: LinearSolverConfig, d: kernel_data.KernelData,
          solver: str, bandwidth: float, mesh=None) -> dict:
  """One solve: its iterations, residuals, times, memory and test error.

  ``converged`` and ``residual`` of the exact solve: whether its
  coefficients are finite (a Cholesky factorization that fails leaves
  NaNs), and ``||y - (K + n lam I) c|| / ||y||``, ``K c`` in blocks.
  """
  kernel = kernels.get_kernel(config.kernel)
  x, y, x_test = (jnp.asarray(a, config.dtype) for a in (d.x, d.y, d.x_test))
  if solver == 'exact':
    def fn(x, y, x_test):
      coef = kr.exact_fit(kernel, x, y, bandwidth, config.lam,
                          block_size=config.block_size)
      pred = kernels.kernel_matvec(kernel, x_test, x, coef, bandwidth,
                                   block_size=config.block_size)
      residual = kr.relative_residual(y, kernels.kernel_matvec(
          kernel, x, x, coef, bandwidth, block_size=config.block_size)
                                      + x.shape[0] * config.lam * coef)
      return (pred, jnp.int32(0), jnp.full(1, jnp.nan), residual,
              jnp.isfinite(coef).all(), coef, x, jnp.zeros(0, x.dtype))
  else:
    def fn(x, y, x_test):
      c = x[kernels.choose_centres(jax.random.key(0), x.shape[0],
                                   config.centres)]
      res = kr.nystrom_fit(
          kernel, x, y, c, bandwidth, config.lam,
          preconditioner='falkon' if solver == 'falkon' else 'none',
          tol=config.tol, maxiter=config.maxiter,
          checkpoints=checkpoints(config.maxiter),
          block_size=config.block_size, mesh=mesh)
      pred = kernels.kernel_matvec(kernel, x_test, c, res.coef, bandwidth,
                                   block_size=config.block_size)
      return (pred, res.iterations, res.residuals, res.residual,
              res.converged, res.coef, c, res.checked)
  run = kernel_data.timed_jit(fn, x, y, x_test)
  pred, iterations, residuals, residual, converged, coef, centres, checked = (
      run.outputs)
  iterations = int(iterations)
  gap = (np.nan if solver == 'exact' else
         reference_gap(config, d, bandwidth, np.asarray(centres),
                       np.asarray(coef)))
  checked_at = [i for i in checkpoints(config.maxiter) if i <= iterations
                ] if solver != 'exact' else []
  return dict(n=len(d.x), solver=solver, iterations=iterations,
              residual=float(residual), converged=bool(converged),
              compile_s=run.compile_s, run_s=run.run_s,
              peak_mb=run.peak_bytes / 2**20,
              test_mse=kernel_data.score('regression', pred, d.y_test),
              gap=gap,
              residuals=np.asarray(residuals)[:iterations + 1].tolist(),
              checked_at=checked_at,
              checked=np.asarray(checked)[:len(checked_at)].tolist())


REFERENCE_MAX_ENTRIES = 2 * 10**7  # of K_nM in float64 (160 MB)


def reference_gap(config: LinearSolverConfig, d: kernel_data.KernelData,
                  bandwidth: float, centres: np.ndarray, coef: np.ndarray
                  ) -> float:
  """``||K_tC (a - a*)|| / ||K_tC a*||`` on the test inputs, ``a*`` the
  Nyström system's solution in float64 by scikit-learn's kernels and NumPy
  (NaN when ``K_nM`` would have more than ``REFERENCE_MAX_ENTRIES``)."""
  from sklearn.metrics import pairwise  # pylint: disable=g-import-not-at-top
  if len(d.x) * len(centres) > REFERENCE_MAX_ENTRIES:
    return np.nan
  gamma = kernels.sklearn_gamma(config.kernel, bandwidth)

  def fn(a, b, gamma):
    return pairwise.pairwise_kernels(
        a, b, metric=kernels.get_kernel(config.kernel).sklearn_name,
        gamma=gamma)
  c = centres.astype(np.float64)
  k_nm = fn(d.x.astype(np.float64), c, gamma=gamma)
  n = len(d.x)
  h = k_nm.T @ k_nm / n + config.lam * fn(c, c, gamma=gamma)
  best = np.linalg.solve(h, k_nm.T @ d.y.astype(np.float64) / n)
  k_test = fn(d.x_test.astype(np.float64), c, gamma=gamma)
  return float(np.linalg.norm(k_test @ (coef - best))
               / np.linalg.norm(k_test @ best))


def run(config: LinearSolverConfig) -> results_lib.Results:
  """One row per (n, solver); residual histories in the metadata."""
  devices = config.devices or len(jax.local_devices())
  mesh = kernels.row_mesh(devices)
  rows = []
  bandwidth = config.bandwidth
  for n in config.sizes:
    d = kernel_data.procedural(n, in_dim=config.in_dim)
    if bandwidth is None:
      bandwidth = kernel_data.median_distance(
          d.x, ord=kernels.get_kernel(config.kernel).distance_ord)
    for solver in SOLVERS:
      if solver != 'exact' or n <= config.exact_max:
        rows.append(solve(config, d, solver, bandwidth, mesh))
  histories = ('residuals', 'checked_at', 'checked')
  columns = {k: np.array([r[k] for r in rows]) for k in rows[0]
             if k not in histories}
  # Provenance's device list; 'devices' here: the count the study used.
  return results_lib.Results(columns, provenance.provenance() | dict(
      study='linear_solver', config=dataclasses.asdict(config),
      bandwidth=bandwidth, devices=devices, residuals=[
          {k: r[k] for k in ('n', 'solver', 'residual', *histories)}
          for r in rows if r['solver'] != 'exact']))


# What a NaN residual (exact: NaN coefficients) means, per solver.
FAILURES = {'exact': 'Cholesky failed (NaN)',
            'falkon': 'FALKON\'s Cholesky failed (NaN)',
            'cg': 'CG broke down (NaN)'}


def iterations_to(history: dict, target: float) -> int | None:
  """The first checkpoint (``checked_at``; the last iteration, whose
  residual is ``residual``, too) at which a solve's Nyström residual,
  recomputed, was at most ``target``; None if none."""
  points = [*zip(history['checked_at'], history['checked']),
            (len(history['residuals']) - 1, history['residual'])]
  return next((i for i, r in sorted(points) if r <= target), None)


def _ratio(cfg: dict, falkon: dict, cg: dict) -> str:
  """Plain CG's iterations over FALKON's to the larger of tol and their
  final Nyström residuals, which both reached: the same measure for both."""
  n = falkon['n']
  failed = [FAILURES[h['solver']] for h in (falkon, cg)
            if not np.isfinite(h['residual'])]
  if failed:
    return f'n={n}: none ({", ".join(failed)})'
  target = max(cfg['tol'], falkon['residual'], cg['residual'])
  cg_it, falkon_it = (iterations_to(h, target) for h in (cg, falkon))
  ratio = (f'{cg_it / falkon_it:.1f}x' if falkon_it else
           'no ratio (FALKON started there)')
  missed = [name for name, h in (('FALKON', falkon), ('plain CG', cg))
            if h['residual'] > cfg['tol']]
  return (f'n={n}: {ratio} ({cg_it} / {falkon_it} to {target:.1e}'
          + ''.join(f'; {name} did not converge' for name in missed) + ')')


def report(res: results_lib.Results) -> str:
  """The table, and how many times fewer iterations FALKON took to the same
  Nyström residual."""
  meta, c = res.metadata, res.columns
  cfg = meta['config']
  lines = [f'{cfg["kernel"]} kernel, {cfg["dtype"]}, bandwidth '
           f'{meta["bandwidth"]:.4g}, lam '
           f'{cfg["lam"]:g}, M={cfg["centres"]} centres, tol {cfg["tol"]:g}, '
           f'maxiter {cfg["maxiter"]}; rows sharded over {meta["devices"]} '
           'device(s)',
           f'{"n":>8} {"solver":<8}{"iterations":>11}{"residual":>10}'
           f'{"converged":>10}{"compile_s":>10}{"run_s":>8}{"peak_MB":>9}'
           f'{"test_mse":>10}{"gap":>10}']
  failed = ~np.isfinite(c['residual']) | ((c['solver'] == 'exact')
                                          & ~c['converged'])

  def converged(i):  # a direct solve has no tolerance to reach
    return ('-' if c['solver'][i] == 'exact' and not failed[i] else
            str(bool(c['converged'][i])))
  for i in range(len(res)):
    lines.append(f'{c["n"][i]:>8} {c["solver"][i]:<8}{c["iterations"][i]:>11}'
                 f'{c["residual"][i]:>10.1e}{converged(i):>10}'
                 f'{c["compile_s"][i]:>10.2f}{c["run_s"][i]:>8.2f}'
                 f'{c["peak_mb"][i]:>9.1f}{c["test_mse"][i]:>10.5f}'
                 f'{stats.number(c["gap"][i], ".2e"):>10}'
                 + (f'  {FAILURES[c["solver"][i]]}' if failed[i] else ''))
  by = {(h['n'], h['solver']): h for h in meta['residuals']}
  lines.append(
      'plain CG iterations / FALKON iterations until the Nyström system\'s '
      'residual, recomputed (every iteration to '
      f'{DENSE}, then {100 / DENSE:.0f}% apart), first reached the larger of '
      'tol and both final residuals: ' + ', '.join(
          _ratio(cfg, by[(n, 'falkon')], by[(n, 'cg')])
          for n in cfg['sizes']))
  stalled = ((c['iterations'] < cfg['maxiter']) & ~c['converged']
             & (c['solver'] != 'exact') & ~failed)
  if stalled.any():
    lines.append(
        'the recurrence\'s residual reached tol but the Nyström system\'s '
        'did not (' + ', '.join(f'{c["solver"][i]} n={c["n"][i]}: '
                            f'{c["residual"][i]:.1e}'
                            for i in np.flatnonzero(stalled))
        + f'): {cfg["dtype"]} CG stalls there on this system ('
        + ('in float32 more iterations lowered neither it nor the test error '
           'in WORKSPACE.md\'s probe; --dtype=float64 reaches it'
           if cfg['dtype'] == 'float32' else
           'float64 is the widest arithmetic here: loosen --tol')
        + '); gap shows how far the predictions are')
  lines.append('(residual: the Nyström system\'s ||K_nM^T y/n - H a|| / '
               '||K_nM^T y/n||, recomputed at the end, for both solvers; '
               'exact: Cholesky of the n x n system, residual ||y - (K + n '
               'lam I) c|| / ||y||, converged: - (a direct solve, no '
               'tolerance), False where it failed; '
               'peak_MB: XLA\'s estimate for the compiled solve; gap: '
               'relative distance of the test predictions from the float64 '
               'solution of the same Nyström system)')
  return '\n'.join(lines)


def plot(res: results_lib.Results, path: str) -> None:
  """Relative residual vs iteration, per n and solver (log scale): the
  recurrence's of the system CG runs on (lines) and the Nyström system's,
  recomputed at the checkpoints (small dots) and at the end (dots)."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from rahimi_jax import plots  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4))
  colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
  sizes = res.metadata['config']['sizes']
  for h in res.metadata['residuals']:
    color = colors[sizes.index(h['n']) % len(colors)]
    ax.semilogy(h['residuals'], '-' if h['solver'] == 'falkon' else ':',
                color=color, label=f'n={h["n"]} {h["solver"]}')
    ax.plot(h['checked_at'], h['checked'], '.', color=color, ms=2)
    ax.plot(len(h['residuals']) - 1, h['residual'], 'o', color=color, ms=4)
  ax.axhline(res.metadata['config']['tol'], color='k', lw=0.5)
  ax.set_xlabel('iteration')
  ax.set_xscale('symlog', linthresh=10)
  last = max(len(h['residuals']) for h in res.metadata['residuals']) - 1
  ax.set_xlim(0, 1.25 * last)  # the dots at the last iteration in view
  ax.set_ylabel('relative residual\n(line: CG\'s recurrence, its system; '
                'dots: H a = r, recomputed)')
  ax.set_title('FALKON (solid: B^T H B b = B^T r) vs plain CG (dotted: H a = r)')
  ax.legend(fontsize=7, ncol=2)
  plots.save_figure(fig, path)
