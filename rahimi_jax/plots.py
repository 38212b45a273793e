"""Plots written as PNG files (matplotlib, no display needed)."""

from collections.abc import Callable
import os
import tempfile
from typing import Any

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from rahimi_jax import grid as grid_lib
from rahimi_jax import results as results_lib

# The top of a log axis: matplotlib's log locator overflows (OverflowError in
# savefig) once a log axis reaches past about 1e250, and silently shows (1,
# 10) past about 1e300; a diverging float64 run's loss gets there before it
# turns non-finite. Values above it are drawn at the edge and counted.
LOG_TOP = 1e200


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
           title: str | None = None, level: float = 0.95,
           label_of: Callable[[dict[str, Any]], str | None] | None = None
           ) -> None:
  """Learning curves with interval bands over seeds.

  One line per configuration (all axes but the seed; labelled by the axes
  that differ between lines, a line alone by the design's varied axes, or
  ``label_of(config)`` where it returns a label), or with ``by`` one line
  per value of that axis, each seed averaging the members that share it. The
  line is the mean over seeds and the band its ``level`` interval
  (``stats.mean_ci``; in the metric's range); on a log axis the geometric
  mean and its interval (``mean_ci`` of the logs), as the title says, and a
  step where a seed's value is <= 0 (a geometric mean of 0) is not drawn.
  NaN (diverged) points are left out, and the legend counts a line's members
  that diverged (its mean is over the others from then on), and says where a
  line has no band (one seed).
  """
  from rahimi_jax import stats  # pylint: disable=g-import-not-at-top
  if by is None:
    configs = results.configs()
    # Label by the axes that differ between the lines.
    varied = {k for k, v in set().union(*configs) if any(
        dict(c)[k] != v for c in configs)} or set(results.varied_axes)
    labels = [(label_of and label_of(dict(config))) or ', '.join(
        f'{k}={results_lib.value_label(v)}' for k, v in config if k in varied)
        or 'all' for config in configs]
    if len(set(labels)) < len(labels):
      raise ValueError(f'curves: lines labelled alike: {labels}.')
    groups = dict(zip(labels, configs.values()))
  else:
    if by not in results.columns:
      raise ValueError(f'by: no axis {by!r}; axes: {", ".join(results.axes)}.')
    groups = {f'{by}={results_lib.value_label(v)}': results.where(**{by: v})
              for v in results.metadata['axes'][by]}
  fig, ax = plt.subplots(figsize=(7, 4.5))
  past_top, lowest = False, np.inf  # a log axis's view, when past LOG_TOP
  for label, rows in groups.items():
    diverged, non_finite = results_lib.left_out(rows.final().columns, metric)
    if diverged.any():
      label += f' ({np.sum(diverged)}/{len(diverged)} diverged)'
    if non_finite.any():
      label += f' ({np.sum(non_finite)}/{len(diverged)} finished, non-finite)'
    step, seed = rows.columns['step'], rows.columns[grid_lib.SEED]
    steps, seeds = np.unique(step), np.unique(seed)
    # [seeds, steps]: each seed's mean over its members with a finite value.
    values = np.stack([results_lib.seed_means(rows.columns[metric][step == t],
                                              seed[step == t], seeds)
                       for t in steps], axis=1)
    if len(values) < 2:
      label += f' ({len(values)} seed: no interval)'
    if log_y:
      # A seed value <= 0 makes that step's geometric mean 0: not drawable.
      zero = np.any(np.isfinite(values) & (values <= 0), axis=0)
      if zero.any():
        label += f' ({zero.sum()} steps with a seed value <= 0 not drawn)'
      values = np.log10(np.where(values > 0, values, np.nan))
      values[:, zero] = np.nan
    bounds = (-np.inf, np.inf) if log_y else stats.metric_range(metric)
    intervals = [stats.mean_ci(values[:, j], level, bounds=bounds)
                 for j in range(len(steps))]
    mean, low, high = (np.asarray([getattr(i, f) for i in intervals])
                       for f in ('mean', 'low', 'high'))
    if log_y:
      with np.errstate(over='ignore'):  # past float64's range: inf
        mean, low, high = 10**mean, 10**low, 10**high
      above = (mean > LOG_TOP) | (high > LOG_TOP)
      if above.any():
        label += (f' ({above.sum()} steps past {LOG_TOP:.0e}: at the top '
                  'edge)')
      low, high = np.minimum(low, LOG_TOP), np.minimum(high, LOG_TOP)
      past_top |= bool(above.any())
      drawn = np.concatenate([mean, low])
      drawn = drawn[np.isfinite(drawn) & (drawn > 0)]
      lowest = min(lowest, drawn.min(initial=np.inf))
    line, = ax.plot(steps, mean, label=label,
                    marker='o' if len(steps) == 1 else None)
    if np.isfinite(low).any():
      ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2)
  if log_y:
    ax.set_yscale('log')
    if past_top:  # matplotlib's own view would overflow or miss the lines
      ax.set_ylim(max(min(lowest, LOG_TOP) / 2, 1e-300), LOG_TOP)
  ax.set_xlabel('step')
  ax.set_ylabel(metric + (' (log scale)' if log_y else ''))
  ax.set_title(title or f'{metric}' + (f' by {by}, other axes averaged' if by
                                        else '') + ': ' + mean_words(log_y, level))
  ax.legend(fontsize=7, loc='best')
  ax.grid(True, which='both', alpha=0.3)
  save_figure(fig, path)


def mean_words(log_y: bool, level: float = 0.95) -> str:
  """What ``curves`` draws, for a title: the mean, or on a log axis the
  geometric mean, over seeds, and its interval."""
  return (f'{"geometric mean" if log_y else "mean"} over seeds, '
          f'{results_lib.percent(level)} interval')


def effects(results: results_lib.Results, metric: str, path: str, *,
            level: float = 0.95, title: str | None = None) -> None:
  """Points and intervals of ``Results.effects``: each value vs baseline.

  One row per ``Results.effects`` row (every value of every varied axis): the
  paired effect on the final ``metric`` against the axis's first value, a
  point at its mean over seeds and a bar over its
  ``level`` interval. A bar is green where its Bonferroni-adjusted interval
  (level ``1 - (1 - level) / rows``, ``stats.bonferroni``) is on the better
  side of zero, red on the worse, grey across it: with several rows, a bar
  whose own interval misses zero by chance is otherwise likely (with six and
  no effect, one design in six had one, 15.7% simulated: fewer than six
  independent 95% intervals would give, 26%, as they share their baselines).
  The right margin gives P(better) and the
  pairs dropped because a run diverged.

  Raises:
    ValueError: no axis but the seed has two or more values.
  """
  from rahimi_jax import stats  # pylint: disable=g-import-not-at-top
  rows = results.effects(metric, level)  # (axis, baseline, Effect)
  if not rows:
    raise ValueError('effects: no axis but the seed has two or more values.')
  # Colours: by each row's interval at the Bonferroni-adjusted level.
  adjusted = stats.bonferroni(level, len(rows))
  adjusted_cis = [e.interval for _, _, e in results.effects(metric, adjusted)]
  sign = 1.0 if stats.higher_is_better(metric) else -1.0
  fig, ax = plt.subplots(figsize=(7, 1.2 + 0.45 * len(rows)))
  y = -np.arange(len(rows))  # the first row on top
  for yi, (axis, _, e), wide in zip(y, rows, adjusted_cis):
    ci = e.interval
    low, high = sorted((sign * wide.low, sign * wide.high))
    color = ('tab:green' if low > 0 else 'tab:red' if high < 0 else 'tab:gray')
    if np.isfinite(ci.low) and np.isfinite(ci.high):
      ax.plot([ci.low, ci.high], [yi, yi], color=color, lw=2)
    ax.plot([ci.mean], [yi], 'o', color=color)
    note = f'P(better) {e.p_better:.2f}' if np.isfinite(e.p_better) else ''
    if e.dropped:
      note += (f'; {e.dropped}/{e.pairs} pairs dropped (a run diverged or '
               'non-finite)')
    if not np.isfinite(ci.low):
      note += f'; no interval ({ci.n} seed{"s" * (ci.n != 1)})'
    ax.annotate(note, (1.01, yi), xycoords=('axes fraction', 'data'),
                va='center', fontsize=7)
  for i in range(1, len(rows)):
    if rows[i][0] != rows[i - 1][0]:  # a line between axes
      ax.axhline(y[i] + 0.5, color='black', lw=0.5, alpha=0.4)
  label = results_lib.value_label
  ax.set_yticks(y, [f'{axis}: {label(e.value)} - {label(base)}'
                    for axis, base, e in rows])
  ax.set_ylim(y[-1] - 0.6, 0.6)
  ax.axvline(0, color='black', lw=0.8)
  better = 'higher' if sign > 0 else 'lower'
  colours = ('coloured where it excludes 0' if len(rows) == 1 else
             'coloured where the Bonferroni-adjusted '
             f'{results_lib.percent(adjusted)} interval ({len(rows)} '
             'comparisons) excludes 0')
  ax.set_xlabel(f'effect on final {metric} (value - baseline; {better} is '
                f'better), {results_lib.percent(level)} paired interval over '
                f'seeds;\n{colours}')
  ax.set_title(title or f'paired effect on final {metric} vs each axis\'s '
               'first value')
  ax.grid(True, axis='x', alpha=0.3)
  save_figure(fig, path)


def spectrum(eigenvalues: np.ndarray, path: str, *, title: str) -> None:
  """Histogram of ``log10 |lambda|`` of Hessian eigenvalues, signs split;
  magnitudes below the first bin (exact zeros too) are counted in it, and
  the axis label says how many."""
  eigenvalues = np.asarray(eigenvalues)
  fig, ax = plt.subplots(figsize=(7, 4))
  mags = np.log10(np.maximum(np.abs(eigenvalues), 1e-300))
  bins = np.linspace(max(mags.min(), -20) - 0.5, mags.max() + 0.5, 40)
  ax.hist([np.clip(mags[eigenvalues > 0], bins[0], None),
           np.clip(mags[eigenvalues <= 0], bins[0], None)],
          bins=bins, stacked=True, label=['λ > 0', 'λ ≤ 0'])
  below = int(np.sum(mags < bins[0]))
  ax.set_xlabel('log10 |eigenvalue|' + (
      f' ({below} below 1e{bins[0]:.1f}, zeros too, in the first bin)'
      if below else ''))
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
    known = np.isfinite(err).all(0)
    bars = ax.barh(y + offset, means, height=0.34, label=label)
    ax.errorbar(means[known], (y + offset)[known], xerr=err[:, known],
                fmt='none', ecolor='black', capsize=3)
    for bar, ok in zip(bars, known):  # no bar of zero width where unknown
      if not ok:
        ax.annotate('no interval', (bar.get_x() + bar.get_width(),
                                    bar.get_y() + bar.get_height() / 2),
                    fontsize=7, va='center')
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
