"""Multilayer perceptron: ``[activation(norm(x @ w) + b)] * depth -> x @ w_out^T + b``.

Parameters: ``{'dense': [{'w': [in, out], 'b': [out]}, ...]`` for the hidden
layers, ``'readout': {'w': [out, in], 'b': [out]}``, ``'norm': [...]}``. The
readout's weight is stored ``[out, in]`` (as ``torch.nn.Linear`` stores every
layer): its gradient ``g^T h`` then comes out with the wide hidden dimension
minor, where ``[in, out]`` storage makes it a ``[hidden, classes]`` matmul that
XLA's CPU dot runs at 18 GFLOP/s. That one change made a 128-wide MLP grid's
step 1.23x faster on CPU (WORKSPACE.md); for the hidden layers ``[in, out]``
measured faster.
"""

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

from rahimi_jax import components
from rahimi_jax.models.base import layer_depth
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
  norm_init, norm_apply = components.relaxed_norm(options['norm'])
  init_at = components.scaled_init(options['init'])
  act = components.relaxed_activation(options['activation'])

  def init(key, in_dim, out_dim, knobs):
    init_w = init_at(knobs)
    widths = (in_dim,) + hidden + (out_dim,)
    params, state = {'dense': [], 'norm': []}, {'norm': []}
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
      w = init_w(jax.random.fold_in(key, i), (fan_in, fan_out))
      b = jnp.zeros((fan_out,))
      if i == len(hidden):
        params['readout'] = {'w': w.T, 'b': b}
      else:
        params['dense'].append({'w': w, 'b': b})
        norm_params, norm_state = norm_init(fan_out)
        params['norm'].append(norm_params)
        state['norm'].append(norm_state)
    return params, state

  def apply(params, state, x, knobs, train, key=None, matmul_input=None,
            preactivation=None):
    r = matmul_input or (lambda v: v)
    new_norm_state = []
    for i, (layer, norm_params, norm_state) in enumerate(
        zip(params['dense'], params['norm'], state['norm'])):
      x, s = norm_apply(norm_params, norm_state, r(x) @ r(layer['w']),
                        knobs['norm'], train,
                        components.component_key(key, 'norm', i), knobs)
      new_norm_state.append(s)
      x = x + layer['b']
      if preactivation is not None:
        x = preactivation(i, x)
      x = act(knobs['activation'], x,
              key=components.component_key(key, 'activation', i))
    readout = params['readout']
    return r(x) @ r(readout['w']).T + readout['b'], {'norm': new_norm_state}

  def depth(params):
    return {'dense': [layer_depth(l, i) for i, l in enumerate(params['dense'])],
            'norm': [layer_depth(n, i) for i, n in enumerate(params['norm'])],
            'readout': layer_depth(params['readout'], len(params['dense']))}

  return Model(init, apply, choice_axes=('norm', 'activation', 'init'),
               matmul_hook=True, depth=depth, preactivation_hook=True,
               layer_keys=True, per_sample=True)
