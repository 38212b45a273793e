"""Activation functions, one signature: ``act(x) -> y``."""

from collections.abc import Callable, Sequence

import jax

from rahimi_jax.components import relaxed

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    'relu': jax.nn.relu,
    'tanh': jax.numpy.tanh,
    'gelu': jax.nn.gelu,
    'silu': jax.nn.silu,
    'identity': lambda x: x,
}


def get_activation(name: str):
  return relaxed.get(ACTIVATIONS, name, 'activation')


def relaxed_activation(names: Sequence[str]):
  """``act(weights, x)``: the weighted sum of the options."""
  names = relaxed.check_options(ACTIVATIONS, names, 'activation')
  return relaxed.relax([ACTIVATIONS[n] for n in names])
