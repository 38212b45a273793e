"""Random features for large-scale kernel machines (Rahimi & Recht, 2007).

On one bundled dataset: how fast random Fourier features approximate the
kernel (relative Frobenius error of ``Phi Phi^T`` against ``K`` on a fixed
subset, with the fitted log-log slope: ``-1/2`` is the Monte Carlo rate), and
what that costs in test accuracy (or error) against exact kernel ridge
regression; Nyström features beside them, and for the Laplacian kernel random
binning features (``kernels.binning``: ``features`` counts grids, each hashed
to ``BUCKETS`` columns); scikit-learn's ``RBFSampler`` /
``Nystroem`` + ``Ridge`` and ``KernelRidge`` on the same data and
hyperparameters, timed in the same process.

One program per number of features (or centres), vmapped over the seeds.
The library can also sweep the number of features inside one program
(``kernels.rff_features``' traced ``num_features`` masks a draw at the
largest size; ``kernels.nystrom``'s ``num_centres`` likewise), but then
every member costs the largest size: on digits with 16..1024 features x 3
seeds, the masked random Fourier sweep ran 10.3 s against scikit-learn's
loop of 0.4 s (whose cost grows like the sum of D^2, not 7 x 1024^2), and
the masked Nyström sweep 43 s, its eigendecompositions all at M = 1024
(2 cores shared with other jobs).
"""

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from rahimi_jax import data as data_lib
from rahimi_jax import kernels
from rahimi_jax import provenance
from rahimi_jax import results as results_lib
from rahimi_jax.solvers import kernel_ridge as kr
from rahimi_jax.studies import kernel_data

METHODS = ('exact', 'rff', 'nystrom', 'binning', 'sklearn_exact',
           'sklearn_rff', 'sklearn_nystrom')
APPROXIMATIONS = ('rff', 'nystrom', 'binning', 'sklearn_rff',
                  'sklearn_nystrom')
BUCKETS = 8  # hashed columns per random binning grid


@dataclasses.dataclass(frozen=True)
class RandomFeaturesConfig:
  """The random features study.

  Attributes:
    dataset: a bundled dataset (``data.DATASETS``).
    kernel: ``kernels.KERNELS``.
    features: numbers of random features (and Nyström centres), increasing.
    bandwidth: the kernel's; None: the median pairwise distance in the
      kernel's norm (``Kernel.distance_ord``).
    lam: ridge per sample (scikit-learn's ``alpha = n * lam``).
    seeds: feature draws per number of features.
    approx_points: training rows on which ``K`` is approximated.
    train_size: keep this many training rows (0: all).
    peers: also run scikit-learn's.
  """
  dataset: str = 'digits'
  kernel: str = 'gaussian'
  features: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024)
  bandwidth: float | None = None
  lam: float = 1e-4
  seeds: int = 3
  approx_points: int = 500
  train_size: int = 0
  peers: bool = True

  def __post_init__(self):
    data_lib.get_dataset(self.dataset)
    kernels.get_kernel(self.kernel)
    f = self.features
    if (not f or any(not isinstance(d, int) or d < 1 for d in f)
        or list(f) != sorted(set(f))):
      raise ValueError(f'features={list(f)}; accepted: increasing integers '
                       '>= 1.')
    if len(f) < 2:
      raise ValueError(f'features={list(f)}; accepted: at least two sizes '
                       '(for the slope).')
    if self.bandwidth is not None:
      kernels.check_positive('bandwidth', self.bandwidth)
    kernels.check_positive('lam', self.lam)
    for name in ('seeds', 'approx_points'):
      value = getattr(self, name)
      if not (isinstance(value, int) and value >= (1 if name == 'seeds'
                                                   else 2)):
        raise ValueError(f'{name}={value!r}; accepted: an integer >= '
                         f'{1 if name == "seeds" else 2}.')

  def data(self) -> kernel_data.KernelData:
    """The data, checked against the sizes (before anything compiles)."""
    d = kernel_data.load(self.dataset, self.train_size)
    n = len(d.x)
    if self.features[-1] > n:
      raise ValueError(f'features (Nyström centres M) up to '
                       f'{self.features[-1]} with n={n} training rows; '
                       'accepted: M <= n.')
    if self.approx_points > n:
      raise ValueError(f'approx_points={self.approx_points} with n={n} '
                       'training rows; accepted: <= n.')
    return d


def _ours(config, d, bandwidth):
  kernel = kernels.get_kernel(config.kernel)
  x, y, x_test = jnp.asarray(d.x), jnp.asarray(d.y), jnp.asarray(d.x_test)
  sub = x[:config.approx_points]
  k_sub = kernels.kernel_matrix(kernel, sub, sub, bandwidth)
  keys = jax.random.split(jax.random.key(0), config.seeds)
  rows, timings = [], []

  def exact(x, y, x_test):
    coef = kr.exact_fit(kernel, x, y, bandwidth, config.lam)
    return kernels.kernel_matvec(kernel, x_test, x, coef, bandwidth)
  pred, c, r, _ = kernel_data.timed_jit(exact, x, y, x_test)
  rows.append(('exact', 0, 0, 0.0, pred))
  timings.append(('exact', 1, c, r))

  def rff(keys, size):
    def member(key):
      r = kernels.draw_rff(key, kernel, x.shape[1], size)
      w = kr.ridge_fit(kernels.rff_features(r, x, bandwidth), y, config.lam)
      err = kernels.relative_frobenius_error(
          k_sub, kernels.rff_kernel(r, sub, sub, bandwidth))
      return kernels.rff_features(r, x_test, bandwidth) @ w, err
    return jax.vmap(member)(keys)

  def nystrom(keys, size):
    def member(key):
      c = x[kernels.choose_centres(key, x.shape[0], size)]
      nys = kernels.nystrom(kernel, c, bandwidth)
      w = kr.ridge_fit(kernels.nystrom_apply(kernel, nys, x, bandwidth), y,
                       config.lam)
      phi = kernels.nystrom_apply(kernel, nys, sub, bandwidth)
      err = kernels.relative_frobenius_error(k_sub, phi @ phi.T)
      return kernels.nystrom_apply(kernel, nys, x_test, bandwidth) @ w, err
    return jax.vmap(member)(keys)

  def binning(keys, size):  # size grids, BUCKETS hashed columns each
    def member(key):
      b = kernels.draw_binning(key, x.shape[1], size)
      w = kr.ridge_fit(kernels.binning_features(b, x, bandwidth,
                                                buckets=BUCKETS), y, config.lam)
      # The kernel the ridge fits: the hashed features' z z^T (their
      # collisions included), not the unhashed shared-bin fraction.
      z_sub = kernels.binning_features(b, sub, bandwidth, buckets=BUCKETS)
      err = kernels.relative_frobenius_error(k_sub, z_sub @ z_sub.T)
      return kernels.binning_features(b, x_test, bandwidth,
                                      buckets=BUCKETS) @ w, err
    return jax.vmap(member)(keys)

  methods = [('rff', rff), ('nystrom', nystrom)]
  if config.kernel == 'laplacian':  # random binning estimates the Laplacian
    methods.append(('binning', binning))
  for method, fn in methods:
    compile_s = run_s = 0.0
    for size in config.features:
      (preds, errs), c, r, _ = kernel_data.timed_jit(
          functools.partial(fn, size=size), keys)
      compile_s, run_s = compile_s + c, run_s + r
      for s in range(config.seeds):
        rows.append((method, size, s, float(errs[s]), preds[s]))
    timings.append((method, config.seeds * len(config.features), compile_s,
                    run_s))
  return rows, timings, np.asarray(k_sub, np.float64)


def _peers(config, d, bandwidth, k_sub):
  """scikit-learn's estimators at the same hyperparameters, each timed."""
  from sklearn import kernel_approximation  # pylint: disable=g-import-not-at-top
  from sklearn import kernel_ridge  # pylint: disable=g-import-not-at-top
  from sklearn import linear_model  # pylint: disable=g-import-not-at-top
  n = len(d.x)
  gamma = kernels.sklearn_gamma(config.kernel, bandwidth)
  sk_kernel = kernels.get_kernel(config.kernel).sklearn_name
  sub = d.x[:config.approx_points]
  rows, timings = [], []
  start = time.perf_counter()
  model = kernel_ridge.KernelRidge(alpha=n * config.lam, kernel=sk_kernel,
                                   gamma=gamma).fit(d.x, d.y)
  rows.append(('sklearn_exact', 0, 0, 0.0, model.predict(d.x_test)))
  timings.append(('sklearn_exact', 1, 0.0, time.perf_counter() - start))
  samplers = {'sklearn_nystrom': lambda size, seed: (
      kernel_approximation.Nystroem(kernel=sk_kernel, gamma=gamma,
                                    n_components=size, random_state=seed))}
  if config.kernel == 'gaussian':  # scikit-learn samples the RBF kernel only
    samplers['sklearn_rff'] = lambda size, seed: (
        kernel_approximation.RBFSampler(gamma=gamma, n_components=size,
                                        random_state=seed))
  for method, make in samplers.items():
    total = 0.0
    for size in config.features:
      for seed in range(config.seeds):
        start = time.perf_counter()
        f = make(size, seed).fit(d.x)
        ridge = linear_model.Ridge(alpha=n * config.lam, fit_intercept=False
                                   ).fit(f.transform(d.x), d.y)
        pred = ridge.predict(f.transform(d.x_test))
        # Timed with the error, as ours computes it in its timed program.
        phi = f.transform(sub)
        err = np.linalg.norm(k_sub - phi @ phi.T) / np.linalg.norm(k_sub)
        total += time.perf_counter() - start
        rows.append((method, size, seed, float(err), pred))
    timings.append((method, config.seeds * len(config.features), 0.0, total))
  return rows, timings


def slope(features, errors) -> float:
  """Least-squares slope of log(error) against log(features)."""
  return float(np.polyfit(np.log(features), np.log(errors), 1)[0])


def run(config: RandomFeaturesConfig) -> results_lib.Results:
  """Runs the study: one row per (method, features, seed)."""
  d = config.data()
  bandwidth = (config.bandwidth if config.bandwidth is not None
               else kernel_data.median_distance(
                   d.x, ord=kernels.get_kernel(config.kernel).distance_ord))
  rows, timings, k_sub = _ours(config, d, bandwidth)
  if config.peers:
    more_rows, more_timings = _peers(config, d, bandwidth, k_sub)
    rows, timings = rows + more_rows, timings + more_timings
  metric = kernel_data.metric_name(d.task)
  columns = {
      'method': np.array([r[0] for r in rows]),
      'features': np.array([r[1] for r in rows], np.int64),
      'seed': np.array([r[2] for r in rows], np.int64),
      'approx_error': np.array([r[3] if r[1] else np.nan for r in rows]),
      metric: np.array([kernel_data.score(d.task, r[4], d.y_test)
                        for r in rows]),
  }
  res = results_lib.Results(columns, {})
  slopes = {}
  for method in APPROXIMATIONS:
    sel = res.where(method=method)
    if len(sel):
      slopes[method] = slope(config.features, [
          np.mean(sel.columns['approx_error'][sel.columns['features'] == f])
          for f in config.features])
  # Provenance's device list; 'devices' here: the count the study used.
  res.metadata.update(provenance.provenance())
  res.metadata.update(
      study='random_features', config=dataclasses.asdict(config),
      bandwidth=bandwidth, metric=metric, n_train=len(d.x),
      n_test=len(d.x_test), slopes=slopes, devices=len(jax.devices()),
      blas_threads=_blas_threads(),
      timings=[dict(method=m, fits=f, compile_s=c, run_s=r)
               for m, f, c, r in timings])
  return res


def _blas_threads() -> int | None:
  """The most threads a BLAS library loaded in this process runs on
  (NumPy's and scipy's OpenBLAS: scikit-learn's products and solves, and
  jaxlib's CPU LAPACK calls, our Choleskys), or None where threadpoolctl
  finds none."""
  import threadpoolctl  # pylint: disable=g-import-not-at-top
  threads = [i['num_threads'] for i in threadpoolctl.threadpool_info()
             if i['user_api'] == 'blas']
  return max(threads) if threads else None


def _mean_sd(values) -> str:
  """Mean ± the sample standard deviation (``ddof=1``; ``ddof=0`` read
  13% narrow at 4 seeds); how many failed where any is NaN (a ridge's
  Cholesky factorization failed: no score)."""
  failed = int(np.sum(np.isnan(values)))
  if failed:
    return f'{failed}/{len(values)} Cholesky failed'
  sd = np.std(values, ddof=1) if len(values) > 1 else np.nan
  return f'{np.mean(values):.4f} ± {sd:.4f}'


def report(res: results_lib.Results) -> str:
  """Tables: approximation error and test metric per number of features,
  the fitted slopes, and the timings."""
  meta, metric = res.metadata, res.metadata['metric']
  features = meta['config']['features']
  methods = [m for m in APPROXIMATIONS if len(res.where(method=m))]
  lines = [f'{meta["config"]["dataset"]}: n={meta["n_train"]} train, '
           f'{meta["n_test"]} test; {meta["config"]["kernel"]} kernel, '
           f'bandwidth {meta["bandwidth"]:.4g}, lam {meta["config"]["lam"]:g}; '
           f'mean ± sd over {meta["config"]["seeds"]} seeds']
  if 'binning' in methods:
    lines.append(f'(binning: "features" counts random grids, each hashed to '
                 f'{BUCKETS} columns, its error that of the hashed features\' '
                 'kernel, which the ridge fits; Nyström: centres)')
  for column, title in (('approx_error', 'relative Frobenius error of the '
                         'approximate kernel'), (metric, metric)):
    lines += ['', f'{title}:',
              f'{"features":>9}' + ''.join(f'{m:>22}' for m in methods)]
    for f in features:
      cells = [_mean_sd(res.where(method=m, features=f).columns[column])
               for m in methods]
      lines.append(f'{f:>9}' + ''.join(f'{c:>22}' for c in cells))
  for m in ('exact', 'sklearn_exact'):
    if len(res.where(method=m)):
      value = res.where(method=m).columns[metric][0]
      lines.append(f'{m} kernel ridge {metric}: ' + (
          f'{value:.4f}' if np.isfinite(value) else 'Cholesky failed (NaN), '
          'no score (try a larger lam)'))
  lines += ['', 'log-log slope of the approximation error vs features '
            '(Monte Carlo rate: -0.5): ' + ', '.join(
                f'{m} {s:+.3f}' for m, s in meta['slopes'].items()),
            '', f'{"method":<16}{"fits":>6}{"compile_s":>11}{"run_s":>9}']
  for t in meta['timings']:
    lines.append(f'{t["method"]:<16}{t["fits"]:>6}{t["compile_s"]:>11.2f}'
                 f'{t["run_s"]:>9.2f}')
  threads = meta.get('blas_threads')
  lines.append('(ours: one program per size, vmapped over seeds; '
               'run timed after compile; scikit-learn: fit + predict, summed; '
               'both timings include the approximation error'
               + (f'; OpenBLAS, scikit-learn\'s and our LAPACK calls\', on '
                  f'{threads} thread(s): small fits can run faster on one, '
                  'benchmarks.kernel_solvers times both settings'
                  if threads else '') + ')')
  return '\n'.join(lines)


def plot(res: results_lib.Results, directory: str) -> list[str]:
  """``approx_error.png`` (log-log, with a D^-1/2 reference) and
  ``<metric>.png`` vs number of features."""
  import os  # pylint: disable=g-import-not-at-top
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from rahimi_jax import plots  # pylint: disable=g-import-not-at-top
  meta, metric = res.metadata, res.metadata['metric']
  features = np.asarray(meta['config']['features'])
  names = []
  for column in ('approx_error', metric):
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in APPROXIMATIONS:
      sel = res.where(method=m)
      if len(sel):
        means = [np.mean(sel.where(features=f).columns[column])
                 for f in features]
        label = m + (f' (slope {meta["slopes"][m]:+.2f})'
                     if column == 'approx_error' else '')
        ax.plot(features, means, 'o-', label=label)
    if column == 'approx_error':
      first = np.mean(res.where(method='rff', features=features[0]
                                ).columns[column])
      ax.plot(features, first * np.sqrt(features[0] / features), 'k:',
              label='D^-1/2')
      ax.set_yscale('log')
    else:
      for m, style in (('exact', 'k--'), ('sklearn_exact', 'k:')):
        if len(res.where(method=m)):
          ax.axhline(res.where(method=m).columns[metric][0], ls=style[1:],
                     color='k', label=f'{m} KRR')
    ax.set_xscale('log')
    ax.set_xlabel('number of features D (Nyström: centres M; binning: '
                  f'grids, {BUCKETS} columns each)')
    ax.set_ylabel(column)
    ax.set_title(f'{meta["config"]["dataset"]}, {meta["config"]["kernel"]} '
                 f'kernel: mean over {meta["config"]["seeds"]} seeds')
    ax.legend(fontsize=8)
    names.append(f'{column}.png')
    plots.save_figure(fig, os.path.join(directory, names[-1]))
  return names

