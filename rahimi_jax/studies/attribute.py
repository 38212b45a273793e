"""Attribution study: which component contributes how much, two ways.

For on/off components (a choice axis with an 'off' and an 'on' option each),
the full 2^n factorial grid x seeds runs as one program; from it come exact
Shapley values and the ANOVA (main effects, two-way interactions). The same
components as continuous gates give Aumann–Shapley credits: gradients of the
final metric along the straight gate path from all-off to all-on, integrated
by quadrature (each node a training run, differentiated through the whole
run). Both come per seed, with intervals over seeds (``stats.mean_ci``),
and their difference per seed. A seed whose grid or gate path diverged is
left out of every column, and named.
"""

import dataclasses
import os
import time
from typing import Any

import jax
import numpy as np

from rahimi_jax import attribution
from rahimi_jax import cli
from rahimi_jax import data as data_lib
from rahimi_jax import engine
from rahimi_jax import grid as grid_lib
from rahimi_jax import plots
from rahimi_jax import program
from rahimi_jax import registry
from rahimi_jax import stats
from rahimi_jax import storage
from rahimi_jax import train as train_lib


def parse_gates(spec: str) -> tuple[tuple[str, str, str], ...]:
  """``'norm:none..batch,optimizer:sgd..momentum'`` -> ((axis, off, on), ...).

  ``..`` reads "from off to on" and, unlike ``>``, needs no shell quoting.
  """
  gates = []
  for item in [s.strip() for s in spec.split(',') if s.strip()]:
    try:
      axis, rest = item.split(':')
      off, on = rest.split('..')
    except ValueError:
      raise ValueError(f'gates: {item!r} must look like axis:off..on, e.g. '
                       'norm:none..batch.') from None
    gates.append((axis.strip(), off.strip(), on.strip()))
  if not gates:
    raise ValueError('gates: give at least one axis:off..on.')
  return tuple(gates)


@dataclasses.dataclass(frozen=True)
class AttributeConfig:
  """Components to attribute on an MLP trained on a bundled dataset."""
  gates: tuple[tuple[str, str, str], ...] = (
      ('norm', 'none', 'batch'), ('optimizer', 'sgd', 'momentum'),
      ('init', 'lecun_normal', 'orthogonal'))
  metric: str = 'test_loss'
  dataset: str = 'digits'
  hidden: tuple[int, ...] = (64, 64)
  values: Any = None  # value knob -> the one value of every member
  seeds: int = 4
  steps: int = 500
  batch_size: int = 64
  nodes: int = 4

  def __post_init__(self):
    if isinstance(self.gates, str):
      object.__setattr__(self, 'gates', parse_gates(self.gates))
    axes = [g[0] for g in self.gates]
    if len(set(axes)) != len(axes):
      raise ValueError(f'gates: an axis is listed twice in {axes}.')
    for axis, off, on in self.gates:
      if axis not in registry.AXES:
        raise ValueError(f'gates: unknown axis {axis!r}; accepted: '
                         f'{", ".join(registry.AXES)}.')
      registry.AXES[axis].check((off, on))
      if not registry.AXES[axis].relaxable:
        raise ValueError(f'gates: {axis} has no path between its options (a '
                         'table lookup); attribute a relaxable axis.')
    attribution.final_metric(train_lib.TrainConfig(), self.metric)  # checks
    data_lib.get_dataset(self.dataset)
    knobs = registry.knobs()
    values = {'learning_rate': knobs['learning_rate'].default,
              **dict(self.values or {})}
    for name, value in values.items():
      parsed = cli.parse_knob(name, value)
      if len(parsed) != 1:
        raise ValueError(f'{name}: attribution trains every member at one '
                         f'value; got {", ".join(map(str, parsed))}.')
      values[name] = parsed[0]
    object.__setattr__(self, 'values', tuple(
        (k, values[k]) for k in knobs if k in values))
    for name in ('seeds', 'nodes'):
      value = getattr(self, name)
      if (not isinstance(value, int) or isinstance(value, bool)
          or value < 1):
        raise ValueError(f'{name} must be a positive integer; got '
                         f'{getattr(self, name)!r}.')
    train_lib.check_task(self.train_config().for_grid(self.grid()),
                         data_lib.task_of(self.dataset))

  def grid(self) -> grid_lib.Grid:
    return grid_lib.Grid(*(grid_lib.Choice(a, (off, on))
                           for a, off, on in self.gates),
                         *(grid_lib.Values(k, (v,)) for k, v in self.values),
                         grid_lib.Seeds(self.seeds))

  def train_config(self) -> train_lib.TrainConfig:
    return train_lib.TrainConfig(hidden=self.hidden, steps=self.steps,
                                 batch_size=self.batch_size,
                                 log_every=max(1, self.steps // 10), remat=True)


def run(config: AttributeConfig) -> dict[str, Any]:
  """Trains the factorial grid, then the gate paths; returns every number."""
  data = data_lib.get_dataset(config.dataset)()
  grid = config.grid()
  tc = config.train_config().for_grid(grid)
  res = engine.run(config.train_config(), grid, data,
                   metadata={'config': dataclasses.asdict(config)})
  names = [g[0] for g in config.gates]
  baselines = {a: off for a, off, _ in config.gates}
  diverged, res_kept = attribution.drop_diverged_seeds(res, config.metric)
  out = {'results': res, 'diverged': diverged, 'names': names,
         'seeds_used': sorted({int(s) for s in
                               res_kept.columns[grid_lib.SEED]})}
  if not out['seeds_used']:
    return out  # every seed lost a member: nothing to attribute
  _, table = attribution.component_table(res_kept, config.metric, names,
                                         baselines)
  discrete = attribution.shapley_from_table(table, len(names))
  # The all-off member of each kept seed; its knobs anchor the gate path.
  off_members = [m.index for m in grid.members
                 if m.values[grid_lib.SEED] in out['seeds_used']
                 and all(m.values[a] == off for a, off, _ in config.gates)]
  knobs = grid.knobs(off_members)
  components = {a: (0, 1) for a in names}  # grid options are (off, on)
  f = attribution.final_metric(tc, config.metric)
  start = time.perf_counter()
  try:
    gates = np.asarray(program.wait(jax.jit(jax.vmap(
        lambda k: attribution.aumann_shapley(f, k, data, components,
                                             nodes=config.nodes)))(knobs)))
  except KeyboardInterrupt:  # the grid had finished: save it
    raise program.Interrupted(res, len(grid), len(grid),
                             during='gate paths') from None
  gate_s = time.perf_counter() - start
  # A seed whose gate path diverged (a non-finite credit) leaves every
  # column, so that all of them, and their difference, hold the same seeds.
  finite = np.isfinite(gates).all(1)
  out['gate_diverged'] = [s for s, ok in zip(out['seeds_used'], finite)
                          if not ok]
  if not finite.all():
    out['seeds_used'] = [s for s, ok in zip(out['seeds_used'], finite) if ok]
    table, discrete, gates = table[finite], discrete[finite], gates[finite]
    res_kept = res_kept.subset(np.isin(res_kept.columns[grid_lib.SEED],
                                       out['seeds_used']))
    if not out['seeds_used']:
      return {**out, 'gate_s': gate_s}
  zeros = np.zeros(len(table))
  rows = []
  for i, name in enumerate(names):
    rows.append({
        'component': f'{name}: {config.gates[i][1]} -> {config.gates[i][2]}',
        'shapley': stats.paired_ci(zeros, discrete[:, i]),
        'aumann_shapley': stats.paired_ci(zeros, gates[:, i]),
        'difference': stats.paired_ci(discrete[:, i], gates[:, i]),
    })
  total = table[:, -1] - table[:, 0]
  return {**out, 'rows': rows, 'anova': attribution.anova(
      res_kept, config.metric, names, baselines), 'total': total,
          'gate_total': gates.sum(1), 'gate_s': gate_s}


# A completeness gap above this share of f(all on) - f(all off) is called a
# rough path (the eleventh session's default run: 6% at 8 nodes).
ROUGH_PATH = 0.25


def report(config: AttributeConfig, out: dict[str, Any],
           out_dir: str | None = None) -> str:
  """The contribution table (and CSV + PNGs in ``out_dir``)."""
  n = len(out['seeds_used'])
  head = []
  if out['diverged']:
    head.append(f'diverged: {len(out["diverged"])} members ' + ', '.join(
        f'{m} (step {s})' if s >= 0 else f'{m} (finished, {config.metric} '
        'non-finite)' for m, s in out['diverged']) +
                '; their seeds are left out of the attribution')
  if out.get('gate_diverged'):
    head.append('gate path diverged (a non-finite credit) for seed ' +
                ', '.join(map(str, out['gate_diverged'])) +
                '; left out of every column')
  if head:
    head[-1] += f' ({n} of {config.seeds} seeds remain)'
  if not n:
    return '\n'.join(head + ['no seed without a diverged member: nothing to '
                              'attribute (try a smaller --learning_rate)'])
  interval = (stats.interval_label() if n >= 2 else
              'no interval from one seed')
  lines = head + [f'contributions to the final {config.metric} (off -> on), mean over '
           f'{n} seeds [{interval}]',
           f'{"component":<36}{"Shapley (grid)":>30}{"Aumann-Shapley (gates)":>30}'
           f'{"difference (gates - grid)":>30}']
  fmt = lambda ci: stats.format_interval(ci, '+.4f')
  csv_rows = ['component,method,mean,low,high,seeds']
  for r in out['rows']:
    lines.append(f'{r["component"]:<36}{fmt(r["shapley"]):>30}'
                 f'{fmt(r["aumann_shapley"]):>30}{fmt(r["difference"]):>30}')
    for method in ('shapley', 'aumann_shapley', 'difference'):
      ci = r[method]
      csv_rows.append(f'"{r["component"]}",{method},{ci.mean!r},{ci.low!r},'
                      f'{ci.high!r},{ci.n}')
  total, gate_total = np.mean(out['total']), np.mean(out['gate_total'])
  gap = abs(gate_total - total) / max(abs(total), np.finfo(float).tiny)
  # Completeness holds per seed (each seed's credits sum to its own
  # difference); gaps of opposite sign in two seeds cancel in the means. Each
  # seed's gap is read against the seeds' typical difference (mean |f(on) -
  # f(off)|), not its own, which a seed whose components cancel makes ~0.
  worst = float(np.max(np.abs(out['gate_total'] - out['total']))) / max(
      float(np.mean(np.abs(out['total']))), np.finfo(float).tiny)
  lines.append(f'completeness: f(all on) - f(all off) = {total:+.4f}; sum of '
               f'gate credits {gate_total:+.4f} (a gap of {gap:.0%} of the '
               f'difference; the worst seed\'s {worst:.0%} of the seeds\' mean '
               f'|difference|: quadrature with '
               f'{config.nodes} nodes, and the jumps of a ReLU net\'s '
               'training along the path, which its derivative does not see)')
  if worst > ROUGH_PATH:
    lines.append(f'  the gate credits miss the difference by more than '
                 f'{ROUGH_PATH:.0%} (in the worst seed): the metric jumps or '
                 'is rough along the path (a chaotic or diverging run along '
                 'it); the Aumann-Shapley column is unreliable, read Shapley '
                 '(grid).')
  lines.append(f'ANOVA ({attribution.ANOVA_TEXT})')
  for k, ci in out['anova'].items():
    label = ' x '.join(k) if isinstance(k, tuple) else k
    lines.append(f'  {label:<30}{fmt(ci):>30}')
    csv_rows.append(f'"{label}",anova,{ci.mean!r},{ci.low!r},{ci.high!r},{ci.n}')
  if out_dir:
    storage.write_text(os.path.join(out_dir, 'contributions.csv'),
                       '\n'.join(csv_rows) + '\n')
    plots.contributions(out['rows'], os.path.join(out_dir, 'contributions.png'),
                        title=f'contributions to final {config.metric}')
    plots.interactions(out['names'], out['anova'],
                       os.path.join(out_dir, 'interactions.png'),
                       title=f'main effects (diagonal) and two-way interactions\non final '
                       f'{config.metric}')
    for name in out['names']:
      plots.curves(out['results'], config.metric,
                   os.path.join(out_dir, f'curves_{name}.png'), by=name,
                   log_y=False)
  return '\n'.join(lines)
