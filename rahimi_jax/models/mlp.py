"""Multilayer perceptron: ``[activation(norm(x @ w) + b)] * depth -> x @ w + b``."""

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

from rahimi_jax import components
from rahimi_jax.models.base import Model


def mlp(hidden: Sequence[int], options: Mapping[str, Sequence[str]]) -> Model:
  """An MLP whose normalization, activation and init are relaxed choices.

  Args:
    hidden: widths of the hidden layers (static); ``()`` is a linear model.
    options: option names for the ``norm``, ``activation`` and ``init`` axes.

  Returns:
    A ``Model``; its knobs are the weights of those axes and ``init_scale``.
  """
  hidden = tuple(hidden)
  init_fn = components.relaxed_init(options['init'])
  norm_init, norm_apply = components.relaxed_norm(options['norm'])
  act = components.relaxed_activation(options['activation'])

  def init(key, in_dim, out_dim, knobs):
    widths = (in_dim,) + hidden + (out_dim,)
    params, state = {'dense': [], 'norm': []}, {'norm': []}
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
      w = init_fn(knobs['init'], jax.random.fold_in(key, i), (fan_in, fan_out),
                  jnp.float32)
      params['dense'].append(
          {'w': knobs['init_scale'] * w, 'b': jnp.zeros((fan_out,))})
      if i < len(hidden):
        norm_params, norm_state = norm_init(fan_out)
        params['norm'].append(norm_params)
        state['norm'].append(norm_state)
    return params, state

  def apply(params, state, x, knobs, train):
    new_norm_state = []
    for i, layer in enumerate(params['dense']):
      x = x @ layer['w']
      if i < len(hidden):
        x, s = norm_apply(params['norm'][i], state['norm'][i], x,
                          knobs['norm'], train)
        new_norm_state.append(s)
        x = act(knobs['activation'], x + layer['b'])
      else:
        x = x + layer['b']
    return x, {'norm': new_norm_state}

  return Model(init, apply, choice_axes=('norm', 'activation', 'init'))
