"""Deep linear network ``y = x W_1 W_2 ... W_L``: no bias, no nonlinearity."""

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

from rahimi_jax import components
from rahimi_jax.models.base import Model


def deep_linear(hidden: Sequence[int],
                options: Mapping[str, Sequence[str]]) -> Model:
  """A product of ``len(hidden) + 1`` weight matrices.

  Args:
    hidden: widths between the factors; ``(6,)`` is the two-layer network
      ``W_2 W_1 x`` of the talk.
    options: option names for the ``init`` axis.

  Returns:
    A stateless ``Model`` whose knobs are the init weights and ``init_scale``.
  """
  hidden = tuple(hidden)
  init_fn = components.relaxed_init(options['init'])

  def init(key, in_dim, out_dim, knobs):
    widths = (in_dim,) + hidden + (out_dim,)
    params = [
        knobs['init_scale'] * init_fn(knobs['init'], jax.random.fold_in(key, i),
                                      (fan_in, fan_out), jnp.float32)
        for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:]))
    ]
    return params, {}

  def apply(params, state, x, knobs, train, key=None):
    # The same function as ((x W_1) W_2) ..., computed as (W_L^T ... W_1^T)
    # x^T: multi_dot picks the cheapest association (the [in, out] product
    # first when the batch outnumbers the widths: 42% of the textbook order's
    # FLOPs for the talk's net), and in the transposed form a vmapped grid's
    # [members * out, batch] activations are one row-major matrix, so neither
    # pass transposes them. Together: 41 -> 8.9 us per member-step on one CPU
    # device (WORKSPACE.md).
    del knobs, train, key
    return jnp.linalg.multi_dot([w.T for w in reversed(params)] + [x.T]).T, state

  return Model(init, apply, choice_axes=('init',), depth=lambda params: list(range(len(params))))
