"""Simple experiment 2: what low precision costs, where, and why.

Rahimi's NIPS 2017 talk tells of a training run that went from under 25% error
to about 99.97% error when a framework changed its default rounding from toward-zero to
nearest-even. This study trains the same model, data and seeds under float32
(the reference) and under every (format, rounding mode, placement[, loss
scaling]) cell, in one grid program, and reports per cell the final metric
with an interval over seeds, the paired effect against float32, collapses
(non-finite, or chance-level accuracy) with the step they happened, and the
mechanism, from quantities the training loop logs: updates rounded away,
overflow and underflow counts per placement, the rounded optimizer constants,
the dynamic loss scale.

The grid (per optimizer, at its own learning rate, all in one program): the
float32 reference, plus precisions x roundings x placements without loss
scaling, plus the placements that round gradients under each other loss
scaling (loss scaling acts only there). float32 appears once: rounding to it
is the identity whatever the mode and place. The final metric is the float32
evaluation of the stored parameters (``placement``: only training rounds).
The ``constants`` placement rounds to nearest under stochastic rounding, so
its stochastic cells repeat its nearest-even cells.
"""

import dataclasses
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from rahimi_jax import attribution
from rahimi_jax import cli
from rahimi_jax import components
from rahimi_jax import data as data_lib
from rahimi_jax import engine
from rahimi_jax import grid as grid_lib
from rahimi_jax import registry
from rahimi_jax import results as results_lib
from rahimi_jax import stats
from rahimi_jax import train as train_lib
from rahimi_jax.components import placement as placement_lib
from rahimi_jax.components import precision as precision_lib

REFERENCE = {'precision': 'float32', 'rounding': 'nearest_even',
             'placement': 'storage', 'loss_scaling': 'none'}
CELL_AXES = tuple(REFERENCE)
# Knobs and constants each optimizer reads (the ``constants`` placement
# rounds them).
_READS = {
    'sgd': ('learning_rate',),
    'momentum': ('learning_rate', 'momentum'),
    'nesterov': ('learning_rate', 'momentum'),
    'adam': ('learning_rate', 'b1', 'b2', 'eps'),
    'adamw': ('learning_rate', 'b1', 'b2', 'eps', 'weight_decay'),
    'rmsprop': ('learning_rate', 'decay', 'eps'),
}
_AVERAGES = ('momentum', 'b1', 'b2', 'decay')  # exponential-average factors
# The value knobs a grid sets at one value for every cell (learning rates are
# per optimizer, loss_scale its own field; the MLP has no norm to add noise).
VALUE_KNOBS = ('momentum', 'weight_decay', 'init_scale')


@dataclasses.dataclass(frozen=True)
class RoundingConfig:
  """The rounding study's grid.

  Attributes:
    dataset, model, hidden, seeds, steps, batch_size, log_every: as in
      ``AblationConfig``.
    optimizers: optimizers, each run at the learning rate of the same
      position in ``learning_rates``.
    learning_rates: one per optimizer.
    precisions: the low-precision formats compared with float32 (which every
      grid includes as the reference).
    roundings, placements: options of those axes (a placement may join places
      with ``+``).
    loss_scalings: options of the loss_scaling axis, applied to the
      placements that round gradients (``none`` everywhere else).
    loss_scale: the static scale, and the dynamic one's start.
    values: ``(knob, value)`` of ``VALUE_KNOBS`` (or a dict), one value for
      every cell; the others keep their defaults.
    gap: an effect against float32 whose mean is at least ``gap`` in size
      (the metric's units) is explained, whatever its interval.
  """
  dataset: str = 'digits'
  model: str = 'mlp'
  hidden: tuple[int, ...] = (64, 64)
  optimizers: tuple[str, ...] = ('sgd', 'adam')
  learning_rates: tuple[float, ...] = (0.01, 0.001)
  precisions: tuple[str, ...] = ('bfloat16', 'float16')
  roundings: tuple[str, ...] = precision_lib.MODES
  placements: tuple[str, ...] = placement_lib.PLACES
  loss_scalings: tuple[str, ...] = ('none',)
  loss_scale: float = 2.0**15
  values: tuple[tuple[str, float], ...] = ()
  seeds: int = 5
  steps: int = 500
  batch_size: int = 64
  log_every: int | None = None
  gap: float = 0.02

  def __post_init__(self):
    data_lib.get_dataset(self.dataset)
    for name in ('optimizers', 'learning_rates', 'precisions', 'roundings',
                 'placements', 'loss_scalings', 'hidden'):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    axes = {'optimizer': self.optimizers, 'precision': self.precisions,
            'rounding': self.roundings, 'placement': self.placements,
            'loss_scaling': self.loss_scalings}
    for axis, names in axes.items():
      registry.get_axis(axis).check(names)
    if 'float32' in self.precisions:
      raise ValueError('precisions: float32 is the reference every grid '
                       'includes; list the formats to compare with it (e.g. '
                       'bfloat16,float16).')
    first_order = [o for o in self.optimizers if o not in _READS]
    if first_order:
      raise ValueError(f'optimizers: {", ".join(first_order)} not supported '
                       f'here; accepted: {", ".join(_READS)}.')
    if len(self.learning_rates) != len(self.optimizers):
      raise ValueError(
          f'learning_rates: one per optimizer; got {len(self.learning_rates)} '
          f'({", ".join(map(str, self.learning_rates))}) for '
          f'{len(self.optimizers)} ({", ".join(self.optimizers)}).')
    for lr in self.learning_rates:
      if not lr > 0:
        raise ValueError(f'learning_rates must be > 0; got {lr!r}.')
    if 'none' not in self.loss_scalings:
      raise ValueError('loss_scalings must include none (the placements '
                       'that do not round gradients run without loss '
                       f'scaling); got {", ".join(self.loss_scalings)}.')
    if len(self.loss_scalings) > 1 and not self._scaled_placements():
      raise ValueError('loss_scalings: loss scaling acts on rounded '
                       'gradients; add a placement with gradients (e.g. '
                       'gradients or storage+gradients).')
    if not self.loss_scale > 0:
      raise ValueError(f'loss_scale must be > 0; got {self.loss_scale!r}.')
    object.__setattr__(self, 'values', cli.parse_single_knobs(
        self.values, VALUE_KNOBS, 'every cell runs at one value',
        {'optimizer': self.optimizers}))
    if not (isinstance(self.seeds, int) and self.seeds >= 2):
      raise ValueError(f'seeds: intervals need at least 2; got {self.seeds!r}.')
    if not self.gap >= 0:
      raise ValueError(f'gap must be >= 0; got {self.gap!r}.')
    self.train_config()  # model, widths, steps, activations hook

  def _scaled_placements(self) -> tuple[str, ...]:
    return tuple(p for p in self.placements
                 if 'gradients' in placement_lib.AXIS.get(p))

  def grid(self) -> grid_lib.Grid:
    """The union described in the module docstring, seeds paired."""
    parts = []
    scaled = [s for s in self.loss_scalings if s != 'none']
    for opt, lr in zip(self.optimizers, self.learning_rates):
      cells = [((('float32',), ('nearest_even',), ('storage',), ('none',)))]
      cells.append((self.precisions, self.roundings, self.placements,
                    ('none',)))
      if scaled:
        cells.append((self.precisions, self.roundings,
                      self._scaled_placements(), tuple(scaled)))
      for cell in cells:
        axes = [grid_lib.Choice('optimizer', (opt,)),
                grid_lib.Values('learning_rate', (lr,))]
        axes += [grid_lib.Choice(a, o) for a, o in zip(CELL_AXES, cell)]
        if scaled:
          axes.append(grid_lib.Values('loss_scale', (self.loss_scale,)))
        axes += [grid_lib.Values(k, (v,)) for k, v in self.values]
        parts.append(grid_lib.Grid(*axes, grid_lib.Seeds(self.seeds)))
    return grid_lib.Grid.union(*parts)

  def train_config(self) -> train_lib.TrainConfig:
    return train_lib.TrainConfig(
        model=self.model, hidden=self.hidden, steps=self.steps,
        batch_size=self.batch_size, log_every=self.log_every,
        rounding_events=True,
        options=(('optimizer', self.optimizers),
                 ('precision', ('float32',) + self.precisions),
                 ('rounding', self.roundings),
                 ('placement', tuple(dict.fromkeys(('storage',)
                                                   + self.placements))),
                 ('loss_scaling', self.loss_scalings)))

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def chance_accuracy(dataset: data_lib.Dataset) -> tuple[float, float]:
  """``(chance, threshold)``: the accuracy of always predicting the commonest
  test class, and that plus 3 binomial standard errors on the test set (an
  accuracy at or below it is chance level)."""
  counts = np.bincount(np.asarray(dataset.y_test))
  p = counts.max() / counts.sum()
  return float(p), float(p + 3 * np.sqrt(p * (1 - p) / counts.sum()))


def run(config: RoundingConfig, **engine_kwargs) -> results_lib.Results:
  """Trains the grid (one program); metadata records the chance level."""
  dataset = data_lib.get_dataset(config.dataset)()
  metadata = {'config': config.to_dict(), 'task': dataset.task}
  if dataset.task == 'classification':
    metadata['chance_accuracy'], metadata['chance_threshold'] = (
        chance_accuracy(dataset))
  grid = config.grid()
  return engine.run(config.train_config().for_grid(grid), grid, dataset,
                    metadata=metadata, **engine_kwargs)


# ----------------------------------------------------------------- reading


def headline_metric(res: results_lib.Results) -> str:
  return 'test_accuracy' if 'test_accuracy' in res.columns else 'test_loss'


def _is_reference(cell: dict[str, str]) -> bool:
  return cell['precision'] == 'float32'


def _label(cell: dict[str, str]) -> str:
  if _is_reference(cell):
    return 'float32 (reference)'
  parts = [cell['precision'], cell['rounding'], cell['placement']]
  if cell['loss_scaling'] != 'none':
    parts.append(f'loss scaling {cell["loss_scaling"]}')
  return ' '.join(parts)


def _per_seed(final, mask, metric, seeds):
  """``metric`` of the rows in ``mask``, one per seed (NaN where missing)."""
  out = np.full(len(seeds), np.nan)
  for i, s in enumerate(seeds):
    at = mask & (final[grid_lib.SEED] == s)
    if at.any():
      out[i] = final[metric][at][0]
  return out


def collapse(rows: results_lib.Results, metric: str,
             threshold: float | None) -> tuple[int | None, str] | None:
  """Whether one member collapsed: ``(step, how)`` or ``None``.

  Non-finite: the step its parameters (or a logged metric) first were.
  Chance level (classification): the first logged step from which every
  logged accuracy is at or below ``threshold``.
  """
  c = rows.columns
  diverged = int(c['diverged_step'][0])
  if diverged >= 0:
    return diverged, 'non-finite'
  if threshold is None or metric != 'test_accuracy':
    return None
  at_chance = c[metric] <= threshold
  if not at_chance[-1]:
    return None
  first = len(at_chance) - np.argmin(at_chance[::-1]) if not at_chance.all() else 0
  return int(c['step'][first]), 'chance-level accuracy'


def cells(res: results_lib.Results, level: float = 0.95) -> list[dict]:
  """One row per (optimizer, cell): its final metric over seeds, the paired
  effect against the optimizer's float32 reference, collapses, and the raw
  rows (for ``explain``)."""
  metric = headline_metric(res)
  threshold = res.metadata.get('chance_threshold')
  final = res.final().columns
  seeds = np.unique(final[grid_lib.SEED])
  out = []
  for opt in res.metadata['axes']['optimizer']:
    at_opt = final['optimizer'] == opt
    ref_mask = at_opt & (final['precision'] == 'float32')
    ref = _per_seed(final, ref_mask, metric, seeds)
    ref_collapses = [collapse(res.where(member=m), metric, threshold)
                     for m in final['member'][ref_mask]]
    keys = dict.fromkeys(zip(*(final[a][at_opt] for a in CELL_AXES)))
    for key in keys:
      cell = dict(zip(CELL_AXES, key))
      mask = at_opt.copy()
      for a, v in cell.items():
        mask &= final[a] == v
      values = _per_seed(final, mask, metric, seeds)
      members = final['member'][mask]
      member_seeds = [int(s) for s in final[grid_lib.SEED][mask]]
      collapses = [collapse(res.where(member=m), metric, threshold)
                   for m in members]
      out.append({
          'optimizer': opt, 'cell': cell, 'label': _label(cell),
          'learning_rate': float(final['learning_rate'][mask][0]),
          'knobs': {k: float(final[k][mask][0]) for k in registry.knobs()
                    if k in final},
          'value': stats.mean_ci(values, level,
                                 bounds=stats.metric_range(metric)),
          'effect': (None if _is_reference(cell) else stats.paired_ci(
              ref, values, level, bounds=stats.difference_range(metric))),
          'collapses': [c for c in collapses if c is not None],
          'collapsed_seeds': [s for s, c in zip(member_seeds, collapses)
                              if c is not None],
          'seed_ids': member_seeds,
          'reference_collapsed': any(c is not None for c in ref_collapses),
          'seeds': len(members), 'members': list(members)})
  return out


def _fmt_ci(ci, signed=False, seeds=None) -> str:
  """``mean [low, high]`` (``stats.format_interval``); ``(n=k)`` when ``k``
  of ``seeds`` seeds were finite."""
  if ci is None or not np.isfinite(ci.mean):
    return '-'
  text = stats.format_interval(ci, '+.4f' if signed else '.4f')
  return text + (f' (n={ci.n})' if seeds is not None and ci.n < seeds else '')


def _collapse_text(row) -> str:
  if not row['collapses']:
    return ''
  steps = sorted(s for s, _ in row['collapses'])
  kinds = sorted({k for _, k in row['collapses']})
  return (f'{" / ".join(kinds)} from step {steps[0]}'
          + (f'-{steps[-1]}' if steps[-1] != steps[0] else '')
          + f' ({len(steps)}/{row["seeds"]} seeds)')


def table(res: results_lib.Results, rows: list[dict]) -> str:
  metric = headline_metric(res)
  lines = []
  width = max(len(r['label']) for r in rows) + 2
  for opt in res.metadata['axes']['optimizer']:
    mine = [r for r in rows if r['optimizer'] == opt]
    lines.append(
        f'{opt} (learning rate {mine[0]["learning_rate"]:g}): final '
        f'{metric}, mean over {mine[0]["seeds"]} seeds '
        f'[{stats.interval_label()}]; effect '
        'vs float32 paired by seed; (n=k): over the k seeds that finished')
    for r in mine:
      lines.append(
          f'  {r["label"]:<{width}}{_fmt_ci(r["value"], seeds=r["seeds"]):>28}'
          f'{_fmt_ci(r["effect"], True, r["seeds"]):>30}  {_collapse_text(r)}')
  compared = sum(r['effect'] is not None and np.isfinite(r['effect'].low)
                 for r in rows)
  if compared > 1:
    lines.append(f'each effect interval is 95% on its own, not adjusted for '
                 f'the {compared} cells compared: with no effect anywhere, '
                 'some would exclude 0 by chance (the explanations below name '
                 'gaps of at least --gap only)')
  threshold = res.metadata.get('chance_threshold')
  if threshold is not None:
    lines.append(f'chance level: test accuracy <= {threshold:.4f} (the '
                 f'commonest class, {res.metadata["chance_accuracy"]:.4f}, + 3 '
                 'binomial standard errors)')
  return '\n'.join(lines)


def large_gap(row, gap: float) -> bool:
  """The mean effect against float32 is at least ``gap`` in size."""
  e = row['effect']
  return e is not None and np.isfinite(e.mean) and abs(e.mean) >= gap


def significant_gap(row, gap: float) -> bool:
  """A large gap whose interval excludes 0."""
  e = row['effect']
  return large_gap(row, gap) and (e.low > 0 or e.high < 0)


# ------------------------------------------------------------- mechanisms


def rounded_constant(name: str, value: float, fmt: str, mode: str) -> float:
  """A knob or constant as the ``constants`` placement rounds it (to nearest
  under stochastic rounding)."""
  mode = 'nearest_even' if mode == 'stochastic' else mode
  return float(precision_lib.quantize(
      np.float32(value), precision_lib.format_knobs(
          precision_lib.get_format(fmt)), precision_lib.get_mode(mode)))


def constant_lines(optimizer: str, hp: dict[str, float], fmt: str,
                   mode: str) -> list[str]:
  """What rounding the optimizer's constants does to the algorithm."""
  lines = []
  for name in _READS[optimizer]:
    value = hp[name]
    new = rounded_constant(name, value, fmt, mode)
    if new == value:
      continue
    text = f'{name} {value:g} -> {new:.9g}'
    if name in _AVERAGES:
      horizon = lambda b: 'infinite' if b >= 1 else f'{1 / (1 - b):.0f} steps'
      text += f' (averaging horizon 1/(1-{name}): {horizon(value)} -> {horizon(new)})'
      if new >= 1 and name in ('b1', 'b2'):
        text += (f'; the moment never moves from 0 and Adam\'s bias '
                 f'correction 1 - {name}^t is 0: 0/0 = NaN at step 1')
      elif new >= 1 and name == 'decay':
        text += ('; the average of squared gradients starts at 0 and never '
                 'moves: every update is lr * g / sqrt(eps)')
      elif new >= 1:
        text += '; the average never forgets'
    elif name == 'eps' and new == 0:
      below = ('the smallest subnormal' if mode == 'toward_zero' else
               'half the smallest subnormal')
      text += (f' (below {below}): the update divides by '
               'sqrt(v) alone, 0/0 = NaN wherever a gradient is exactly 0')
    else:
      text += f' ({(new - value) / value:+.2%})'
    lines.append(text)
  return lines


def _count(total: float) -> str:
  """A counter's mean over seeds: whole counts as integers; a fraction
  (0.5: one seed of two) as one, never rounded to 0."""
  return (f'{total:,.0f}' if total >= 100 or total == round(total) else
          f'{total:.3g}')


def _counts(res: results_lib.Results, members) -> dict[str, Any]:
  """Per counter: the whole-run total (mean over members) and the first
  logged step with a nonzero count."""
  out = {}
  for name in res.columns:
    if not name.startswith(('overflows_', 'underflows_', 'steps_skipped')):
      continue
    totals, firsts = [], []
    for m in members:
      c = res.where(member=m).columns
      v = np.nan_to_num(c[name])
      totals.append(v.sum())
      nz = np.flatnonzero(v > 0)
      if len(nz):
        firsts.append(int(c['step'][nz[0]]))
    if np.mean(totals) > 0:
      out[name] = (float(np.mean(totals)), min(firsts))
  return out


def _lost_until_divergence(columns) -> float:
  """One member's logged ``updates_lost``, averaged over its logs up to the
  one that covers its divergence (NaN where none is finite): a diverged
  run's later updates were NaN, counted as made and never lost, and its
  later logs read 0%."""
  lost = np.asarray(columns['updates_lost'], np.float64)
  diverged = int(columns['diverged_step'][0]) if 'diverged_step' in columns else -1
  if diverged >= 0:
    steps = np.asarray(columns['step'])
    lost = lost[:int(np.searchsorted(steps, diverged)) + 1]
  return float(np.nanmean(lost)) if np.isfinite(lost).any() else np.nan


def explain(res: results_lib.Results, row: dict) -> list[str]:
  """The mechanism of one cell's collapse or gap, from what was logged."""
  cell, members = row['cell'], row['members']
  fmt = precision_lib.get_format(cell['precision'])
  places = placement_lib.AXIS.get(cell['placement'])
  lines = []
  if 'constants' in places:
    hp = {k.name: k.default for k in registry.knobs().values()}
    hp |= components.optimizers.CONSTANTS
    hp |= row['knobs']  # the cell's learning rate and VALUE_KNOBS
    lines += constant_lines(row['optimizer'], hp, cell['precision'],
                            cell['rounding'])
  if 'storage' in places and 'updates_lost' in res.columns:
    lost = [_lost_until_divergence(res.where(member=m).columns)
            for m in members]
    ci = stats.mean_ci(lost, bounds=(0.0, 1.0))
    lines.append(f'updates rounded away (nonzero updates that left their '
                 f'stored parameter unchanged), mean over the run (a diverged '
                 f'run\'s up to its divergence): '
                 f'{stats.format_interval(ci, ".1%")}')
  # What a counted overflow became, and which values past max the count
  # leaves out: ``quantize`` counts a value whose rounded magnitude passed
  # max, not every value beyond max.
  beyond = 'infinity' if fmt.has_inf else 'NaN (no infinity)'
  overflow_to = {
      'toward_zero': 'each saturated to +-max (a value less than a unit in '
                     'the last place past +-max truncates to +-max and is '
                     'not counted)',
      'nearest_even': f'each became {beyond} (a value less than half a unit '
                      'in the last place past +-max rounds to +-max and is '
                      'not counted)',
      'stochastic': f'each became {beyond} (a value less than a unit in the '
                    'last place past +-max rounds to +-max or past it at '
                    'random, counted only past it)',
  }[cell['rounding']]
  for name, (total, first) in _counts(res, members).items():
    kind, _, place = name.partition('_')
    if kind == 'overflows':
      lines.append(f'{place}: {_count(total)} values rounded past '
                   f'+-{fmt.max:g} over the run (summed over steps, mean over '
                   f'seeds; first by step {first}): {overflow_to}')
    elif kind == 'underflows':
      lines.append(f'{place}: {_count(total)} nonzero values flushed to 0 over '
                   f'the run (summed over steps, mean over seeds; first by '
                   f'step {first})')
    else:
      lines.append(f'dynamic loss scaling skipped {_count(total)} steps (first '
                   f'by step {first})')
  if 'loss_scale' in res.columns and cell['loss_scaling'] == 'dynamic':
    final = res.final()
    scales = [final.where(member=m).columns['loss_scale'][0] for m in members]
    lines.append(f'final loss scale {np.nanmean(scales):g} (start '
                 f'{res.metadata["config"]["loss_scale"]:g})')
    if cell['rounding'] == 'toward_zero':
      lines.append('toward zero saturates an overflow at the largest finite '
                   'value: the gradients stay finite, so dynamic scaling '
                   'never backs off (it halves on a non-finite gradient only)')
  if row['collapses']:
    lines.append(f'collapse: {_collapse_text(row)}')
  return lines or ['nothing rounded measurably: no update lost, no overflow '
                   'or underflow counted']


def explanations(res: results_lib.Results, rows: list[dict],
                 gap: float) -> str:
  """Why: every collapse or mean gap of at least ``gap`` (its interval
  printed beside it), then the contrasts the talk asks about: toward zero
  collapses on no seed where nearest-even collapses (called the mode's doing where the
  exact paired sign test over seeds gives p < 0.05: the cells share each
  seed's init and data order, and the seeds whose outcomes differ are
  nearest-even's collapses, so p = 0.5^k for k of them: 5 seeds at least);
  stochastic rounding within ``gap`` of float32 (its whole interval inside
  +-gap: an equivalence test) where nearest-even's mean is ``gap`` or more
  away and its interval excludes 0 (``significant_gap``)."""
  lines = []
  unexplained = {}  # optimizer -> seeds whose float32 reference collapsed
  for r in rows:
    if _is_reference(r['cell']):
      if r['collapses']:
        unexplained[r['optimizer']] = (len(r['collapses']), r['seeds'])
      continue
    if r['reference_collapsed']:
      continue
    if r['collapses'] or large_gap(r, gap):
      what = (_collapse_text(r) if r['collapses'] else
              f'effect {_fmt_ci(r["effect"], True, r["seeds"])}')
      lines.append(f'{r["optimizer"]}, {r["label"]}: {what}')
      lines += [f'    {l}' for l in explain(res, r)]
  by_cell = {(r['optimizer'],) + tuple(r['cell'].values()): r for r in rows}
  contrasts = []
  for (opt, prec, mode, place, scaling), r in by_cell.items():
    if mode != 'nearest_even' or prec == 'float32':
      continue
    other = lambda m: by_cell.get((opt, prec, m, place, scaling))
    tz, sr = other('toward_zero'), other('stochastic')
    # The seeds where only nearest_even collapsed, of those both cells ran
    # (toward_zero collapsed on none); none (partial results): no contrast.
    k = 0 if tz is None else len(set(r['collapsed_seeds'])
                                 & set(tz['seed_ids']))
    if (k and not tz['collapses'] and not r['reference_collapsed']):
      p = scipy_stats.binomtest(k, k, 0.5, alternative='greater').pvalue
      trains = (f'{opt}, {prec} {place}: toward_zero collapses on no seed '
                f'(final {_fmt_ci(tz["value"], seeds=tz["seeds"])})')
      if p < 0.05:
        contrasts.append(
            f'{trains}; changing only the rounding mode to nearest_even '
            f'collapses it ({_collapse_text(r)}; exact paired sign test over '
            f'the {k} seeds where only nearest_even collapsed: p = {p:.2g})')
      else:
        contrasts.append(
            f'{trains} and nearest_even collapses ({_collapse_text(r)}), but '
            f'{len(r["collapses"])} of {r["seeds"]} seeds against 0 of '
            f'{tz["seeds"]} is too few to call it the mode\'s doing '
            f'(exact paired sign test over the {k} seeds where only '
            f'nearest_even collapsed: p = {p:.2g}; p < 0.05 needs 5 of them)')
    if (sr is not None and not sr['collapses'] and significant_gap(r, gap)
        and not r['reference_collapsed']):
      e = sr['effect']
      # nearest_even's side of float32, by the metric's direction.
      worse = (r['effect'].mean < 0) == stats.higher_is_better(
          headline_metric(res))
      nearest = (f'where nearest_even is {"worse" if worse else "better"}: '
                 f'{_fmt_ci(r["effect"], True, r["seeds"])}')
      if -gap < e.low and e.high < gap:
        contrasts.append(
            f'{opt}, {prec} {place}: stochastic rounding '
            f'{"recovers" if worse else "matches"} float32 (effect '
            f'{_fmt_ci(e, True, sr["seeds"])}, within +-{gap:g}) {nearest}')
      elif not large_gap(sr, gap) and e.low <= 0 <= e.high:
        contrasts.append(
            f'{opt}, {prec} {place}: stochastic rounding is not '
            f'distinguishable from float32 at {sr["seeds"]} seeds (effect '
            f'{_fmt_ci(e, True, sr["seeds"])}, wider than +-{gap:g}: not '
            f'shown equal) {nearest}')
  if contrasts:
    lines += ['contrasts:'] + [f'  {c}' for c in contrasts]
  lines += [f'{opt}: its float32 reference collapsed on {k} of {n} seeds; its '
            'cells are not compared with it' for opt, (k, n) in
            unexplained.items()]
  return '\n'.join(lines) if lines else 'no collapse and no gap to explain'


# ------------------------------------------------------------ attribution


def _levels(res: results_lib.Results) -> dict[str, list[str]]:
  """The first two options of the precision, rounding and placement axes."""
  config = res.metadata['config']
  return {a: list(config[f'{a}s'][:2])
          for a in ('precision', 'rounding', 'placement')}


def attribute(res: results_lib.Results, optimizer: str,
              level: float = 0.95) -> tuple[list[str], dict, dict] | str:
  """Shapley values and ANOVA of format x mode x placement, per optimizer.

  On the two-level sub-factorial of the first two options of each of the
  precision, rounding and placement axes that have at least two (without
  loss scaling): ``(components, shapley, anova)``, or a one-line reason
  when it cannot be computed (fewer than two such axes, or no seed whose
  members all finished: ``attribution.component_table``).
  """
  metric = headline_metric(res)
  levels = _levels(res)
  names = [a for a, v in levels.items() if len(v) == 2]
  if len(names) < 2:
    return 'fewer than two of precision, rounding, placement have two options'
  mask = ((res.columns['optimizer'] == optimizer)
          & (res.columns['loss_scaling'] == 'none'))
  for a, values in levels.items():
    mask &= np.isin(res.columns[a], values)
  sub = res.subset(mask)
  baselines = {a: levels[a][0] for a in names}
  try:
    return (names, attribution.shapley(sub, metric, names, baselines, level),
            attribution.anova(sub, metric, names, baselines, level))
  except ValueError as e:
    return str(e)


def attribution_lines(res: results_lib.Results) -> list[str]:
  metric = headline_metric(res)
  lines = []
  for opt in res.metadata['axes']['optimizer']:
    out = attribute(res, opt)
    if isinstance(out, str):
      lines.append(f'{opt}: attribution skipped: {out}')
      continue
    names, shapley, anova = out
    levels = ', '.join(f'{a} {v[0]} -> {v[1]}'
                       for a, v in _levels(res).items() if a in names)
    n, seeds = shapley[names[0]].n, len(res.metadata['axes'][grid_lib.SEED])
    over = (f'{n} seeds' if n == seeds else f'{n} of {seeds} seeds, those '
            'with a diverged member left out')
    lines.append(f'{opt}: Shapley values of final {metric} over the 2^'
                 f'{len(names)} factorial ({levels}), mean over {over} '
                 f'[{stats.interval_label()}]')
    for a in names:
      lines.append(f'  {a:<30}{_fmt_ci(shapley[a], True):>32}')
    lines.append(f'  ANOVA ({attribution.ANOVA_TEXT})')
    for k, ci in anova.items():
      label = ' x '.join(k) if isinstance(k, tuple) else k
      lines.append(f'  {label:<30}{_fmt_ci(ci, True):>32}')
  return lines


def events(res: results_lib.Results, rows: list[dict]) -> str:
  """Every cell's rounding counters that were ever nonzero: whole-run totals,
  mean over seeds, whether or not they moved the metric."""
  lines = []
  for r in rows:
    if _is_reference(r['cell']):
      continue
    counts = _counts(res, r['members'])
    if counts:
      lines.append(f'  {r["optimizer"]}, {r["label"]}: ' + ', '.join(
          f'{n} {_count(total)}' for n, (total, _) in counts.items()))
  head = ('rounding events over the run (summed over steps, so a value '
          'rounded so at several steps counts at each; mean over seeds; '
          'overflows: values '
          'rounded past the format\'s largest finite value; underflows: '
          'nonzero values flushed to 0):')
  return '\n'.join([head] + (lines or ['  none']))


def report(res: results_lib.Results, gap: float) -> str:
  rows = cells(res)
  return '\n'.join([table(res, rows), '', events(res, rows), '', 'why:',
                    explanations(res, rows, gap), '',
                    'attribution (format x mode x placement):',
                    *attribution_lines(res)])

