"""Simple experiment 1: the two-layer linear network of Rahimi's talk.

Fit ``y = x W_1 W_2`` to a linear target of condition number 1e5. Gradient
descent falls fast, then crawls orders of magnitude above the optimum although
the gradient has not vanished; Levenberg–Marquardt, a better direction on the
same problem, reaches machine precision in a few dozen steps. The Hessian where
gradient descent stalls explains it: its eigenvalues span many decades, so any
stable step size moves along the low-curvature directions at a crawl.

All methods, step sizes, initial scales and seeds of one depth run as one grid,
which ``engine.auto_partition`` splits by optimizer (Levenberg–Marquardt's CG
solves make the relaxed step ~6x the members' own), so the gradient-descent
members do not pay for them. Depth and initialization can be varied to
compare the plateau-then-drop dynamics of small initializations (Saxe et al.
2013).
"""

import dataclasses
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rahimi_jax import data as data_lib
from rahimi_jax import diagnostics
from rahimi_jax import engine
from rahimi_jax import program
from rahimi_jax import grid as grid_lib
from rahimi_jax import plots
from rahimi_jax import results as results_lib
from rahimi_jax import stats
from rahimi_jax import train as train_lib
from rahimi_jax import registry

# Method names of this study -> optimizer registry names.
METHODS = {'gd': 'sgd', 'adam': 'adam', 'lm': 'levenberg_marquardt',
           'gn': 'gauss_newton'}
NULL_TOLERANCE = 1e-12  # |lambda| <= this * lambda_max counts as null


@dataclasses.dataclass(frozen=True)
class DeepLinearConfig:
  """The two-layer (or deeper) linear network experiment.

  Attributes:
    condition_number: of the target matrix W* (singular values log-spaced).
    noise: target noise std (0: realizable when the width is >= rank).
    n_train: samples (full batch).
    in_dim: input width (x in R^in_dim).
    out_dim: output width.
    width: hidden width of every layer.
    depths: hidden-layer counts to compare (1: the two-layer network).
    methods: of ``METHODS``.
    gd_lrs: gradient-descent step sizes.
    adam_lrs: Adam learning rates.
    init: initializer name (``orthogonal``, ``gaussian``, ...).
    init_scales: multipliers of the initializer (small: Saxe's plateaus).
    seeds: initialization seeds (the target is fixed by ``data_seed``).
    steps: iterations of every method.
    log_every: steps between logged metrics.
    dtype: 'float64' resolves losses far below float32's resolution.
    data_seed: seed of the target and the samples.
  """
  condition_number: float = 1e5
  noise: float = 0.0
  n_train: int = 1000
  in_dim: int = 6
  out_dim: int = 10
  width: int = 6
  depths: tuple[int, ...] = (1,)
  methods: tuple[str, ...] = ('gd', 'adam', 'lm')
  gd_lrs: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3)
  adam_lrs: tuple[float, ...] = (0.01,)
  init: str = 'orthogonal'
  init_scales: tuple[float, ...] = (1.0,)
  seeds: int = 4
  steps: int = 2000
  log_every: int | None = None  # None: every 100 steps, or once at the end
  dtype: str = 'float64'
  data_seed: int = 0

  def __post_init__(self):
    registry.check_options(METHODS, self.methods, 'methods')
    if self.log_every is None and isinstance(self.steps, int):
      object.__setattr__(self, 'log_every', min(100, self.steps))
    registry.get_axis('init').get(self.init)
    for name in ('condition_number', 'n_train', 'in_dim', 'out_dim', 'width',
                 'seeds', 'steps', 'log_every'):
      value = getattr(self, name)
      if not (isinstance(value, (int, float)) and math.isfinite(value)
              and value >= 1):
        raise ValueError(f'{name} must be >= 1; got {value!r}.')
    for name in ('depths', 'gd_lrs', 'adam_lrs', 'init_scales'):
      values = tuple(getattr(self, name))
      if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise ValueError(f'{name} must be a non-empty list of numbers > 0; '
                         f'got {list(values)}.')
      if len(set(values)) != len(values):
        raise ValueError(f'{name}: values listed twice in {list(values)}.')
      object.__setattr__(self, name, values)
    if self.noise < 0 or not math.isfinite(self.noise):
      raise ValueError(f'noise must be >= 0; got {self.noise!r}.')
    if self.dtype == 'float64' and not jax.config.jax_enable_x64:
      raise ValueError("dtype 'float64' needs jax_enable_x64 (the launcher "
                       'sets it); use dtype=float32 otherwise.')
    for depth in self.depths:
      self.train_config(depth)  # validates steps, log_every, dtype

  def dataset(self) -> data_lib.Dataset:
    return data_lib.synthetic(
        n_train=self.n_train, n_test=self.n_train, in_dim=self.in_dim,
        out_dim=self.out_dim, condition_number=self.condition_number,
        noise=self.noise, seed=self.data_seed)

  def grid(self) -> grid_lib.Grid:
    """Each method with its own step sizes; Gauss–Newton/LM take none."""
    lrs = {'gd': self.gd_lrs, 'adam': self.adam_lrs}
    parts = [grid_lib.Grid(
        grid_lib.Choice('optimizer', (METHODS[m],)),
        grid_lib.Values('learning_rate', lrs.get(m, (1.0,))),
        grid_lib.Values('init_scale', self.init_scales),
        grid_lib.Seeds(self.seeds)) for m in self.methods]
    return grid_lib.Grid.union(*parts)

  def train_config(self, depth: int) -> train_lib.TrainConfig:
    return train_lib.TrainConfig(
        model='deep_linear', hidden=(self.width,) * int(depth),
        steps=self.steps, batch_size=0, log_every=self.log_every,
        dtype=self.dtype, diagnostics=('grad_norm',),
        options=(('init', (self.init,)),))


def run(config: DeepLinearConfig) -> results_lib.Results:
  """Trains every method, step size, scale, depth and seed; tidy results."""
  dataset = config.dataset()
  grid = config.grid()
  parts = []

  def merged():
    meta = dict(parts[0].metadata)
    meta['axes'] = {**meta['axes'], 'depth': list(config.depths)}
    meta['engine'] = [p.metadata['engine'] for p in parts]
    return results_lib.concat(parts, meta)

  for depth in config.depths:
    try:
      part = engine.run(
          config.train_config(depth), grid, dataset, partition='auto',
          metadata={'config': dataclasses.asdict(config)})
    except KeyboardInterrupt as e:  # program.Interrupted, or during a compile
      last = getattr(e, 'results', None)
      if last is not None:
        last.columns['depth'] = np.full(len(last), depth)
        parts.append(last)
      finished = (len(grid) * (len(parts) - (last is not None))
                  + getattr(e, 'finished', 0))
      raise program.Interrupted(merged() if parts else None, finished,
                               len(grid) * len(config.depths)) from None
    part.columns['depth'] = np.full(len(part), depth)
    parts.append(part)
  return merged()


def _log_interval(values):
  """Geometric mean of the positive ``values`` and its 95% interval.

  ``stats.mean_ci`` of the log10 values (t, extended for skew), mapped back:
  an interval for the geometric mean ``10**E[log10 x]`` (the median, for
  log-symmetric seeds), not for the arithmetic mean; its coverage is
  ``mean_ci``'s on the log values (nominal when they are normal). Positive by
  construction, so a loss interval never goes below zero.
  """
  values = np.asarray(values, np.float64)
  ci = stats.mean_ci(np.log10(values[values > 0]))
  return stats.Interval(10**ci.mean, 10**ci.low, 10**ci.high, ci.n)


def stall_spectrum(config: DeepLinearConfig, depth: int,
                   member: str) -> dict[str, Any]:
  """The Hessian spectrum at the end of ``member``'s run (exact: full Lanczos)."""
  grid = config.grid()
  index = next(m.index for m in grid.members if m.name == member)
  tc = config.train_config(depth).for_grid(grid)
  knobs = jax.tree.map(lambda a: a[0], grid.knobs([index]))
  dataset = config.dataset()
  params, _ = jax.jit(train_lib.final_state, static_argnums=0)(tc, knobs,
                                                               dataset)
  dtype = jnp.dtype(config.dtype)
  x = jnp.asarray(dataset.x_train, dtype)
  y = jnp.asarray(dataset.y_train, dtype)

  def loss(p):
    return train_lib.LOSSES['regression'](
        jax.tree_util.tree_reduce(jnp.matmul, p, x), y)

  n_params = sum(p.size for p in jax.tree.leaves(params))
  eigenvalues = np.asarray(jax.jit(
      lambda p: diagnostics.hessian_eigenvalues(loss, p, jax.random.key(0),
                                                n_params))(params))
  top = eigenvalues.max()
  null = np.abs(eigenvalues) <= NULL_TOLERANCE * top
  positive = eigenvalues[(eigenvalues > 0) & ~null]
  return {
      'eigenvalues': eigenvalues, 'lambda_max': float(top),
      'lambda_min': float(eigenvalues.min()),
      'n_null': int(null.sum()), 'n_negative': int(np.sum((eigenvalues < 0) & ~null)),
      'lambda_min_positive': float(positive.min()),
      'ratio': float(top / positive.min()),
      'grad_norm': float(diagnostics.gradient_norm(loss, params)),
      'loss': float(loss(params)),
  }


def report(config: DeepLinearConfig, results: results_lib.Results,
           out_dir: str | None = None) -> str:
  """The findings as text (and PNG curves and spectrum in ``out_dir``)."""
  lines = []
  final = results.final()
  inverse = {v: k for k, v in METHODS.items()}
  d = config.dataset()
  x = np.asarray(d.x_train, np.float64)
  target = np.linalg.lstsq(x, np.asarray(d.y_train, np.float64), rcond=None)[0]
  lines.append(f'problem: condition number of the least-squares target '
               f'{float(diagnostics.condition_number(target)):.3g}, of the '
               f'inputs {float(diagnostics.condition_number(x)):.3g}')
  lines.append(f'target condition number {config.condition_number:g}; '
               f'{config.steps} full-batch steps; final train loss, geometric '
               f'mean over the seeds that finished (of {config.seeds}) [95% '
               'interval of the geometric mean: t on log10, extended for skew]')
  header = (f'{"depth":>5} {"method":<6} {"lr":>8} {"init_scale":>10} '
            f'{"loss":>10} {"low":>10} {"high":>10} {"grad_norm":>10} '
            f'{"diverged":>8}')
  lines += [header, '-' * len(header)]
  best = {}
  for cfg, rows in final.configs().items():
    c = dict(cfg)
    method = inverse[c['optimizer']]
    alive = rows.columns['diverged_step'] < 0
    ci = _log_interval(rows.columns['train_loss'][alive])
    grad = _log_interval(rows.columns['grad_norm'][alive])
    lr = '-' if method in ('lm', 'gn') else f'{c["learning_rate"]:g}'
    depth = int(rows.columns['depth'][0])
    lines.append(f'{depth:>5} {method:<6} {lr:>8} {c["init_scale"]:>10g} '
                 f'{ci.mean:>10.3e} {ci.low:>10.3e} {ci.high:>10.3e} '
                 f'{grad.mean:>10.3e} {int((~alive).sum()):>8d}')
    key = (depth, method)
    if ci.n and (key not in best or ci.mean < best[key][0]):
      best[key] = (ci.mean, rows)
  for depth in config.depths:
    if (depth, 'gd') not in best:
      continue
    loss, rows = best[(depth, 'gd')]
    member = rows.where(seed=rows.columns[grid_lib.SEED][0]).columns['member'][0]
    traj = results.where(member=member, depth=depth)
    half = traj.columns['train_loss'][len(traj) // 2]
    last = traj.columns['train_loss'][-1]
    lines.append('')
    lines.append(f'depth {depth}: best gradient descent ({member.split(",seed")[0]}) '
                 f'ends at loss {loss:.3e}; over its last {config.steps - traj.columns["step"][len(traj) // 2]} '
                 f'steps the loss fell only {half / last:.2f}x.')
    for other in ('lm', 'gn', 'adam'):
      if (depth, other) in best:
        lines.append(f'  {other}: {best[(depth, other)][0]:.3e} '
                     f'({math.log10(loss / best[(depth, other)][0]):+.1f} '
                     'orders of magnitude below gradient descent)')
    spec = stall_spectrum(config, depth, member)
    lines.append(
        f'  at the stall: gradient norm {spec["grad_norm"]:.2e} (not zero: not '
        f'a critical point); Hessian ({len(spec["eigenvalues"])} eigenvalues, '
        f'exact Lanczos) lambda_max {spec["lambda_max"]:.3e}, lambda_min '
        f'{spec["lambda_min"]:.3e} ({spec["n_negative"]} negative), {spec["n_null"]} null (|lambda| <= '
        f'{NULL_TOLERANCE:g} lambda_max), smallest positive '
        f'{spec["lambda_min_positive"]:.3e}')
    lines.append(
        f'  ratio lambda_max / smallest positive = {spec["ratio"]:.2e}: a '
        f'stable step (< 2/lambda_max = {2 / spec["lambda_max"]:.3g}) shrinks '
        f'the error along the flattest direction by a factor of only '
        f'~{1 - 2 / spec["ratio"]:.12f} per step.')
    if out_dir:
      plots.spectrum(spec['eigenvalues'],
                     os.path.join(out_dir, f'hessian_at_stall_depth{depth}.png'),
                     title=f'Hessian at the gradient-descent stall (depth {depth})')
  if out_dir:
    for depth in config.depths:
      plots.curves(results.where(depth=depth), 'train_loss',
                   os.path.join(out_dir, f'loss_depth{depth}.png'),
                   title=f'deep linear net, depth {depth}, condition number '
                   f'{config.condition_number:g}')
  return '\n'.join(lines)
