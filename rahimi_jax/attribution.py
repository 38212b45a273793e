"""Differentiable ablations: derivatives of a final metric with respect to gates.

Every choice axis is a weight vector on the simplex, so a component's influence
on a trained model is a derivative through the whole training run. Moving the
weight of ``axis`` from its ``baseline`` option toward ``option`` is the
direction ``e_option - e_baseline``; the directional derivative of the final
metric along it is the *gate sensitivity* of that option. At the baseline's
vertex (the member that takes the baseline) it says how the result responds to
mixing in a little of the option; on the segment between baseline and option
it integrates to the discrete effect (the Aumann–Shapley path of issue 3). At
another vertex the same direction lowers a weight that is already 0 (off the
simplex): there it is a derivative of the relaxed function, not a mixing.

Two modes, which agree (tests check both against central finite differences):

* forward (``jax.jvp``): memory independent of the number of steps, one pass
  per direction, vmapped over directions;
* reverse (``jax.grad``): every direction of the axis from one backward
  pass; with ``TrainConfig(remat=True)`` each step is rematerialized.
"""

import collections
from collections.abc import Callable, Sequence
import itertools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rahimi_jax import grid as grid_lib
from rahimi_jax import stats
from rahimi_jax import train as train_lib
from rahimi_jax.data import Dataset

DIFFERENTIABLE_METRICS = ('train_loss', 'test_loss')


def final_metric(config: train_lib.TrainConfig, metric: str = 'test_loss'
                 ) -> Callable[[dict[str, Any], Dataset], jax.Array]:
  """``f(knobs, data)``: ``metric`` at the end of training (a smooth scalar).

  Accuracy is piecewise constant in the weights (zero derivative almost
  everywhere), so only losses are offered.
  """
  if metric not in DIFFERENTIABLE_METRICS:
    why = ('not differentiable (piecewise constant)'
           if metric == 'test_accuracy' else
           'not a loss of the trained model' if metric in stats.METRICS else
           'unknown')
    raise ValueError(f'metric {metric!r} is {why}; accepted: '
                     f'{", ".join(DIFFERENTIABLE_METRICS)}.')
  train = train_lib.make_train(config)

  def f(knobs, data):
    return train(knobs, data)[metric][-1]

  return f


def directions(options: Sequence[str], baseline: str) -> jax.Array:
  """``[k-1, k]`` rows ``e_option - e_baseline`` for every other option."""
  options = tuple(options)
  if baseline not in options:
    raise ValueError(f'baseline {baseline!r} is not an option; options: '
                     f'{", ".join(options)}.')
  eye = jnp.eye(len(options))
  b = options.index(baseline)
  return jnp.stack([eye[i] - eye[b] for i in range(len(options)) if i != b])


def gate_sensitivities(f, knobs: dict[str, Any], data: Dataset, axis: str,
                       dirs: jax.Array, *, mode: str = 'fwd') -> jax.Array:
  """Directional derivatives of ``f(knobs, data)`` along ``dirs`` of ``axis``.

  Args:
    f: from ``final_metric``.
    knobs: one member's knobs (unstacked); ``knobs[axis]`` is the point.
    data: the dataset.
    axis: a choice axis present in ``knobs``.
    dirs: ``[d, k]`` directions in the axis's weight space (``directions``).
    mode: 'fwd' (jvp, vmapped over directions) or 'rev' (one grad).

  Returns:
    ``[d]`` derivatives.
  """
  size = _option_count(knobs, axis, 'axis')
  dirs = jnp.asarray(dirs)
  if dirs.ndim != 2 or dirs.shape[1] != size:
    raise ValueError(f'dirs: shape {dirs.shape}; expected [d, {size}] (one '
                     f'row per direction over the {size} options of {axis!r}).')

  def along(weights):
    return f({**knobs, axis: weights}, data)

  point = jnp.asarray(knobs[axis], dirs.dtype)
  if mode == 'fwd':
    return jax.vmap(lambda d: jax.jvp(along, (point,), (d,))[1])(dirs)
  if mode == 'rev':
    return dirs @ jax.grad(along)(point)
  raise ValueError(f'mode {mode!r}; accepted: fwd, rev.')


def _option_count(knobs: dict[str, Any], axis: str, what: str) -> int:
  """The number of options of choice axis ``axis`` in one member's
  ``knobs`` (its weight vector's length), or a ValueError."""
  if axis not in knobs:
    raise ValueError(f'{what} {axis!r} is not among the knobs: '
                     f'{sorted(knobs)}.')
  shape = jnp.shape(knobs[axis])
  if len(shape) != 1 or shape[0] < 2:
    raise ValueError(f'{what} {axis!r}: knobs[{axis!r}] has shape {shape}; '
                     'a choice axis of two or more options has one weight '
                     'per option.')
  return shape[0]


def gate_path(f, knobs: dict[str, Any], data: Dataset,
              components: dict[str, tuple[int, int]]
              ) -> Callable[[jax.Array], jax.Array]:
  """``gates -> f``: the final metric as a function of one gate per component.

  Component ``axis: (off, on)`` (option indices of that choice axis) at gate
  ``g`` has weights ``(1 - g) e_off + g e_on``; the other axes stay as in
  ``knobs``. ``aumann_shapley`` integrates its gradient.

  Args:
    f: from ``final_metric``.
    knobs: one member's knobs.
    data: the dataset.
    components: ``{axis: (off_index, on_index)}``.

  Returns:
    ``gates: [len(components)] -> scalar``.
  """
  axes = tuple(components)
  if not axes:
    raise ValueError('components: give at least one {axis: (off, on)}.')
  for axis in axes:
    size = _option_count(knobs, axis, 'component')
    ends = components[axis]
    if (len(ends) != 2 or ends[0] == ends[1] or not all(
        isinstance(i, (int, np.integer)) and not isinstance(i, bool)
        and 0 <= i < size for i in ends)):
      raise ValueError(f'component {axis!r}: (off, on) = {tuple(ends)!r}; '
                       f'two different option indices in 0..{size - 1}.')

  def of_gates(gates):
    k = dict(knobs)
    for g, axis in zip(gates, axes):
      off, on = components[axis]
      size = jnp.shape(knobs[axis])[0]
      k[axis] = (1 - g) * jax.nn.one_hot(off, size, dtype=gates.dtype) + (
          g * jax.nn.one_hot(on, size, dtype=gates.dtype))
    return f(k, data)

  return of_gates


def aumann_shapley(f, knobs: dict[str, Any], data: Dataset,
                   components: dict[str, tuple[int, int]], *,
                   nodes: int = 4) -> jax.Array:
  """Aumann–Shapley attribution from gate gradients along the diagonal path.

  Each component ``axis: (off, on)`` gets a gate ``g`` in [0, 1]
  (``gate_path``); all gates move together from 0 (everything ablated) to 1
  (everything present), and component ``i`` is credited
  ``integral_0^1 df/dg_i(t, ..., t) dt``, by Gauss–Legendre quadrature on
  ``nodes`` points (each point one training run, vmapped; one reverse pass
  gives every component). Where ``f`` is differentiable along the path, the
  credits add up to ``f(all on) - f(all off)`` up to quadrature error
  (completeness).

  The quadrature is accurate when the trained metric is smooth in the gates
  (tanh nets: 6 nodes give completeness to 1e-3 in the tests). With ReLU the
  metric is only piecewise smooth along the path (units switching on and off
  during training): its derivative does not see the jumps, so the gap is
  not all quadrature error and more nodes need not close it (a small digits
  MLP: 81 trapezoid points still left 1.4e-3 of the difference; the
  attribution study's default run: 6% at 8 nodes and at 16). Compare
  ``sum(credits)`` with the endpoint difference before trusting the split.

  Args:
    f: from ``final_metric``.
    knobs: one member's knobs (the other axes stay as given).
    data: the dataset.
    components: ``{axis: (off_index, on_index)}``.
    nodes: quadrature points.

  Returns:
    ``[len(components)]`` credits, in the order of ``components``.
  """
  of_gates = gate_path(f, knobs, data, components)
  t, w = np.polynomial.legendre.leggauss(nodes)
  t, w = jnp.asarray((t + 1) / 2), jnp.asarray(w / 2)
  ones = jnp.ones((len(components),), t.dtype)
  grads = jax.vmap(lambda s: jax.grad(of_gates)(s * ones))(t)  # [nodes, n]
  return w @ grads


# ---------------------------------------------------------------------------
# Attribution of the discrete factorial grid.


def drop_diverged_seeds(results, metric: str):
  """Diverged members, and the results without the seeds they belong to.

  A seed's on/off patterns are compared within the seed, each averaged over
  the other axes: a diverged member (or a non-finite final ``metric``) would
  leave its pattern averaged over a different mix of them, so its whole
  seed is left out.

  Returns:
    ``([(member, diverged_step), ...], results of the other seeds)``.
  """
  final = results.final().columns
  steps = final.get('diverged_step', np.full(len(final[metric]), -1))
  bad = ~np.isfinite(final[metric]) | (steps >= 0)
  diverged = [(str(m), int(s)) for m, s in zip(final['member'][bad],
                                               steps[bad])]
  keep = ~np.isin(results.columns[grid_lib.SEED], final[grid_lib.SEED][bad])
  return diverged, results.subset(keep)


def component_table(results, metric: str, components: Sequence[str],
                     baselines: dict[str, Any] | None):
  """Per seed, the final ``metric`` of every on/off pattern of ``components``.

  Each component axis must have exactly two values: its baseline ('off', the
  first value unless ``baselines`` names it) and the other ('on'). Other
  non-seed axes are averaged out within a seed, so every pattern must hold
  the same mix of them (a full product: not a union, no member removed;
  else a ValueError). A seed with a diverged member is left out
  (``drop_diverged_seeds``): the intervals' ``n`` counts the seeds used.

  Returns:
    ``(seeds, table)`` with ``table[s, pattern]`` where bit ``i`` of
    ``pattern`` is component ``i`` on.
  """
  components = tuple(components)
  if not components:
    raise ValueError('components: give at least one on/off axis.')
  if len(set(components)) != len(components):
    raise ValueError(f'components: {list(components)} names an axis twice.')
  unknown = sorted(set(baselines or {}) - set(components))
  if unknown:
    raise ValueError(f'baselines: {unknown} are not among the components '
                     f'{list(components)}.')
  if metric not in results.columns:
    raise ValueError(f'Unknown metric {metric!r}; columns: '
                     f'{", ".join(results.columns)}.')
  axes = results.metadata['axes']
  diverged, results = drop_diverged_seeds(results, metric)
  if diverged and not len(results):
    raise ValueError(f'{metric}: every seed has a diverged member (or a '
                     f'non-finite result; {len(diverged)} members): nothing '
                     'to attribute.')
  on = {}
  for c in components:
    values = axes.get(c)
    if values is None:
      raise ValueError(f'Unknown axis {c!r}; axes: {", ".join(axes)}.')
    if len(values) != 2:
      raise ValueError(f'{c}: Shapley/ANOVA need on/off axes with exactly two '
                       f'values; got {values}.')
    off = (baselines or {}).get(c, values[0])
    if off not in values:
      raise ValueError(f'{c}: baseline {off!r} is not one of {values}.')
    on[c] = values[1] if off == values[0] else values[0]
  final = results.final().columns
  seeds = np.unique(final[grid_lib.SEED])
  pattern = np.zeros(len(final[grid_lib.SEED]), int)
  for i, c in enumerate(components):
    pattern |= (final[c] == on[c]).astype(int) << i
  # Every on/off pattern must average the same mix of the other axes: in a
  # union or a subset with a member missing from one cell, that cell's mean
  # would move with the other axes' effects and credit them to a component.
  others = [a for a in axes if a not in components and a != grid_lib.SEED]
  mixes = {}
  for key in zip(final[grid_lib.SEED].tolist(), pattern.tolist(),
                 *(final[a].tolist() for a in others)):
    mix = mixes.setdefault(key[:2], collections.Counter())
    mix[key[2:]] += 1
  # The cell named is one off the most common mix (the first cell's could
  # be the one a member is missing from, and the complete ones named).
  kinds = collections.Counter(frozenset(m.items()) for m in mixes.values())
  reference = collections.Counter(dict(kinds.most_common(1)[0][0]))
  for (seed, p), mix in mixes.items():
    if mix != reference:
      cell = ', '.join(f'{c}={on[c] if p >> i & 1 else _other(axes[c], on[c])}'
                       for i, c in enumerate(components))
      raise ValueError(
          f'{metric}: the grid is not the full factorial of the components '
          f'crossed with the other axes ({", ".join(others)}): seed {seed}, '
          f'{cell} has {sum(mix.values())} members over another mix of them '
          f'than most cells ({sum(reference.values())}); its mean would '
          'credit the other axes\' effects to a component.')
  table = np.full((len(seeds), 2 ** len(components)), np.nan)
  for s_i, seed in enumerate(seeds):
    for p in range(2 ** len(components)):
      vals = final[metric][(final[grid_lib.SEED] == seed) & (pattern == p)]
      vals = vals[np.isfinite(vals)]
      if len(vals):
        table[s_i, p] = vals.mean()
  if np.isnan(table).any():
    raise ValueError(f'{metric}: some on/off patterns have no finite result '
                     '(diverged or missing members); the grid must be the full '
                     'factorial of the components.')
  return seeds, table


def _other(values, on):
  """The value of a two-valued axis that is not ``on`` (its baseline)."""
  return values[0] if values[1] == on else values[1]


def shapley_from_table(table, n: int):
  """Exact Shapley values ``[..., n]`` of the game ``v(pattern) = table``."""
  values = np.zeros(table.shape[:-1] + (n,))
  for i in range(n):
    for p in range(2 ** n):
      if p >> i & 1:
        continue
      size = bin(p).count('1')
      weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
      values[..., i] += weight * (table[..., p | 1 << i] - table[..., p])
  return values


def shapley(results, metric: str, components: Sequence[str],
            baselines: dict[str, Any] | None = None, level: float = 0.95):
  """Exact Shapley value of each on/off component on the final ``metric``.

  The game is ``v(S)`` = the metric with the components in ``S`` on and the
  rest at their baselines (other axes averaged), computed per seed; each value
  comes with a ``stats.mean_ci`` interval over seeds.
  The values add up to ``v(all) - v(none)`` (efficiency).

  Returns:
    ``{component: stats.Interval}``.
  """
  _, table = component_table(results, metric, components, baselines)
  per_seed = shapley_from_table(table, len(components))
  bounds = stats.difference_range(metric)
  return {c: stats.mean_ci(per_seed[:, i], level, bounds=bounds)
          for i, c in enumerate(components)}


# How reports name ``anova``'s numbers (two-level factorial effects).
ANOVA_TEXT = ('two-level factorial effects: main effect = mean with the '
              'component on - off; interaction = half the change of one\'s '
              'effect when the other turns on')


def anova(results, metric: str, components: Sequence[str],
          baselines: dict[str, Any] | None = None, level: float = 0.95):
  """Main effects and two-way interactions of on/off components (2^n design).

  Main effect of ``i``: mean metric with ``i`` on minus with ``i`` off (over
  all patterns of the others). Interaction of ``i, j``: half the difference
  between ``i``'s effect with ``j`` on and with ``j`` off. Per seed, with a
  ``stats.mean_ci`` interval over seeds.

  Returns:
    ``{component or (component, component): stats.Interval}``.
  """
  components = tuple(components)
  _, table = component_table(results, metric, components, baselines)
  patterns = np.arange(2 ** len(components))
  sign = {c: np.where(patterns >> i & 1, 1.0, -1.0)
          for i, c in enumerate(components)}
  scale = 2.0 ** (len(components) - 1)
  effects = {c: table @ sign[c] / scale for c in components}
  for a, b in itertools.combinations(components, 2):
    effects[(a, b)] = table @ (sign[a] * sign[b]) / scale
  bounds = stats.difference_range(metric)
  return {k: stats.mean_ci(v, level, bounds=bounds) for k, v in effects.items()}
