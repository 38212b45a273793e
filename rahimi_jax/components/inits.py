"""Weight initializers, one signature: ``init(key, shape, dtype) -> array``.

The ``init_scale`` knob multiplies whichever initializer is chosen; for
``gaussian`` (a standard normal) it is therefore the standard deviation, a
traced value, so one compiled program serves every scale.
"""

from collections.abc import Callable, Sequence
import math

import jax
import jax.numpy as jnp

from rahimi_jax import linalg
from rahimi_jax import registry
from rahimi_jax.components import relaxed

Init = Callable[[jax.Array, tuple[int, ...], jnp.dtype], jax.Array]


def _gaussian(key, shape, dtype=jnp.float32):
  return jax.random.normal(key, shape, dtype)


def _orthogonal(key, shape, dtype=jnp.float32):
  """A Haar-random matrix with orthonormal columns (or rows, if wider).

  The same construction and draws as ``jax.nn.initializers.orthogonal()``
  (Q of the QR of a Gaussian, signs fixed by diag(R)), but through
  ``rahimi_jax.linalg.qr``, which cannot deadlock when vmapped on CPU. A
  conv kernel ``[*window, in, out]`` is, as there, the ``[prod(window) * in,
  out]`` matrix reshaped.
  """
  cols = shape[-1]
  rows = math.prod(shape) // cols
  a = jax.random.normal(key, (cols, rows) if rows < cols else (rows, cols),
                        dtype)
  q, r = linalg.qr(a)
  q = q * jnp.sign(jnp.diag(r))
  return (q.T if rows < cols else q).reshape(shape)


INITS: dict[str, Init] = registry.Options('init', {
    'lecun_normal': jax.nn.initializers.lecun_normal(),
    'glorot_normal': jax.nn.initializers.glorot_normal(),
    'he_normal': jax.nn.initializers.he_normal(),
    'orthogonal': _orthogonal,
    'gaussian': _gaussian,
}, registry.Signature('init(key, shape, dtype) -> array', (None, None, None)))


AXIS = registry.register(registry.Axis(
    name='init', options=INITS, default='lecun_normal', flag='inits',
    help='Weight initializations.',
    study=('lecun_normal', 'he_normal', 'orthogonal'),
    knobs=(registry.Knob('init_scale', 1.0, 'Scale of the initial weights '
                         '(the standard deviation for gaussian).'),)))


def relaxed_init(names: Sequence[str]):
  """``init(weights, key, shape, dtype)``: the weighted sum of the options.

  Every option draws from the same ``key`` (common random numbers).
  """
  names = AXIS.check(names)
  return relaxed.relax([INITS[n] for n in names])


def scaled_init(names: Sequence[str]):
  """``at(knobs)``: the initializer of a layer's weights, ``init(key, shape,
  dtype)``, ``init_scale`` times the relaxed init of ``names`` at
  ``knobs['init']``, drawn in float32 whatever ``dtype`` asks (a flax
  ``kernel_init`` too). ``names`` are checked now."""
  init_fn = relaxed_init(names)

  def at(knobs):
    def init(key, shape, dtype=jnp.float32):
      del dtype  # drawn in float32, as every model's weights
      return knobs['init_scale'] * init_fn(knobs['init'], key, shape,
                                           jnp.float32)

    return init

  return at
