"""Tidy results: one row per (member, logged step).

``Results.columns`` maps a column name to a 1-D numpy array: ``member`` (its
name), one column per grid axis (option name, number or seed), ``step``, the
metrics, and per-member columns such as ``diverged_step`` repeated on each of
the member's rows. ``rahimi_jax.storage`` saves and loads them.
"""

import dataclasses
from typing import Any

import numpy as np

from rahimi_jax import grid as grid_lib
from rahimi_jax import stats


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
    """The rows whose columns equal the given values."""
    mask = np.ones(len(self), bool)
    for name, value in equal.items():
      mask &= self.columns[name] == value
    return Results({k: v[mask] for k, v in self.columns.items()}, self.metadata)

  def final(self) -> 'Results':
    """Each member's last logged row."""
    member = self.columns['member']
    last = np.ones(len(self), bool)
    last[:-1] = member[1:] != member[:-1]
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

  def summarize(self, metric: str, by: str, level: float = 0.95):
    """For each value of axis ``by``: the final ``metric`` over seeds.

    Each seed contributes the mean of ``metric`` over the members with that
    value and seed (averaging the other axes out); the interval is over seeds.
    Diverged members are excluded from the mean and counted.

    Returns:
      A list of ``(value, Interval, n_diverged)``.
    """
    if metric not in self.columns:
      raise ValueError(f'Unknown metric {metric!r}; columns: '
                       f'{", ".join(self.columns)}.')
    final = self.final().columns
    rows = []
    for value in self.metadata['axes'][by]:
      at = final[by] == value
      alive = (final['diverged_step'] < 0 if 'diverged_step' in final
               else np.ones_like(at))
      per_seed = []
      for seed in np.unique(final[grid_lib.SEED][at]):
        vals = final[metric][at & alive & (final[grid_lib.SEED] == seed)]
        vals = vals[np.isfinite(vals)]
        per_seed.append(np.mean(vals) if len(vals) else np.nan)
      diverged = int(np.sum(at & ~alive))
      rows.append((value, stats.mean_ci(per_seed, level), diverged))
    return rows

  def compare(self, metric: str, axis: str, baseline: Any,
              level: float = 0.95):
    """The effect of each value of ``axis`` against ``baseline``, paired.

    Members are paired when they agree on every other axis and the seed
    (common random numbers). Each seed contributes the mean difference
    (value - baseline) of the final ``metric`` over its pairs; the effect is
    the mean over seeds with a bootstrap interval over seeds (the resampling
    unit, since members sharing a seed are not independent), beside the
    probability that a value run beats a baseline run (Mann–Whitney).

    Returns:
      A list of ``(value, Interval of the difference, P(value > baseline))``.
    """
    if baseline not in self.metadata['axes'].get(axis, []):
      raise ValueError(f'{axis}: baseline {baseline!r} is not among its values '
                       f'{self.metadata["axes"].get(axis)}.')
    final = self.final().columns
    others = [a for a in self.axes if a != axis]
    keys = list(zip(*(final[a].tolist() for a in others)))
    base = {k: final[metric][i] for i, k in enumerate(keys)
            if final[axis][i] == baseline}
    seed_at = others.index(grid_lib.SEED)
    rows = []
    for value in self.metadata['axes'][axis]:
      if value == baseline:
        continue
      pairs = [(k[seed_at], base[k], final[metric][i])
               for i, k in enumerate(keys)
               if final[axis][i] == value and k in base]
      seeds = sorted({p[0] for p in pairs})
      # One paired difference per seed (the resampling unit): members that
      # share a seed are not independent.
      a = np.asarray([np.mean([p[1] for p in pairs if p[0] == s]) for s in seeds])
      b = np.asarray([np.mean([p[2] for p in pairs if p[0] == s]) for s in seeds])
      rows.append((value, stats.paired_bootstrap_ci(a, b, level),
                   stats.probability_of_improvement([p[1] for p in pairs],
                                                    [p[2] for p in pairs])))
    return rows

  def effects_table(self, metric: str, level: float = 0.95) -> str:
    """``compare`` for every non-seed axis, against its first value."""
    lines = [f'paired effect on final {metric} vs each axis\'s first value: mean '
             f'difference over seeds, {level:.0%} paired bootstrap interval over '
             'seeds, P(better)']
    header = (f'{"axis":<14}{"value":<16}{"baseline":<14}{"effect":>9}'
              f'{"low":>9}{"high":>9}{"seeds":>7}{"P(>)":>7}')
    lines += [header, '-' * len(header)]
    for axis in self.axes:
      values = self.metadata['axes'][axis]
      if axis == grid_lib.SEED or len(values) < 2:
        continue
      for value, ci, p in self.compare(metric, axis, values[0], level):
        fmt = lambda v: f'{v:g}' if isinstance(v, float) else str(v)
        lines.append(f'{axis:<14}{fmt(value):<16}{fmt(values[0]):<14}'
                     f'{ci.mean:>+9.4f}{ci.low:>+9.4f}{ci.high:>+9.4f}'
                     f'{ci.n:>7d}{p:>7.2f}')
    return '\n'.join(lines)

  def summary_table(self, metric: str, level: float = 0.95) -> str:
    """A text table of ``summarize(metric, axis)`` for every non-seed axis."""
    lines = [f'final {metric}: mean over seeds, {level:.0%} t-interval']
    header = f'{"axis":<14}{"value":<16}{"mean":>9}{"low":>9}{"high":>9}{"seeds":>7}{"diverged":>10}'
    lines += [header, '-' * len(header)]
    for axis in self.axes:
      if axis == grid_lib.SEED:
        continue
      for value, ci, diverged in self.summarize(metric, axis, level):
        label = f'{value:g}' if isinstance(value, float) else str(value)
        lines.append(f'{axis:<14}{label:<16}{ci.mean:>9.4f}{ci.low:>9.4f}'
                     f'{ci.high:>9.4f}{ci.n:>7d}{diverged:>10d}')
    return '\n'.join(lines)


def concat(parts: list[Results], metadata: dict[str, Any] | None = None
           ) -> Results:
  """Rows of several ``Results`` with the same columns, in order."""
  if not parts:
    raise ValueError('concat needs at least one Results.')
  names = list(parts[0].columns)
  for p in parts[1:]:
    if list(p.columns) != names:
      raise ValueError(f'concat needs the same columns; got {names} and '
                       f'{list(p.columns)}.')
  return Results({n: np.concatenate([p.columns[n] for p in parts])
                  for n in names},
                 parts[0].metadata if metadata is None else metadata)


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
