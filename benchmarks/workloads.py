"""What grid_throughput times: workloads, regimes, and one grid of a workload.

``Bench`` is what every method takes (one workload at one grid size: config,
grid, data) and ``Timing`` what each returns. JAX and rahimi_jax are imported
lazily, so that the launcher's ``--help`` stays fast.
"""

import dataclasses
from typing import Any, NamedTuple

import numpy as np


@dataclasses.dataclass(frozen=True)
class Workload:
  """One model + dataset + batching; a grid varies its learning rate."""
  model: str
  hidden: tuple[int, ...]
  dataset: str
  dataset_kwargs: tuple[tuple[str, Any], ...]
  batch_size: int  # 0: full batch
  lr_range: tuple[float, float]  # the grid's learning rates: geomspace(*lr_range, G)
  about: str


WORKLOADS: dict[str, Workload] = {
    'deep_linear': Workload(
        'deep_linear', (6,), 'synthetic',
        (('n_train', 1000), ('in_dim', 6), ('out_dim', 10)), 0, (1e-3, 2e-2),
        "the talk's 10x6x6 two-layer linear net, 1000 samples, full batch"),
    'mlp32': Workload('mlp', (32,), 'digits', (), 32, (1e-3, 5e-2),
                      'MLP 64-32-10 on digits, batch 32'),
    'mlp128': Workload('mlp', (128,), 'digits', (), 128, (1e-3, 5e-2),
                       'MLP 64-128-10 on digits, batch 128'),
}

# regime -> (workloads, default steps)
REGIMES: dict[str, tuple[tuple[str, ...], int]] = {
    'small': (('deep_linear', 'mlp32'), 200),
    'compute': (('mlp128',), 300),
}


class Timing(NamedTuple):
  """What one method measured on the members it ran."""
  compile_s: float
  run_s: float  # for ``members`` only
  members: np.ndarray  # indices of the members run
  final_train_loss: np.ndarray  # [len(members)]
  program_bytes: int | None = None
  note: str = ''
  chunk: dict[str, Any] | None = None  # (a): the engine's chunk_choice


def run_flops(config, grid, data) -> float:
  """Matmul FLOPs of one member's run, counted in the programs that run.

  ``config.steps`` training steps and ``len(config.log_steps())``
  evaluations, each counted by ``engine.step_flops`` on one member's step and
  log functions (so a model that orders its products cheaply, like
  ``deep_linear``, is credited with the FLOPs it does, not those of the
  textbook order). Only dots and convolutions count: ``deep_linear``'s
  products of its small weight factors run as unrolled multiply-adds and
  are left out (0.9% of the talk's net's step: the rates are slight
  underestimates).
  """
  from rahimi_jax import engine  # pylint: disable=g-import-not-at-top
  step = engine.step_flops(config, grid, data)
  log = engine.step_flops(config, grid, data, evaluation=True)
  return float(config.steps * step + len(config.log_steps()) * log)


class Bench:
  """One workload at one grid size: the config, grid and data every method uses."""

  def __init__(self, workload: str, g: int, steps: int, data,
               chunk_size: int | str | None = None):
    from rahimi_jax import grid as grid_lib  # pylint: disable=g-import-not-at-top
    from rahimi_jax import train as train_lib  # pylint: disable=g-import-not-at-top
    self.name = workload
    self.workload = w = WORKLOADS[workload]
    self.steps = steps
    self.chunk_size = chunk_size
    self.data = data
    self.lrs = np.geomspace(*w.lr_range, g).astype(np.float32)
    self.grid = grid_lib.Grid(grid_lib.Values('learning_rate', tuple(self.lrs)),
                              grid_lib.Seeds((0,)))
    if len(self.grid) != g:
      raise ValueError(f'{workload}: G={g} learning rates are not distinct in '
                       f'float32; lower G or widen the range.')
    # log_every=steps: evaluate at step 0 and at the end, in every method.
    self.config = train_lib.TrainConfig(
        model=w.model, hidden=w.hidden, steps=steps, batch_size=w.batch_size,
        log_every=steps).for_grid(self.grid)
    self._init = None

  def __len__(self):
    return len(self.grid)

  @property
  def full_batch(self) -> bool:
    bs = self.workload.batch_size
    return bs == 0 or bs >= self.data.n_train

  @property
  def batch(self) -> int:
    return self.data.n_train if self.full_batch else self.workload.batch_size

  def flops_per_member(self) -> float:
    """Matmul FLOPs of one run (``run_flops``)."""
    return run_flops(self.config, self.grid, self.data)

  def run_grid(self):
    """(a): the whole grid through the engine (its compile cache reused)."""
    from rahimi_jax import program  # pylint: disable=g-import-not-at-top
    from rahimi_jax import train as train_lib  # pylint: disable=g-import-not-at-top
    mode = self.chunk_size if isinstance(self.chunk_size, str) else None
    with program.run_options(chunk_size=mode):
      return program.execute(train_lib.make_train(self.config), self.grid,
                             self.data, chunk_size=None if mode else
                             self.chunk_size)

  def member_knobs(self, i: int) -> dict[str, Any]:
    import jax  # pylint: disable=g-import-not-at-top
    return jax.tree.map(lambda v: v[0], self.grid.knobs([i]))

  def initial_state(self):
    """Every member's initial params and per-step inputs, as numpy (cached).

    The torch methods start from these, so they train the same runs.
    """
    if self._init is None:
      import jax  # pylint: disable=g-import-not-at-top
      from rahimi_jax import train as train_lib  # pylint: disable=g-import-not-at-top
      from rahimi_jax import data as data_lib  # pylint: disable=g-import-not-at-top
      from rahimi_jax import grid as grid_lib  # pylint: disable=g-import-not-at-top
      loop = train_lib.make_loop(self.config)
      knobs = self.grid.knobs()
      carry = jax.jit(jax.vmap(loop.init, in_axes=(0, None)))(knobs, self.data)
      xs = (np.arange(1, self.steps + 1, dtype=np.int32),)
      if 0 < self.config.batch_size < self.data.n_train:
        # Each member's sample indices: the order its run draws them in.
        xs += (jax.jit(jax.vmap(lambda k: data_lib.batch_indices(
            jax.random.split(k)[1], self.data.n_train, self.config.batch_size,
            self.steps)))(knobs[grid_lib.SEED]),)
      self._init = jax.device_get((carry.params, xs))
    return self._init
