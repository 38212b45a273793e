"""The ablation study: a config, its grid, and one call that runs it.

``AblationConfig`` is what ``python -m experiments.ablate`` builds from flags;
it validates every field on construction, so bad input fails before anything
compiles. ``run(config)`` loads the data, builds the grid and the training
function, and runs the grid as one program.
"""

from collections.abc import Mapping, Sequence
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

# The value knob every ablation grid varies (at its default when not given).
ALWAYS_VARIED = 'learning_rate'


def _pairs(mapping) -> tuple[tuple[str, Any], ...]:
  return tuple(dict(mapping or {}).items())


@dataclasses.dataclass(frozen=True)
class AblationConfig:
  """An ablation study over choice axes, value knobs and seeds.

  Attributes:
    dataset: a name in ``data.DATASETS``.
    model: a name in ``models.MODELS``.
    hidden: hidden widths.
    options: choice axis (a name in ``registry.AXES``) -> options to vary (a
      sequence, or a comma string as a launcher flag gives). An axis not
      given varies its declared ``study`` options where the model reads it,
      and stays at its default otherwise.
    values: value knob (a name in ``registry.knobs()``) -> values to vary
      (numbers, or a comma string). ``learning_rate`` defaults to its
      declared default, as a grid axis; other knobs not given stay at their
      declared defaults.
    seeds: seeds per combination.
    steps, batch_size, log_every: as in ``TrainConfig``.

  Both mappings are stored as tuples of pairs (the config is hashable),
  every axis and knob in its registry's order.
  """
  dataset: str = 'digits'
  model: str = 'mlp'
  hidden: tuple[int, ...] = (64, 64)
  options: Mapping[str, Sequence[str] | str] | None = None
  values: Mapping[str, Sequence[float] | str] | None = None
  seeds: int = 4
  steps: int = 500
  batch_size: int = 64
  log_every: int | None = None  # None: TrainConfig's default

  def __post_init__(self):
    data_lib.get_dataset(self.dataset)
    reads = train_lib.TrainConfig(model=self.model).reads
    given = dict(self.options or {})
    for axis in given:
      registry.get_axis(axis)
    options = {}
    for name, axis in registry.AXES.items():
      value = given.get(name)
      if isinstance(value, str):
        value = [s.strip() for s in value.split(',') if s.strip()]
      if value is None and name in reads:
        value = axis.study
      if value is None:
        continue
      if name not in reads:
        raise ValueError(f'{axis.flag}: model {self.model!r} has no {name} '
                         f'axis; it reads: {", ".join(reads)}.')
      options[name] = registry.check_options(axis.options, value, axis.flag)
    object.__setattr__(self, 'options', _pairs(options))
    knobs = registry.knobs()
    user_given = dict(self.values or {})
    given = {ALWAYS_VARIED: (knobs[ALWAYS_VARIED].default,), **user_given}
    parsed = {name: cli.parse_knob(name, items)
              for name, items in given.items()}
    object.__setattr__(self, 'values', tuple(
        (k, parsed[k]) for k in knobs if k in parsed))
    chosen = dict(self.options)
    for name in user_given:  # read by an option (TrainConfig: by a member)
      owner = registry.knob_axis(name)
      if owner.name in chosen:
        registry.check_knob_read(
            name, chosen[owner.name],
            f'; add one of those or drop the {name} values (--{name})')
    if (not isinstance(self.seeds, int) or isinstance(self.seeds, bool)
        or self.seeds < 1):
      raise ValueError(f'seeds must be a count >= 1; got {self.seeds!r}.')
    train_config = self.train_config()  # validates steps, widths, log_every
    object.__setattr__(self, 'log_every', train_config.log_every)  # default
    train_config.for_grid(self.grid()).check_knobs_read(self.grid())
    train_lib.check_task(train_config, data_lib.task_of(self.dataset))

  def grid(self) -> grid_lib.Grid:
    axes = [grid_lib.Choice(axis, names) for axis, names in self.options]
    axes += [grid_lib.Values(knob, vals) for knob, vals in self.values]
    axes.append(grid_lib.Seeds(self.seeds))
    return grid_lib.Grid(*axes)

  def train_config(self) -> train_lib.TrainConfig:
    return train_lib.TrainConfig(
        model=self.model, hidden=self.hidden, steps=self.steps,
        batch_size=self.batch_size, log_every=self.log_every,
        options=self.options, rounding_events=True)

  def to_dict(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out['options'] = {a: list(names) for a, names in self.options}
    out['values'] = {k: list(vals) for k, vals in self.values}
    return out


def run(config: AblationConfig, **engine_kwargs) -> results_lib.Results:
  """Trains every member of ``config``'s grid.

  One program, or one per cell of ``partition=`` (see ``engine.run``).
  """
  dataset = data_lib.get_dataset(config.dataset)()
  metadata = {'config': config.to_dict(), 'task': dataset.task}
  return engine.run(config.train_config(), config.grid(), dataset,
                    metadata=metadata, **engine_kwargs)


def headline_metric(results: results_lib.Results) -> str:
  """The metric a summary table reports: test accuracy, else test loss."""
  return 'test_accuracy' if 'test_accuracy' in results.columns else 'test_loss'


# The axes that say what a member rounds (components.precision, .placement).
ROUNDING_AXES = ('precision', 'rounding', 'placement', 'loss_scaling')


def rounding_lines(res: results_lib.Results, level: float = 0.95
                   ) -> list[str]:
  """Why a low precision costs accuracy: the updates rounding undid, per
  combination of the rounding axes the grid varies (one line for the whole
  grid where it varies none: a single precision), with the ``level``
  interval over seeds and the members left out of it."""
  if 'updates_lost' not in res.columns:
    return []
  axes = [a for a in ROUNDING_AXES if len(res.metadata['axes'].get(a, ())) > 1]
  fixed = [str(res.metadata['axes'][a][0]) for a in ROUNDING_AXES
           if len(res.metadata['axes'].get(a, ())) == 1]
  final = res.final().columns
  keys = dict.fromkeys(zip(*(final[a] for a in axes))) if axes else {(): None}
  header = ('updates lost to rounding over the last log interval (nonzero '
            'updates that left their stored parameter unchanged), mean over '
            f'seeds [{results_lib.percent(level)} interval] of the members '
            'that finished (diverged ones, and ones whose updates_lost is not '
            'finite, are left out and counted). Stochastic rounding leaves as '
            'many unchanged, but moves a weight a whole ulp with probability '
            'update/ulp, so on average nothing is lost; nearest-even and '
            'toward zero lose them for good.')
  lines = []
  for key in keys:
    at = np.ones(len(final[grid_lib.SEED]), bool)
    for a, v in zip(axes, key):
      at &= final[a] == v
    m = results_lib.seed_mean({c: v[at] for c, v in final.items()},
                              'updates_lost', level)
    label = ' '.join(map(str, key)) or ' '.join(fixed) or 'all members'
    left = f'{m.diverged}/{m.members} diverged'
    if m.non_finite:
      left += f', {m.non_finite}/{m.members} finished, updates_lost not finite'
    # float32 loses ~0.02% of updates too: not "0.0% [0.0%, 0.0%]".
    fmt = '.1%' if abs(m.interval.mean) >= 0.01 else '.3%'
    lines.append(f'  {label:<36}{stats.format_interval(m.interval, fmt)}'
                 f'  ({m.interval.n} seeds; {left})')
  return [header, *lines]
