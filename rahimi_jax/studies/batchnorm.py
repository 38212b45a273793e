"""Simple experiment 3: what batch normalization does, by Santurkar's probes.

Rahimi's talk asks why batch norm speeds training when all we are told is that
it "reduces internal covariate shift". Santurkar et al. (2018) answered with a
measure of that shift, a noisy batch norm that adds shift on purpose yet
trains as well, and probes of the loss along the gradient (the noisy arm here
is a variant: one random scale and shift per unit and step, shared by the
batch, ``components.norms``). This study trains,
per model, one grid: normalization (none, batch, noisy batch, layer) x
learning rates x seeds, paired across arms, every member logging the probes
of ``diagnostics.probes``; it reports accuracy and each probe per arm with
intervals over seeds, and reads the noisy arm as the deciding one: batch
norm's gain follows covariate shift only if a net that has more shift than no
norm at all loses the gain; it follows smoothness if the arms that gain are
the smoother ones.
"""

import dataclasses
from typing import Any

import numpy as np

from rahimi_jax import cli
from rahimi_jax import data as data_lib
from rahimi_jax import engine
from rahimi_jax import grid as grid_lib
from rahimi_jax import registry
from rahimi_jax import results as results_lib
from rahimi_jax import stats
from rahimi_jax import train as train_lib

PROBES = ('covariate_shift', 'landscape', 'preactivation_drift')
# Probe columns a report summarizes (each a time-mean over a run's logs).
SHIFT = ('ics_l2', 'ics_cos', 'preact_mean_drift', 'preact_var_drift')
SMOOTHNESS = ('beta_smoothness', 'grad_change', 'loss_range')
NOISE_KNOBS = ('noise_shift_mean', 'noise_shift_var', 'noise_scale_mean',
               'noise_scale_var')
# The noise of the deciding arm: the norm axis's defaults (variances 0.25)
# cost accuracy at the larger steps (WORKSPACE: CNN -14.7 points at lr 0.2),
# so the arm could not separate the readings there; at 0.05 it keeps most of
# batch norm's gain with 100x batch norm's pre-activation drift.
DEFAULT_NOISE = (('noise_shift_var', 0.05), ('noise_scale_var', 0.05))
_FIRST_ORDER = ('sgd', 'momentum', 'nesterov', 'adam', 'adamw', 'rmsprop')
# The other value knobs, one value for every member (the optimizer's and the
# init's; learning rates are the grid's axis, the noise knobs ``noise``).
VALUE_KNOBS = ('momentum', 'weight_decay', 'init_scale')


# Steps between the probes by default: each costs several gradients.
PROBE_EVERY = 100


@dataclasses.dataclass(frozen=True)
class BatchNormConfig:
  """The batch-norm study: one grid per model.

  Attributes:
    dataset: a name in ``data.DATASETS`` (a classification task).
    models: names in ``models.MODELS``; each gets its own grid.
    width, depth: the deep MLP's and deep linear net's hidden width and
      number of hidden layers (every layer reads the norm axis).
    channels: the CNN's channels per convolution.
    norms: options of the norm axis; must include ``none`` (the baseline)
      and ``batch``.
    optimizer: a first-order optimizer.
    learning_rates: at least three (batch norm's benefit shows at larger
      steps).
    noise: noisy batch norm's knobs (``NOISE_KNOBS``); those left out take
      the norm axis's defaults (``DEFAULT_NOISE`` sets the variances).
    values: ``(knob, value)`` of ``VALUE_KNOBS`` (or a dict), one value for
      every member; the others keep their defaults.
    seeds, steps, batch_size: as in ``AblationConfig``.
    log_every: steps between evaluations and probes (``None``:
      ``PROBE_EVERY``, or ``steps`` when fewer).
  """
  dataset: str = 'mnist1d'
  models: tuple[str, ...] = ('cnn', 'mlp', 'deep_linear')
  width: int = 64
  depth: int = 8
  channels: tuple[int, ...] = (25, 25, 25)
  norms: tuple[str, ...] = ('none', 'batch', 'noisy_batch', 'layer')
  optimizer: str = 'sgd'
  learning_rates: tuple[float, ...] = (0.01, 0.05, 0.2)
  noise: tuple[tuple[str, float], ...] = DEFAULT_NOISE
  values: tuple[tuple[str, float], ...] = ()
  seeds: int = 5
  steps: int = 1000
  batch_size: int = 100
  log_every: int | None = None  # None: PROBE_EVERY, or steps when fewer

  def __post_init__(self):
    if self.log_every is None and isinstance(self.steps, int):
      object.__setattr__(self, 'log_every', min(PROBE_EVERY, self.steps))
    for name in ('models', 'channels', 'norms', 'learning_rates'):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    object.__setattr__(self, 'noise', tuple(dict(self.noise).items()))
    if data_lib.task_of(self.dataset) != 'classification':
      raise ValueError(f'dataset {self.dataset!r} is a regression task; the '
                       'batch-norm study reads accuracy (use digits or '
                       'mnist1d).')
    from rahimi_jax import models  # pylint: disable=g-import-not-at-top
    registry.check_options(models.MODELS, self.models, 'models')
    registry.get_axis('norm').check(self.norms)
    for needed in ('none', 'batch'):
      if needed not in self.norms:
        raise ValueError(f'norms must include {needed!r} (the study compares '
                         f'with it); got {", ".join(self.norms)}.')
    if self.optimizer not in _FIRST_ORDER:
      raise ValueError(f'optimizer {self.optimizer!r}: accepted '
                       f'{", ".join(_FIRST_ORDER)}.')
    if len(self.learning_rates) < 3:
      raise ValueError('learning_rates: at least three (batch norm helps at '
                       f'the larger ones); got {list(self.learning_rates)}.')
    for lr in self.learning_rates:
      if not lr > 0:
        raise ValueError(f'learning_rates must be > 0; got {lr!r}.')
    unknown = sorted(set(dict(self.noise)) - set(NOISE_KNOBS))
    if unknown:
      raise ValueError(f'noise: unknown knob(s) {", ".join(unknown)}; '
                       f'accepted: {", ".join(NOISE_KNOBS)}.')
    for name, value in self.noise:
      registry.knobs()[name].check([value])
    object.__setattr__(self, 'values', cli.parse_single_knobs(
        self.values, VALUE_KNOBS, 'the grids vary the learning rate only',
        {'optimizer': (self.optimizer,)}))
    if not (isinstance(self.seeds, int) and self.seeds >= 2):
      raise ValueError(f'seeds: intervals need at least 2; got {self.seeds!r}.')
    for name in ('width', 'depth'):
      value = getattr(self, name)
      if not (isinstance(value, int) and 1 <= value <= 64):
        raise ValueError(f'{name} must be an integer in [1, 64]; got '
                         f'{value!r}.')
    for model in self.models:
      self.train_config(model)  # model name, widths, probes the model lacks

  def hidden(self, model: str) -> tuple[int, ...]:
    return self.channels if model == 'cnn' else (self.width,) * self.depth

  def grid(self) -> grid_lib.Grid:
    noise = [grid_lib.Values(name, (value,)) for name, value in self.noise]
    return grid_lib.Grid(grid_lib.Choice('norm', self.norms),
                         grid_lib.Choice('optimizer', (self.optimizer,)),
                         grid_lib.Values('learning_rate', self.learning_rates),
                         *noise,
                         *(grid_lib.Values(k, (v,)) for k, v in self.values),
                         grid_lib.Seeds(self.seeds))

  def train_config(self, model: str) -> train_lib.TrainConfig:
    return train_lib.TrainConfig(
        model=model, hidden=self.hidden(model), steps=self.steps,
        batch_size=self.batch_size, log_every=self.log_every,
        diagnostics=PROBES,
        options=(('norm', self.norms), ('optimizer', (self.optimizer,))))

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def run(config: BatchNormConfig, **engine_kwargs
        ) -> dict[str, results_lib.Results]:
  """Trains one grid per model (each one program); ``{model: Results}``.

  On a CPU the norms are switched (``engine.run``'s default ``switch='auto'``):
  the members run a norm at a time, each computing only its own, in the one
  program: 1.9-2.1x faster than relaxed (every member computing all four),
  as fast to compile.
  """
  dataset = data_lib.get_dataset(config.dataset)()
  grid = config.grid()
  out = {}
  for model in config.models:
    metadata = {'config': config.to_dict(), 'task': dataset.task,
                'model': model}
    out[model] = engine.run(config.train_config(model).for_grid(grid), grid,
                            dataset, metadata=metadata, **engine_kwargs)
  return out


# ----------------------------------------------------------------- reading


def time_means(res: results_lib.Results, metrics) -> results_lib.Results:
  """One row per member: its final row, with each of ``metrics`` replaced by
  its mean over the run's logs after step 0 (NaN once it diverged)."""
  final = res.final()
  cols = res.columns
  later = cols['step'] > 0
  index = {m: i for i, m in enumerate(final.columns['member'])}
  rows = np.asarray([index[m] for m in cols['member'][later]])
  columns = dict(final.columns)
  for metric in metrics:
    values = np.asarray(cols[metric][later], np.float64)
    total = np.zeros(len(index))
    np.add.at(total, rows, values)  # NaN (diverged) stays NaN
    columns[metric] = total / np.maximum(np.bincount(rows, minlength=len(index)), 1)
  return results_lib.Results(columns, final.metadata)


def _ci(interval, fmt='.3g', signed=False) -> str:
  return stats.format_interval(interval, ('+' if signed else '') + fmt)


def _percent(interval, signed=False) -> str:
  scaled = stats.Interval(*(100 * np.asarray(interval[:3])), interval.n)
  return _ci(scaled, '.1f', signed)


def table(means: results_lib.Results, level: float = 0.95) -> str:
  """Per learning rate and norm: accuracy and each probe, mean [interval];
  ``(k/n div.)``: members that diverged, ``(j/n non-finite)``: members that
  finished with the reading not finite (a probe that overflowed), each left
  out of the mean."""
  metrics = ['test_accuracy', *[m for m in (*SHIFT, *SMOOTHNESS)
                                if m in means.columns]]
  lines = [f'{"lr":>7} {"norm":<12} ' + ' '.join(f'{m:>26}' for m in metrics)]
  for lr in means.metadata['axes']['learning_rate']:
    at = means.where(learning_rate=lr)
    per_metric = {m: {s.value: s for s in at.summarize(m, 'norm', level)}
                  for m in metrics}
    for norm in means.metadata['axes']['norm']:
      cells = []
      for m in metrics:
        s = per_metric[m][norm]
        text = (_percent(s.interval) if m == 'test_accuracy'
                else _ci(s.interval))
        if s.diverged:
          text += f' ({s.diverged}/{s.members} div.)'
        if s.non_finite:
          text += f' ({s.non_finite}/{s.members} non-finite)'
        cells.append(f'{text:>26}')
      lines.append(f'{lr:>7g} {norm:<12} ' + ' '.join(cells))
  return '\n'.join(lines)


def _effect(at: results_lib.Results, metric: str, arm: str, level: float
            ) -> results_lib.Effect:
  rows = {e.value: e for e in at.compare(metric, 'norm', 'none', level)}
  return rows[arm]


def _known(*intervals: stats.Interval) -> bool:
  """Whether every interval exists (two or more seeds where both arms
  finished); a missing one decides nothing."""
  return all(np.isfinite(i.low) and np.isfinite(i.high) for i in intervals)


def _seeds_used(**effects: results_lib.Effect) -> str:
  """Over how many seeds each of an arm's effects is, where pairs were
  dropped: a run diverged, or finished with the reading not finite (a probe
  that overflowed)."""
  notes = {}  # the note -> the effects it is of
  for name, effect in effects.items():
    if not effect.dropped:
      continue
    diverged = effect.baseline_diverged + effect.value_diverged
    overflowed = _overflowed(effect)
    why = '; '.join([f'{diverged} run(s) diverged'] * bool(diverged) + [
        f'{overflowed} finished with the reading overflowed'] * bool(
            overflowed))
    note = (f'over {effect.interval.n} seed(s), {effect.dropped} of '
            f'{effect.pairs} pairs dropped ({why})')
    notes.setdefault(note, []).append(name.replace('_', ' '))
  return ''.join(f' {", ".join(names)} {note}.'
                 for note, names in notes.items())


def _overflowed(effect: results_lib.Effect) -> int:
  """Runs that finished with the effect's reading not finite."""
  return effect.baseline_non_finite + effect.value_non_finite


_TOO_FEW = ('undecided: an interval needs two seeds where both arms finished '
            '(see the counts above).')


def _smoothness(gain, beta, n_gain=None, n_beta=None, overflowed=0,
                n_overflowed=0, kept=None) -> str:
  """What the effective beta says of batch norm's gain (paired intervals;
  ``overflowed``: runs whose beta reading overflowed, left out; ``kept``:
  noisy batch norm's accuracy minus batch norm's)."""
  if not _known(gain, beta):
    return _TOO_FEW
  if overflowed:
    return (f'undecided: the beta reading overflowed in {overflowed} run(s), '
            'left out; those are the roughest runs, and without them the '
            'comparison favours the rougher arm.')
  if gain.high < 0:
    return 'batch norm loses accuracy here: no gain to explain.'
  if not gain.low > 0:
    return ('undecided: no gain shown at these seeds (the accuracy interval '
            'reaches 0), so nothing for smoothness to explain.')
  if beta.low > 0:
    return ('batch norm gains but is LESS smooth (larger effective beta) than '
            'no norm: the gain does not follow this smoothness measure.')
  if not beta.high < 0:
    return 'undecided at these seeds (the beta interval crosses zero).'
  text = 'batch norm gains and is smoother (smaller effective beta) than no norm'
  if n_gain is None:
    return text + ': consistent with smoothness.'
  if not _known(n_gain, n_beta):
    return text + ': consistent with smoothness (noisy batch norm: no interval).'
  if n_overflowed:
    return text + (': consistent with smoothness (noisy batch norm: its beta '
                   f'reading overflowed in {n_overflowed} run(s); undecided).')
  if not n_gain.high < 0 and not n_gain.low > 0:
    return text + (': consistent with smoothness (noisy batch norm: its '
                   'gain is undecided at these seeds).')
  if n_gain.high < 0:  # noisy batch norm loses accuracy
    if n_beta.high < 0:
      return text + (', but noisy batch norm is smoother too and LOSES '
                     'accuracy: smoothness does not explain the gain alone.')
    if n_beta.low > 0:
      return text + (', and noisy batch norm is less smooth and loses '
                     'accuracy: consistent with smoothness.')
    return text + (': consistent with smoothness (noisy batch norm loses '
                   'accuracy; whether it is smoother is undecided).')
  if n_beta.high < 0:
    if kept is not None and _known(kept) and kept.high < 0:
      return text + (', and so does noisy batch norm, but it gains less than '
                     f'batch norm ({_percent(kept, True)} points against it): '
                     'the gains follow smoothness in sign; their difference '
                     'is not read here.')
    return text + (', and so does noisy batch norm: the gain follows '
                   'smoothness.')
  if n_beta.low > 0:
    return text + (', but noisy batch norm gains while LESS smooth: '
                   'smoothness does not explain all of it.')
  return text + ('; noisy batch norm gains too, and whether it is smoother is '
                 'undecided at these seeds (its beta interval crosses zero).')


def _shift(gain, n_gain, n_shift, n_drift, level: float, kept=None) -> str:
  """What noisy batch norm's added shift says of batch norm's gain.

  ``n_shift`` and ``n_drift`` are intervals at ``level``, half the others'
  error rate (Bonferroni: "more shift" is either reading above 0).
  ``kept``: noisy batch norm's accuracy minus batch norm's (paired), the
  comparison Santurkar et al. read (noisy batch norm trains as well as batch
  norm); a noisy arm that gains over no norm but loses to batch norm keeps
  only part of the gain, and the part it loses may follow the shift.
  """
  if not _known(gain, n_gain, n_shift, n_drift,
                *(() if kept is None else (kept,))):
    return _TOO_FEW
  if not (n_shift.low > 0 or n_drift.low > 0):
    where = lambda i: (f'{_ci(i, signed=True)} '  # pylint: disable=unnecessary-lambda-assignment
                       + ('is below 0' if i.high < 0 else 'reaches 0'))
    return ('undecided: noisy batch norm\'s added shift is not shown at these '
            f'seeds (at {results_lib.percent(level)} each, Bonferroni, wider '
            f'than the table\'s: its ICS interval {where(n_shift)}, its drift '
            f'interval {where(n_drift)}), and the test needs it.')
  if n_gain.high < 0:
    return 'the added shift costs accuracy here: consistent with the folklore.'
  if not n_gain.low > 0:
    return ('undecided: noisy batch norm has MORE shift than no norm, but its '
            'accuracy effect crosses zero.')
  if not gain.low > 0:
    return ('undecided: noisy batch norm has MORE shift and gains, but batch '
            'norm\'s own gain is not shown at these seeds.')
  more = ('noisy batch norm has MORE shift than no norm (its readings '
          'include the noise it redraws each step: the shift it adds by '
          'design) and still gains')
  if kept is None:
    return more + ': the gain does not follow a reduction of covariate shift.'
  if kept.high < 0:
    return (more + f', but less than batch norm ({_percent(kept, True)} '
            'points against it): the part of the gain it keeps does not '
            'follow a reduction of covariate shift; the part it loses may.')
  if kept.low > 0:
    return more + (f', more than batch norm ({_percent(kept, True)} '
                   'points): the gain does not follow a reduction of '
                   'covariate shift.')
  # A loss to batch norm not shown is not shown absent (the interval
  # reaches 0): the part kept is read, the whole gain is undecided.
  return more + (f' (against batch norm {_percent(kept, True)} points: '
                 'whether it keeps all of batch norm\'s gain is undecided '
                 'at these seeds): the part of the gain it keeps does not '
                 'follow a reduction of covariate shift.')


def verdicts(means: results_lib.Results, level: float = 0.95) -> list[str]:
  """Per learning rate: batch norm's gain, and what the noisy arm says.

  Effects are paired against no norm (same seed). Covariate shift decides
  nothing if noisy batch norm, with more shift than no norm, keeps the gain;
  smoothness is supported when the arms that gain have a smaller effective
  beta than no norm. "Undecided" where an interval crosses zero or is
  missing (fewer than two seeds where both arms finished).
  """
  lines = []
  noisy = 'noisy_batch' in means.metadata['axes']['norm']
  for lr in means.metadata['axes']['learning_rate']:
    at = means.where(learning_rate=lr)
    gain, beta, shift = (_effect(at, m, 'batch', level) for m in (
        'test_accuracy', 'beta_smoothness', 'ics_l2'))
    line = [f'lr {lr:g}: batch norm vs none: accuracy '
            f'{_percent(gain.interval, True)} points, ICS (l2) '
            f'{_ci(shift.interval, signed=True)}, beta-smoothness '
            f'{_ci(beta.interval, signed=True)}.' + _seeds_used(
                accuracy=gain, ICS=shift, beta_smoothness=beta)]
    if noisy:
      n_gain, n_shift, n_drift, n_beta = (
          _effect(at, m, 'noisy_batch', level) for m in (
              'test_accuracy', 'ics_l2', 'preact_mean_drift',
              'beta_smoothness'))
      # Santurkar et al.'s test: does the noisy arm train as well as batch
      # norm (not only better than no norm)?
      kept = {e.value: e for e in at.compare('test_accuracy', 'norm', 'batch',
                                             level)}['noisy_batch']
      # "More shift" is either of two readings above 0: each tested at half
      # the error rate (Bonferroni), so the claim keeps the level's.
      bonferroni = stats.bonferroni(level, 2)
      t_shift, t_drift = (_effect(at, m, 'noisy_batch', bonferroni).interval
                          for m in ('ics_l2', 'preact_mean_drift'))
      line.append(
          f'  noisy batch norm vs none: accuracy '
          f'{_percent(n_gain.interval, True)} points (vs batch norm '
          f'{_percent(kept.interval, True)}), ICS (l2) '
          f'{_ci(n_shift.interval, signed=True)}, pre-activation mean drift '
          f'{_ci(n_drift.interval, signed=True)}, beta-smoothness '
          f'{_ci(n_beta.interval, signed=True)}.' + _seeds_used(
              accuracy=n_gain, accuracy_vs_batch_norm=kept, ICS=n_shift,
              drift=n_drift, beta_smoothness=n_beta))
      line.append('  => covariate shift: ' + _shift(
          gain.interval, n_gain.interval, t_shift, t_drift, bonferroni,
          kept.interval))
      line.append('  => smoothness: ' + _smoothness(
          gain.interval, beta.interval, n_gain.interval, n_beta.interval,
          _overflowed(beta), _overflowed(n_beta), kept.interval))
    else:
      line.append('  => smoothness: ' + _smoothness(
          gain.interval, beta.interval, overflowed=_overflowed(beta)))
    lines.extend(line)
  return lines


def report(results: dict[str, results_lib.Results], level: float = 0.95
           ) -> str:
  """Per model: the table of arms and the verdicts."""
  parts = []
  for model, res in results.items():
    metrics = [m for m in (*SHIFT, *SMOOTHNESS) if m in res.columns]
    means = time_means(res, metrics)
    rows, said = table(means, level), verdicts(means, level)
    parts += [f'== {model}: final test accuracy (%), probes averaged over '
              f'training; mean over {len(np.unique(res.columns["seed"]))} '
              f'seeds [{stats.interval_label(level)}]',
              rows, *said, '']
  return '\n'.join(parts)


def summary(results: dict[str, results_lib.Results]) -> results_lib.Results:
  """One row per (model, member): the final metrics and each probe's
  time-mean (``time_means``), without the per-layer columns."""
  parts = []
  for model, res in results.items():
    probes = [m for m in (*SHIFT, *SMOOTHNESS) if m in res.columns]
    means = time_means(res, probes)
    keep = [c for c in means.columns
            if not c.rsplit('_layer', 1)[-1].isdigit()]
    columns = {'model': np.full(len(means), model)}
    columns |= {c: means.columns[c] for c in keep}
    for metric in (*SHIFT, *SMOOTHNESS):  # models without a probe's hook
      columns.setdefault(metric, np.full(len(means), np.nan))
    parts.append(results_lib.Results(columns, means.metadata))
  first = next(iter(results.values())).metadata
  metadata = {**first, 'axes': {'model': list(results), **first['axes']}}
  metadata.pop('model', None)
  return results_lib.concat(parts, metadata)
