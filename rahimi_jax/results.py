"""Tidy results: one row per (member, logged step).

``Results.columns`` maps a column name to a 1-D numpy array: ``member`` (its
name), one column per grid axis (option name, number or seed), ``step``, the
metrics, and per-member columns such as ``diverged_step`` repeated on each of
the member's rows. ``rahimi_jax.storage`` saves and loads them.
"""

import dataclasses
import numbers
from typing import Any, NamedTuple

import numpy as np

from rahimi_jax import grid as grid_lib
from rahimi_jax import stats


class Summary(NamedTuple):
  """A row of ``Results.summarize``."""
  value: Any
  interval: stats.Interval  # over seeds, of the members that finished
  diverged: int  # members excluded from the mean: they diverged
  members: int  # all members with this value
  non_finite: int = 0  # also excluded: runs that finished, the metric not
                       # finite (a probe that overflowed)


class Effect(NamedTuple):
  """A row of ``Results.compare``."""
  value: Any
  interval: stats.Interval  # over seeds, of the pairs where both finished
  # P(a value run beats a baseline run of the same configuration: every
  # other axis but the seed equal); a run left out is worst
  p_better: float
  pairs: int  # all (baseline, value) pairs
  dropped: int  # pairs left out of the interval: either run left out
  baseline_diverged: int  # pairs whose baseline run diverged
  value_diverged: int  # pairs whose value run diverged
  baseline_non_finite: int = 0  # ... finished, the metric not finite
  value_non_finite: int = 0


def left_out(columns, metric: str) -> tuple[np.ndarray, np.ndarray]:
  """Rows a mean of ``metric`` leaves out: ``(diverged, non_finite)``, the
  runs marked diverged, and the others whose ``metric`` is not finite (a
  run that finished, its reading overflowed)."""
  diverged = (columns['diverged_step'] >= 0 if 'diverged_step' in columns
              else np.zeros(len(columns[metric]), bool))
  return diverged, ~diverged & ~np.isfinite(columns[metric])


class SeedMean(NamedTuple):
  """``seed_mean``: a mean over seeds, and the members it left out."""
  interval: stats.Interval  # over seeds, of each seed's mean
  diverged: int  # members left out: they diverged
  non_finite: int  # members left out: finished, the metric not finite
  members: int  # all members


def seed_means(values, seed, seeds) -> np.ndarray:
  """``[len(seeds)]``: the mean of the finite ``values`` whose ``seed`` is
  each of ``seeds`` (NaN where there is none): one value per seed, the unit
  an interval over seeds resamples."""
  values, seed = np.asarray(values), np.asarray(seed)
  return np.asarray([stats.finite_mean(values[seed == s]) for s in seeds])


def seed_mean(columns, metric: str, level: float = 0.95) -> SeedMean:
  """The mean over seeds of each seed's mean ``metric`` over its members
  that finished, and its ``stats.mean_ci`` interval (in the metric's range).

  ``columns`` holds one row per member (``Results.final().columns``, or some
  of its rows). A member that diverged, or finished with a non-finite
  ``metric``, is left out of the mean and counted (``left_out``); a seed
  with no member left contributes nothing.
  """
  diverged, non_finite = left_out(columns, metric)
  values = np.where(diverged | non_finite, np.nan, columns[metric])
  seed = columns[grid_lib.SEED]
  ci = stats.mean_ci(seed_means(values, seed, np.unique(seed)), level,
                     bounds=stats.metric_range(metric))
  return SeedMean(ci, int(np.sum(diverged)), int(np.sum(non_finite)),
                  len(values))


def value_label(value) -> str:
  """An axis value as tables and plots print it: a float in ``g`` format."""
  return f'{value:g}' if isinstance(value, float) else str(value)


percent = stats.percent  # an interval's level as a label: 0.95 -> '95%'


def _p_better(values: np.ndarray, a_at: np.ndarray, b_at: np.ndarray,
              configs: list[Any], higher: bool) -> float:
  """``stats.probability_of_improvement`` of the runs at ``b_at`` over those
  at ``a_at`` (pairs: ``a_at[j]``, ``b_at[j]``) within each configuration
  (``configs[j]``: the pair's other axes but the seed), weighted by its
  pairs of runs: ranked across configurations, another axis's effect would
  swamp this one's (one adam run beats every sgd run, whatever the
  learning rate compared)."""
  strata: dict[Any, list[int]] = {}
  for j, config in enumerate(configs):
    strata.setdefault(config, []).append(j)
  if not strata:
    return np.nan
  ps = [stats.probability_of_improvement(values[a_at[js]], values[b_at[js]],
                                         higher_is_better=higher)
        for js in strata.values()]
  return float(np.average(ps, weights=[len(js)**2 for js in strata.values()]))


@dataclasses.dataclass
class Results:
  columns: dict[str, np.ndarray]
  metadata: dict[str, Any]

  def __len__(self) -> int:
    return len(next(iter(self.columns.values()))) if self.columns else 0

  @property
  def axes(self) -> list[str]:
    return list(self.metadata.get('axes', {}))

  def where(self, **equal) -> 'Results':
    """The rows whose columns equal the given values, or one of a list of
    them (``subset``: the axes in the metadata keep only the values that
    remain, so a table of ``where(optimizer='sgd')`` has no empty ``adam``
    row). A float matches at float32 precision (``matches``)."""
    mask = np.ones(len(self), bool)
    for name, value in equal.items():
      self._check_column(name)
      mask &= matches(self.columns[name], value)
    return self.subset(mask)

  def subset(self, mask) -> 'Results':
    """The rows where ``mask``; each axis in the metadata keeps only the
    values that remain (a sub-design, e.g. a factorial inside a union)."""
    mask = np.asarray(mask, bool)
    columns = {k: v[mask] for k, v in self.columns.items()}
    axes = {a: [v for v in values if np.any(matches(columns[a], v))]
            for a, values in self.metadata.get('axes', {}).items()}
    return Results(columns, {**self.metadata, 'axes': axes})

  def final(self) -> 'Results':
    """Each member's last logged row.

    A member's rows are consecutive with increasing steps; its last row is
    the one before the step stops increasing or the member name changes (a
    concatenation of runs may repeat a name), or the last row.
    """
    member, step = self.columns['member'], self.columns['step']
    last = np.ones(len(self), bool)
    last[:-1] = (member[1:] != member[:-1]) | (step[1:] <= step[:-1])
    return Results({k: v[last] for k, v in self.columns.items()}, self.metadata)

  def configs(self) -> dict[tuple[tuple[str, Any], ...], 'Results']:
    """Rows grouped by configuration: every axis value but the seed."""
    axes = [a for a in self.axes if a != grid_lib.SEED]
    keys = list(zip(*(self.columns[a].tolist() for a in axes)))
    groups = {}
    for i, key in enumerate(keys):
      groups.setdefault(tuple(zip(axes, key)), []).append(i)
    return {k: Results({c: v[np.asarray(idx)] for c, v in self.columns.items()},
                       self.metadata) for k, idx in groups.items()}

  def _check_column(self, name: str) -> None:
    if name not in self.columns:
      raise ValueError(f'No column {name!r}; columns: '
                       f'{", ".join(self.columns)}.')

  def _check_axis(self, name: str) -> None:
    if name not in self.metadata.get('axes', {}):
      raise ValueError(f'No axis {name!r}; axes: {", ".join(self.axes)}.')

  def _check_metric(self, metric: str) -> None:
    if metric not in self.columns:
      raise ValueError(f'Unknown metric {metric!r}; columns: '
                       f'{", ".join(self.columns)}.')
    stats.get_metric(metric)

  def summarize(self, metric: str, by: str, level: float = 0.95
                ) -> list[Summary]:
    """For each value of axis ``by``: the final ``metric`` over seeds.

    A member that diverged (``diverged_step >= 0``) is left out of the mean
    and counted in ``diverged``, one that finished with a non-finite final
    metric (a probe that overflowed) in ``non_finite``: the mean is over the
    members that finished, so it flatters a value whose bad runs diverged
    (read it beside ``diverged``). Each seed contributes the mean of
    ``metric`` over its finished members with that value (averaging the other
    axes out); the interval (``stats.mean_ci``) is over those seeds, clipped
    to the metric's range.
    """
    self._check_metric(metric)
    self._check_axis(by)
    final = self.final().columns
    rows = []
    for value in self.metadata['axes'][by]:
      at = matches(final[by], value)
      m = seed_mean({c: v[at] for c, v in final.items()}, metric, level)
      rows.append(Summary(value, m.interval, m.diverged, m.members,
                          m.non_finite))
    return rows

  def compare(self, metric: str, axis: str, baseline: Any,
              level: float = 0.95) -> list[Effect]:
    """The effect of each value of ``axis`` against ``baseline``, paired.

    Members are paired when they agree on every other axis and the seed
    (common random numbers). The effect is the mean over seeds of each seed's
    mean difference (value - baseline) of the final ``metric``, over the pairs
    where both runs finished with a finite ``metric`` (pairs with a run left
    out are dropped and counted: diverged, or finished non-finite), with a
    ``stats.paired_ci`` interval over seeds (the resampling unit: members
    sharing a seed are not independent). ``p_better`` is the probability
    that a value run beats a baseline run of the same configuration (every
    other axis but the seed equal) in the metric's direction: Mann–Whitney
    within each configuration, over its seeds, weighted by its pairs of
    runs, a run left out counting as worse than any other.
    """
    self._check_metric(metric)
    self._check_axis(axis)
    if isinstance(baseline, (list, tuple, set)) or np.ndim(baseline) > 0:
      raise ValueError(f'{axis}: baseline {baseline!r}: give one value.')
    if not any(matches(np.asarray([v]), baseline)[0]
               for v in self.metadata['axes'].get(axis, [])):
      raise ValueError(f'{axis}: baseline {baseline!r} is not among its values '
                       f'{self.metadata["axes"].get(axis)}.')
    higher = stats.higher_is_better(metric)
    final = self.final().columns
    diverged, non_finite = left_out(final, metric)
    done = ~diverged & ~non_finite
    # float64: in-memory columns may be float32, and a per-seed mean in
    # float32 moved the effect's last digits against the loaded results.
    values = np.where(done, np.asarray(final[metric], np.float64), np.nan)
    others = [a for a in self.axes if a != axis]
    keys = list(zip(*(final[a].tolist() for a in others)))
    configs = [tuple(v for a, v in zip(others, k) if a != grid_lib.SEED)
               for k in keys]
    is_base = matches(final[axis], baseline)
    base = {k: i for i, k in enumerate(keys) if is_base[i]}
    rows = []
    for value in self.metadata['axes'][axis]:
      at = matches(final[axis], value)
      if np.array_equal(at, is_base):
        continue
      b_at = np.asarray([i for i, k in enumerate(keys)
                         if at[i] and k in base], int)
      a_at = np.asarray([base[keys[i]] for i in b_at], int)
      both = done[a_at] & done[b_at]
      seed = final[grid_lib.SEED][b_at]
      # One paired difference per seed (the resampling unit).
      kept = np.unique(seed[both])
      a = [values[a_at[both & (seed == s)]].mean() for s in kept]
      b = [values[b_at[both & (seed == s)]].mean() for s in kept]
      rows.append(Effect(
          value,
          stats.paired_ci(a, b, level, bounds=stats.difference_range(metric)),
          _p_better(values, a_at, b_at, [configs[i] for i in b_at], higher),
          len(b_at), int(np.sum(~both)), int(np.sum(diverged[a_at])),
          int(np.sum(diverged[b_at])), int(np.sum(non_finite[a_at])),
          int(np.sum(non_finite[b_at]))))
    return rows

  def _widths(self) -> tuple[int, int]:
    """Columns wide enough for every axis name and value label."""
    axes = [a for a in self.axes if a != grid_lib.SEED]
    labels = [value_label(v) for a in axes for v in self.metadata['axes'][a]]
    return (max([13, *map(len, axes)]) + 1,
            max([14, *map(len, labels)]) + 2)

  @property
  def varied_axes(self) -> list[str]:
    """The axes other than the seed with two or more values."""
    return [a for a in self.axes
            if a != grid_lib.SEED and len(self.metadata['axes'][a]) > 1]

  def effects(self, metric: str, level: float = 0.95
              ) -> list[tuple[str, Any, Effect]]:
    """``(axis, baseline, effect)``: ``compare`` for every varied axis,
    against its first value."""
    rows = []
    for axis in self.varied_axes:
      baseline = self.metadata['axes'][axis][0]
      rows += [(axis, baseline, e)
               for e in self.compare(metric, axis, baseline, level)]
    return rows

  def effects_table(self, metric: str, level: float = 0.95) -> str:
    """``effects`` as a text table.

    Each interval is at ``level`` on its own: the header says so, and that
    they are not adjusted for the table's number of comparisons.
    """
    self._check_metric(metric)
    wa, wv = self._widths()
    better = 'higher' if stats.higher_is_better(metric) else 'lower'
    effects = self.effects(metric, level)
    n = len(effects)
    lines = [
        f'paired effect on final {metric} ({better} is better) vs each axis\'s '
        f'first value: mean over seeds of the difference value - baseline, '
        f'{stats.interval_label(level)}']
    if n > 1:
      lines.append(
          f'each interval is {percent(level)} on its own, not adjusted for the '
          f'{n} comparisons in this table: with no effect anywhere, some '
          f'interval excludes 0 more often than {percent(1 - level)} of the '
          'time (plots.effects colours a bar only where its '
          f'Bonferroni-adjusted {percent(stats.bonferroni(level, n))} '
          'interval excludes 0)')
    lines.append(
        'pairs where either run diverged (or finished with a non-finite '
        f'{metric}) are dropped from the effect (column "dropped"); '
        'P(better) = P(a value run beats a baseline run of the same '
        'configuration, the other axes but the seed equal), a run that '
        f'diverged or finished with a non-finite {metric} counting as worse '
        'than every other run and tying with another such run; a tie counts '
        'half')
    header = (f'{"axis":<{wa}}{"value":<{wv}}{"baseline":<{wv - 2}}{"effect":>9}'
              f'{"low":>9}{"high":>9}{"seeds":>7}{"dropped":>9}'
              f'{"P(better)":>11}  note')
    lines += [header, '-' * len(header)]
    for axis, baseline, e in effects:
      ci = e.interval
      note = '; '.join(f'{who} {what} in {k}/{e.pairs}' for who, what, k in (
          ('baseline', 'diverged', e.baseline_diverged),
          ('value', 'diverged', e.value_diverged),
          ('baseline', f'{metric} non-finite', e.baseline_non_finite),
          ('value', f'{metric} non-finite', e.value_non_finite)) if k)
      lines.append(
          f'{axis:<{wa}}{value_label(e.value):<{wv}}'
          f'{value_label(baseline):<{wv - 2}}'
          f'{stats.number(ci.mean, "+.4f"):>9}{stats.number(ci.low, "+.4f"):>9}'
          f'{stats.number(ci.high, "+.4f"):>9}{ci.n:>7d}'
          f'{f"{e.dropped}/{e.pairs}":>9}{stats.number(e.p_better, ".2f"):>11}'
          f'  {note}'.rstrip())
    return '\n'.join(lines)

  def summary_table(self, metric: str, level: float = 0.95) -> str:
    """A text table of ``summarize(metric, axis)`` for every non-seed axis."""
    self._check_metric(metric)
    wa, wv = self._widths()
    low, high = stats.metric_range(metric)
    lines = [f'final {metric}: mean over seeds of each seed\'s mean over its '
             f'members that finished, '
             f'{stats.interval_label(level, f"clipped to [{low:g}, {high:g}]")}',
             'diverged members are excluded from the mean (survivor bias: '
             'read the mean beside "diverged", flagged !)']
    header = (f'{"axis":<{wa}}{"value":<{wv}}{"mean":>9}{"low":>9}{"high":>9}'
              f'{"seeds":>7}{"diverged":>10}')
    lines += [header, '-' * len(header)]
    for axis in self.axes:
      if axis == grid_lib.SEED:
        continue
      for row in self.summarize(metric, axis, level):
        ci = row.interval
        flag = ' !' if row.diverged else ''
        if row.non_finite:
          flag += f' ({row.non_finite} finished, {metric} non-finite)'
        lines.append(f'{axis:<{wa}}{value_label(row.value):<{wv}}'
                     f'{stats.number(ci.mean, ".4f"):>9}{stats.number(ci.low, ".4f"):>9}'
                     f'{stats.number(ci.high, ".4f"):>9}{ci.n:>7d}'
                     f'{f"{row.diverged}/{row.members}":>10}{flag}')
    return '\n'.join(lines)


def matches(column: np.ndarray, value: Any) -> np.ndarray:
  """Where ``column`` equals ``value`` (or one of a list of values); a float
  column at float32 precision, the precision a program reads its knobs in:
  a grid of float32 learning rates stores 0.10000000149, the 0.1 its label
  says (two values equal in float32 are one run's knob)."""
  values = (list(value) if isinstance(value, (list, tuple, set))
            or np.ndim(value) > 0 else [value])
  column = np.asarray(column)
  floating = np.issubdtype(column.dtype, np.floating)
  out = np.zeros(column.shape, bool)
  for v in values:
    if floating and isinstance(v, numbers.Real):
      out |= column.astype(np.float32) == np.float32(v)
    else:
      out |= column == v
  return out


def concat(parts: list[Results], metadata: dict[str, Any] | None = None
           ) -> Results:
  """Rows of several ``Results``, in order. A column that some parts do not
  have (a counter one cell's options log: a partition by loss scaling or
  precision) is NaN in their rows: not logged there; a text column is
  refused, it names every row.

  Without ``metadata``, the first part's, its ``axes`` the union of the
  parts' (each axis's values in order of appearance), so a value only later
  parts ran is in every table.
  """
  if not parts:
    raise ValueError('concat needs at least one Results.')
  names = list(dict.fromkeys(n for p in parts for n in p.columns))
  columns = {}
  for n in names:
    have = [p.columns[n] for p in parts if n in p.columns]
    if len(have) < len(parts) and not all(
        np.issubdtype(c.dtype, np.number) for c in have):
      raise ValueError(f'concat: column {n!r} is in some parts only and not '
                       'a number; got the columns '
                       f'{[list(p.columns) for p in parts]}.')
    columns[n] = np.concatenate([
        p.columns[n] if n in p.columns else np.full(len(p), np.nan)
        for p in parts])
  if metadata is None:
    axes = {}
    for p in parts:
      for a, values in p.metadata.get('axes', {}).items():
        merged = axes.setdefault(a, [])
        merged += [v for v in values if v not in merged]
    metadata = {**parts[0].metadata, 'axes': axes}
  return Results(columns, metadata)


def from_outputs(grid: grid_lib.Grid, outputs: dict[str, np.ndarray],
                 metadata: dict[str, Any] | None = None) -> Results:
  """Tidy rows from stacked outputs: ``[G, L]`` per-log, ``[G]`` per-member."""
  g = len(grid)
  steps = np.asarray(outputs['step'])
  if steps.ndim != 2 or steps.shape[0] != g:
    raise ValueError(f'outputs["step"] must be [members={g}, logs]; got {steps.shape}.')
  n_logs = steps.shape[1]
  columns = {'member': np.repeat([m.name for m in grid.members], n_logs)}
  for axis in grid.axes:
    columns[axis.name] = np.repeat(
        np.asarray([m.values[axis.name] for m in grid.members]), n_logs)
  for name, value in outputs.items():
    value = np.asarray(value)
    if value.shape == (g, n_logs):
      columns[name] = value.reshape(-1)
    elif value.shape == (g,):
      columns[name] = np.repeat(value, n_logs)
    else:
      raise ValueError(f'output {name!r} has shape {value.shape}; expected '
                       f'({g}, {n_logs}) or ({g},).')
  meta = {'axes': {a.name: list(a.labels) for a in grid.axes},
          **(metadata or {})}
  return Results(columns, meta)
