"""The ablation study: a config, its grid, and one call that runs it.

``AblationConfig`` is what ``python -m experiments.ablate`` builds from flags;
it validates every field on construction, so bad input fails before anything
compiles. ``run(config)`` loads the data, builds the grid and the training
function, and runs the grid as one program.
"""

import dataclasses
from typing import Any

from rahimi_jax import cli
from rahimi_jax import data as data_lib
from rahimi_jax import grid as grid_lib
from rahimi_jax import results as results_lib
from rahimi_jax import train as train_lib
from rahimi_jax.components import relaxed

# Flag-level choice axes (plural, as the launcher names them) -> train axes.
CHOICE_FIELDS = {'optimizers': 'optimizer', 'norms': 'norm',
                 'inits': 'init', 'activations': 'activation'}
# Defaults of the choice fields the chosen model reads; others stay unset.
DEFAULT_OPTIONS = {
    'optimizers': ('sgd', 'momentum', 'adam'),
    'norms': ('none', 'batch', 'layer'),
    'inits': ('lecun_normal', 'he_normal', 'orthogonal'),
}


@dataclasses.dataclass(frozen=True)
class AblationConfig:
  """An ablation study over choice axes, learning rates and seeds.

  A choice field left as ``None`` takes its default when the model reads that
  axis (e.g. ``norms`` for the MLP) and is not varied otherwise.
  """
  dataset: str = 'digits'
  model: str = 'mlp'
  hidden: tuple[int, ...] = (64, 64)
  optimizers: tuple[str, ...] | None = None
  norms: tuple[str, ...] | None = None
  inits: tuple[str, ...] | None = None
  activations: tuple[str, ...] | None = None
  lrs: tuple[float, ...] = (0.01,)
  seeds: int = 4
  steps: int = 500
  batch_size: int = 64
  log_every: int | None = None  # None: TrainConfig's default

  def __post_init__(self):
    data_lib.get_dataset(self.dataset)
    reads = train_lib.TrainConfig(model=self.model).reads
    for field, axis in CHOICE_FIELDS.items():
      value = getattr(self, field)
      if isinstance(value, str):
        value = tuple(s.strip() for s in value.split(',') if s.strip())
      if value is None and axis in reads and field in DEFAULT_OPTIONS:
        value = DEFAULT_OPTIONS[field]
      if value is not None:
        registry = train_lib.CHOICE_AXES[axis][0]
        if axis not in reads:
          raise ValueError(f'{field}: model {self.model!r} has no {axis} axis; '
                           f'it reads: {", ".join(reads)}.')
        value = relaxed.check_options(registry, value, field)
      object.__setattr__(self, field, value)
    object.__setattr__(self, 'lrs', cli.parse_numbers('lrs', [str(v) for v in (
        self.lrs.split(',') if isinstance(self.lrs, str) else self.lrs)]))
    if (not isinstance(self.seeds, int) or isinstance(self.seeds, bool)
        or self.seeds < 1):
      raise ValueError(f'seeds must be a count >= 1; got {self.seeds!r}.')
    train_config = self.train_config()  # validates steps, widths, log_every
    object.__setattr__(self, 'log_every', train_config.log_every)  # default
    train_lib.check_task(train_config,
                         data_lib.get_dataset(self.dataset)().task)

  def grid(self) -> grid_lib.Grid:
    axes = [grid_lib.Choice(axis, getattr(self, field))
            for field, axis in CHOICE_FIELDS.items()
            if getattr(self, field) is not None]
    axes.append(grid_lib.Values('learning_rate', self.lrs))
    axes.append(grid_lib.Seeds(self.seeds))
    return grid_lib.Grid(*axes)

  def train_config(self) -> train_lib.TrainConfig:
    return train_lib.TrainConfig(
        model=self.model, hidden=self.hidden, steps=self.steps,
        batch_size=self.batch_size, log_every=self.log_every,
        options=tuple((axis, getattr(self, field))
                      for field, axis in CHOICE_FIELDS.items()
                      if getattr(self, field) is not None))

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def run(config: AblationConfig, **engine_kwargs) -> results_lib.Results:
  """Trains every member of ``config``'s grid.

  One program, or one per cell of ``partition=`` (see ``train.run_grid``).
  """
  dataset = data_lib.get_dataset(config.dataset)()
  metadata = {'config': config.to_dict(), 'task': dataset.task}
  return train_lib.run_grid(config.train_config(), config.grid(), dataset,
                            metadata=metadata, **engine_kwargs)


def headline_metric(results: results_lib.Results) -> str:
  """The metric a summary table reports: test accuracy, else test loss."""
  return 'test_accuracy' if 'test_accuracy' in results.columns else 'test_loss'
