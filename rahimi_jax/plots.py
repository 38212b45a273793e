"""Plots written as PNG files (matplotlib, no display needed)."""

import os
import tempfile

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from rahimi_jax import grid as grid_lib
from rahimi_jax import results as results_lib


def save_figure(fig, path: str) -> None:
  """Saves ``fig`` to ``path`` atomically and closes it."""
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=directory, suffix='.png', prefix='.plot')
  os.close(fd)
  try:
    fig.savefig(tmp, dpi=120, bbox_inches='tight')
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  finally:
    plt.close(fig)
    if os.path.exists(tmp):
      os.remove(tmp)


def curves(results: results_lib.Results, metric: str, path: str, *,
           by: str | None = None, log_y: bool = True,
           title: str | None = None, level: float = 0.95) -> None:
  """Learning curves with interval bands over seeds.

  One line per configuration (all axes but the seed), or with ``by`` one line
  per value of that axis, each seed averaging the members that share it. The
  line is the mean over seeds (geometric on a log axis) and the band its
  ``level`` interval (``stats.mean_ci``; in the metric's range); NaN
  (diverged) points are left out.
  """
  from rahimi_jax import stats  # pylint: disable=g-import-not-at-top
  if by is None:
    groups = {', '.join(f'{k}={v:g}' if isinstance(v, float) else f'{k}={v}'
                        for k, v in config): rows
              for config, rows in results.configs().items()}
  else:
    if by not in results.columns:
      raise ValueError(f'by: no axis {by!r}; axes: {", ".join(results.axes)}.')
    groups = {f'{by}={v:g}' if isinstance(v, float) else f'{by}={v}':
              results.where(**{by: v}) for v in results.metadata['axes'][by]}
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for label, rows in groups.items():
    steps = np.unique(rows.columns['step'])
    per_seed = []
    for s in np.unique(rows.columns[grid_lib.SEED]):
      at = rows.where(seed=s).columns
      values = np.asarray([stats.finite_mean(at[metric][at['step'] == t])
                           for t in steps])
      per_seed.append(values)
    values = np.stack(per_seed)
    if log_y:
      values = np.log10(np.where(values > 0, values, np.nan))
    bounds = (-np.inf, np.inf) if log_y else stats.metric_range(metric)
    intervals = [stats.mean_ci(values[:, j], level, bounds=bounds)
                 for j in range(len(steps))]
    mean, low, high = (np.asarray([getattr(i, f) for i in intervals])
                       for f in ('mean', 'low', 'high'))
    if log_y:
      mean, low, high = 10**mean, 10**low, 10**high
    line, = ax.plot(steps, mean, label=label)
    ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2)
  if log_y:
    ax.set_yscale('log')
  ax.set_xlabel('step')
  ax.set_ylabel(metric)
  ax.set_title(title or f'{metric}: mean over seeds, {level:.0%} interval')
  ax.legend(fontsize=7, loc='best')
  ax.grid(True, which='both', alpha=0.3)
  save_figure(fig, path)


def spectrum(eigenvalues: np.ndarray, path: str, *, title: str) -> None:
  """Histogram of ``log10 |lambda|`` of Hessian eigenvalues, signs split."""
  eigenvalues = np.asarray(eigenvalues)
  fig, ax = plt.subplots(figsize=(7, 4))
  mags = np.log10(np.maximum(np.abs(eigenvalues), 1e-300))
  bins = np.linspace(max(mags.min(), -20) - 0.5, mags.max() + 0.5, 40)
  ax.hist([np.clip(mags[eigenvalues > 0], bins[0], None),
           np.clip(mags[eigenvalues <= 0], bins[0], None)],
          bins=bins, stacked=True, label=['λ > 0', 'λ ≤ 0'])
  ax.set_xlabel('log10 |eigenvalue|')
  ax.set_ylabel('count')
  ax.set_title(title)
  ax.legend()
  save_figure(fig, path)


def contributions(rows, path: str, *, title: str) -> None:
  """Bars of Shapley (grid) and Aumann–Shapley (gates) with intervals."""
  fig, ax = plt.subplots(figsize=(7, 0.6 + 0.8 * len(rows)))
  y = np.arange(len(rows))
  for offset, key, label in ((-0.18, 'shapley', 'Shapley (grid)'),
                             (0.18, 'aumann_shapley', 'Aumann–Shapley (gates)')):
    means = np.asarray([r[key].mean for r in rows])
    err = np.abs(np.asarray([[r[key].low, r[key].high] for r in rows]).T - means)
    ax.barh(y + offset, means, height=0.34, xerr=np.nan_to_num(err),
            label=label, capsize=3)
  ax.set_yticks(y, [r['component'] for r in rows])
  ax.axvline(0, color='black', lw=0.8)
  ax.set_xlabel('contribution (95% interval over seeds)')
  ax.set_title(title)
  ax.legend(fontsize=8)
  save_figure(fig, path)


def interactions(names, anova, path: str, *, title: str) -> None:
  """Heatmap: main effects on the diagonal, two-way interactions off it."""
  n = len(names)
  grid = np.full((n, n), np.nan)
  for i, a in enumerate(names):
    grid[i, i] = anova[a].mean
    for j, b in enumerate(names):
      if (a, b) in anova:
        grid[i, j] = grid[j, i] = anova[(a, b)].mean
  fig, ax = plt.subplots(figsize=(1.5 + 1.2 * n, 1.2 + 1.0 * n))
  bound = np.nanmax(np.abs(grid)) or 1.0
  image = ax.imshow(grid, cmap='RdBu_r', vmin=-bound, vmax=bound)
  for i in range(n):
    for j in range(n):
      ax.text(j, i, f'{grid[i, j]:+.3g}', ha='center', va='center', fontsize=8)
  ax.set_xticks(range(n), names)
  ax.set_yticks(range(n), names)
  fig.colorbar(image, ax=ax)
  ax.set_title(title)
  save_figure(fig, path)
