"""Activation functions, one signature: ``act(x, key=None) -> y``.

``key`` is the layer's PRNG key for the step (``train.step_key``), the same for
every option; the deterministic activations here ignore it.
"""

from collections.abc import Callable, Sequence

import jax

from rahimi_jax import registry
from rahimi_jax.components import relaxed


def _deterministic(fn: Callable[[jax.Array], jax.Array]):
  def act(x, key=None):
    del key
    return fn(x)
  return act


ACTIVATIONS: dict[str, Callable[..., jax.Array]]
ACTIVATIONS = registry.Options('activation', {
    'relu': _deterministic(jax.nn.relu),
    'tanh': _deterministic(jax.numpy.tanh),
    'gelu': _deterministic(jax.nn.gelu),
    'silu': _deterministic(jax.nn.silu),
    'identity': _deterministic(lambda x: x),
}, registry.Signature('act(x, key=None) -> y', (None,), (('key', None),)))


AXIS = registry.register(registry.Axis(
    name='activation', options=ACTIVATIONS, default='relu',
    flag='activations', help=('Activation functions (gelu: the tanh '
                              'approximation, jax.nn.gelu\'s default).'),
    switchable=True))


def relaxed_activation(names: Sequence[str]):
  """``act(weights, x, key=None)``: the weighted sum of the options."""
  names = AXIS.check(names)
  return relaxed.relax([ACTIVATIONS[n] for n in names], AXIS.name)
