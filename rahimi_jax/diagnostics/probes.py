"""Santurkar et al.'s instruments for what batch normalization does, vmappable.

Three probes of one member at one point ``params`` of its training run:

* ``covariate_shift``: internal covariate shift as Santurkar et al. (2018,
  Definition 2.1) define it. For layer ``i``, ``G_i`` is the loss gradient in
  that layer's parameters and ``G'_i`` the same gradient after every layer
  below ``i`` has taken the optimizer's step (computed from the same batch);
  the shift is ``||G_i - G'_i||`` and its cosine. The layers at and above
  ``i`` keep their values (and their randomness, below: "keys"), so a layer
  with nothing below it (the first) has shift exactly 0.
* ``landscape``: the loss along the gradient ``g``: at ``params - eta g`` for
  a set of step sizes ``eta`` (evaluated at once, vmapped), the range of the
  loss; the largest change of the gradient, ``max ||g - g(eta)||`` ("gradient
  predictiveness", small is predictive); and the effective beta-smoothness
  ``max ||g - g(eta)|| / ||eta g||``. On a quadratic ``0.5 p^T A p`` the
  last is ``||A g|| / ||g||``: ``A``'s largest eigenvalue when ``g`` is its
  eigenvector.
* ``preactivation_drift``: the folklore's covariate shift, measured directly:
  the change, in one optimizer step, of each hidden layer's pre-activation
  (the input of its nonlinearity) mean and variance per unit over the batch,
  as a root mean square over units.

Keys: the gradient before a step is taken with the key of the step it
simulates. In ``G'_i`` the layers below ``i`` moved to the next step, their
randomness included: they draw from the next step's key, while layer ``i``
and those above keep this step's (``components.LayerKeys``). A deterministic
network ignores both; noisy batch norm's fresh noise below a layer counts as
the shift it adds on purpose, and the first layer's shift is 0 exactly. (Its
readings are mostly that noise: at init a step of size 0 gives the batch-norm
study's CNN 0.52-0.73 of ICS in layers 1-3, against 0.012-0.046 for batch
norm's step at learning rate 0.01; the study's verdicts say so.) The
pre-activation drift compares the whole network before and after the step,
its noise redrawn with the next step's key. The landscape is one function,
evaluated with one key.

References:
  Santurkar, S., Tsipras, D., Ilyas, A. & Madry, A. (2018). How does batch
  normalization help optimization? NeurIPS.
"""

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from rahimi_jax import components

# Step sizes of ``landscape`` as multiples of the member's learning rate:
# Santurkar et al. move up to four times the learning rate along the gradient
# (four plain SGD steps; with momentum or Adam a training step is another
# move, so these are multiples of lr * g, not of the optimizer's step).
STEP_MULTIPLIERS = (0.5, 1.0, 2.0, 4.0)


@dataclasses.dataclass(frozen=True, eq=False)
class Probe:
  """What a logged diagnostic sees of one member at one log.

  ``grads`` and ``stepped`` (the step the probes simulate) are computed on
  first use and shared by every probe of the log: traced once, not once per
  probe (the probes' share of a grid program's compile time).

  Attributes:
    params: the member's parameters after the logged step.
    key: the member's PRNG key for stochastic estimates at this log.
    train_loss: ``params -> scalar``: the loss on the whole training set in
      training mode.
    loss: ``(params, key) -> scalar``: the loss on the probe batch (a batch of
      the training batch size drawn for this log) in training mode, the
      network's randomness drawn from ``key`` (a PRNG key, or a
      ``components.LayerKeys`` where ``layer_keys``).
    keys: ``(key_now, key_next)``: the training keys of the step the probes
      simulate and of the one after it.
    update: ``(params, grads) -> params``: the member's optimizer step from
      ``params`` given ``grads`` (its optimizer state at this log).
    depth: a pytree like ``params`` of each leaf's layer index (``Model.depth``),
      or None for models that do not declare layers.
    preactivations: ``(params, key) -> [array]``: each hidden layer's
      pre-activation on the probe batch, ``[batch, ..., units]``; None for
      models without the hook.
    learning_rate: the member's learning rate (a traced scalar).
    layer_keys: ``loss`` takes a ``components.LayerKeys``
      (``Model.layer_keys``).
  """
  params: Any
  key: jax.Array
  train_loss: Callable[[Any], jax.Array]
  loss: Callable[[Any, jax.Array], jax.Array]
  keys: tuple[jax.Array, jax.Array]
  update: Callable[[Any, Any], Any]
  depth: Any
  preactivations: Callable[[Any, jax.Array], list[jax.Array]] | None
  learning_rate: jax.Array
  layer_keys: bool = False

  @functools.cached_property
  def grads(self):
    """The gradient of ``loss`` at ``params`` with ``keys[0]``."""
    return jax.grad(self.loss)(self.params, self.keys[0])

  @functools.cached_property
  def stepped(self):
    """``params`` after the optimizer's step on ``grads``."""
    return self.update(self.params, self.grads)


def num_layers(depth) -> int:
  """The number of layers a ``Model.depth`` pytree names."""
  return max(jax.tree.leaves(depth)) + 1


def _layer_sums(depth, tree, k: int) -> jax.Array:
  """``[k]``: the sum of ``tree``'s leaves (each summed) per layer."""
  out = jnp.zeros(k, jnp.result_type(*jax.tree.leaves(tree)))
  for d, leaf in zip(jax.tree.leaves(depth), jax.tree.leaves(tree)):
    out = out.at[d].add(jnp.sum(leaf))
  return out


def covariate_shift(loss: Callable[[Any, jax.Array], jax.Array], params,
                    update: Callable[[Any, Any], Any], depth,
                    keys: tuple[jax.Array, jax.Array], stepped=None,
                    layer_keys: bool = False
                    ) -> tuple[jax.Array, jax.Array]:
  """Santurkar et al.'s internal covariate shift of every layer.

  Args:
    loss: ``(params, key) -> scalar`` on one batch.
    params: the point.
    update: ``(params, grads) -> params``: one optimizer step.
    depth: each leaf's layer index, a pytree like ``params`` of ints.
    keys: ``(key_now, key_next)``: the network's randomness before and after
      the step.
    stepped: ``update(params, grad(loss)(params, key_now))`` where the caller
      has it; computed when None.
    layer_keys: ``loss`` takes a ``components.LayerKeys`` (its model draws
      each layer's randomness by ``component_key``, ``Model.layer_keys``):
      the layers below the one measured draw from ``key_next``, the rest from
      ``key_now``. Otherwise ``loss`` gets one key: ``key_now`` while nothing
      below moved (the first layer), then ``key_next`` for the whole network.

  Returns:
    ``(l2, cosine)``, each ``[layers]``: ``||G_i - G'_i||`` and
    ``<G_i, G'_i> / (||G_i|| ||G'_i||)``; the cosine is NaN where either
    gradient is 0 (a dead layer: no direction to compare).
  """
  k = num_layers(depth)
  key_now, key_next = keys
  if stepped is None:
    stepped = update(params, jax.grad(loss)(params, key_now))

  def gradient(below):
    # Layers below ``below`` stepped, with the next step's randomness; the
    # others as they were, with this step's.
    key = components.LayerKeys(key_next, key_now, below)
    return jax.grad(loss)(jax.tree.map(
        lambda d, p, s: jnp.where(d < below, s, p), depth, params, stepped),
                          key if layer_keys else components.layer_key(key))

  def body(reference, below):
    # Pass 0 takes G (nothing stepped, this step's keys) as the reference,
    # and is layer 0's G' too: nothing is below it, so its shift is 0
    # exactly. Pass i > 0 takes G'_i and compares. Scanned, not unrolled, so
    # a deep net compiles one gradient.
    g = gradient(below)
    reference = jax.tree.map(lambda r, a: jnp.where(below == 0, a, r),
                             reference, g)
    sums = [_layer_sums(depth, jax.tree.map(f, reference, g), k)
            for f in (lambda a, b: (a - b)**2, lambda a, b: a * b,
                      lambda a, b: a * a, lambda a, b: b * b)]
    return reference, jnp.stack(sums)[:, below]

  _, sums = jax.lax.scan(body, jax.tree.map(jnp.zeros_like, params),
                         jnp.arange(k))
  diff2, dot, norm2, norm2_after = sums.T
  denom = jnp.sqrt(norm2 * norm2_after)
  cosine = jnp.where(denom > 0, dot / jnp.where(denom > 0, denom, 1.0),
                     jnp.nan)
  # Rounding can put it a few ulps past +-1 (1.0000001 for equal gradients).
  return jnp.sqrt(diff2), jnp.clip(cosine, -1.0, 1.0)


def _norm(tree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(a)) for a in jax.tree.leaves(tree)))


def landscape(loss: Callable[[Any], jax.Array], params,
              steps: jax.Array, grads=None) -> dict[str, jax.Array]:
  """The loss and its gradient along the gradient, at ``params - eta g``.

  Args:
    loss: ``params -> scalar``.
    params: the point.
    steps: ``[s]`` step sizes ``eta > 0``.
    grads: ``grad(loss)(params)`` where the caller has it; computed when
      None.

  Returns:
    ``loss_range`` (max - min of the loss over the steps), ``grad_change``
    (the largest ``||g - g(eta)||``) and ``beta_smoothness`` (the largest
    ``||g - g(eta)|| / (eta ||g||)``); 0 where the gradient is 0.
  """
  if grads is None:
    grads = jax.grad(loss)(params)
  gnorm = _norm(grads)

  def along(eta):
    value, g = jax.value_and_grad(loss)(
        jax.tree.map(lambda p, d: p - eta * d, params, grads))
    return value, _norm(jax.tree.map(jnp.subtract, grads, g))

  values, changes = jax.vmap(along)(steps)
  distance = steps * gnorm
  ratio = changes / jnp.where(distance > 0, distance, 1.0)
  return {'loss_range': jnp.max(values) - jnp.min(values),
          'grad_change': jnp.max(changes),
          'beta_smoothness': jnp.max(jnp.where(distance > 0, ratio, 0.0))}


def _moments(h: jax.Array) -> tuple[jax.Array, jax.Array]:
  axes = tuple(range(h.ndim - 1))  # all but the units
  return jnp.mean(h, axes), jnp.var(h, axes)


def preactivation_drift(before: Sequence[jax.Array],
                        after: Sequence[jax.Array]
                        ) -> tuple[jax.Array, jax.Array]:
  """``(mean_drift, var_drift)``, each ``[hidden layers]``.

  For each layer, the root mean square over units of the change of the unit's
  mean (and variance) over the batch between ``before`` and ``after``
  (pre-activations ``[batch, ..., units]``, one per hidden layer).
  """
  drifts = []
  for b, a in zip(before, after):
    (mb, vb), (ma, va) = _moments(b), _moments(a)
    drifts.append((jnp.sqrt(jnp.mean((ma - mb)**2)),
                   jnp.sqrt(jnp.mean((va - vb)**2))))
  if not drifts:
    return jnp.zeros(0), jnp.zeros(0)
  mean, var = zip(*drifts)
  return jnp.stack(mean), jnp.stack(var)


def _per_layer(name: str, values: jax.Array, first: int = 0,
               skip_nan: bool = False) -> dict[str, jax.Array]:
  """Columns ``name_layer<i>`` and their mean over layers ``>= first``
  (``skip_nan``: over those not NaN; NaN if all are)."""
  out = {f'{name}_layer{i}': v for i, v in enumerate(values)}
  if values.shape[0] > first:
    mean = jnp.nanmean if skip_nan else jnp.mean
    out[name] = mean(values[first:])
  return out


def log_covariate_shift(probe: Probe) -> dict[str, jax.Array]:
  l2, cosine = covariate_shift(probe.loss, probe.params, probe.update,
                               probe.depth, probe.keys, probe.stepped,
                               probe.layer_keys)
  # Layer 0 has nothing below it: its summary would dilute the others'. A
  # dead layer's cosine (NaN) is left out of the summary.
  return _per_layer('ics_l2', l2, first=1) | _per_layer(
      'ics_cos', cosine, first=1, skip_nan=True)


def log_landscape(probe: Probe) -> dict[str, jax.Array]:
  steps = probe.learning_rate * jnp.asarray(STEP_MULTIPLIERS)
  return landscape(lambda p: probe.loss(p, probe.keys[0]), probe.params,
                   steps, probe.grads)


def log_preactivation_drift(probe: Probe) -> dict[str, jax.Array]:
  key_now, key_next = probe.keys
  mean, var = preactivation_drift(probe.preactivations(probe.params, key_now),
                                  probe.preactivations(probe.stepped, key_next))
  return _per_layer('preact_mean_drift', mean) | _per_layer(
      'preact_var_drift', var)


# What each probe needs of the model (``TrainConfig`` refuses the rest).
NEEDS = {
    'covariate_shift': ('depth',),
    'preactivation_drift': ('preactivation_hook',),
}
