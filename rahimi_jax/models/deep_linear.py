"""Deep linear network ``y = x W_1 W_2 ... W_L``: no bias, no nonlinearity.

With norms (``options['norm']`` other than ``('none',)``) every hidden layer
reads the norm axis: ``h_i = norm_i(h_{i-1} W_i)`` for ``i < L``, then
``y = h_{L-1} W_L``. That is no longer a linear function of ``x`` (batch norm
centers and scales by batch statistics), but still no bias or activation: the
norms' effect on a deep linear net, layer by layer.
"""

from collections.abc import Mapping, Sequence

import jax

from rahimi_jax import components
from rahimi_jax.models.base import layer_depth
from rahimi_jax.models.base import Model


# Products whose every dimension is at most this run as unrolled multiply-adds
# (``_matmul``).
SMALL_PRODUCT = 16


def _matmul(a: jax.Array, b: jax.Array) -> jax.Array:
  """``a @ b``; where every dimension is at most ``SMALL_PRODUCT``, as ``k``
  multiply-adds of an outer product each, in order of ``k``.

  Under ``vmap`` XLA's CPU backend runs a batched tiny product (the talk's
  10x6 and 6x6 weight factors, forward and in the gradient) as one library
  call per member, ~1 us each: 29% of a 16-member chunk's step of the deep
  linear benchmark. Unrolled, they fuse into loops of a few us, and the grid
  ran 1.2-1.5x faster (2-core Intel Xeon, WORKSPACE.md). The same product
  up to rounding: a float32 dot may sum in another order, and Adam's final
  loss in simple experiment 1 moves with it (it is set by rounding there).
  Unrolled products are plain multiplies and adds in the arrays' dtype,
  whatever ``jax_default_matmul_precision`` says (where that is TF32 or
  bfloat16 passes, on an accelerator, these round as float32 arithmetic).
  """
  (m, k), n = a.shape, b.shape[1]
  if max(m, k, n) > SMALL_PRODUCT:
    return a @ b
  out = a[:, :1] * b[:1]
  for i in range(1, k):
    out = out + a[:, i:i + 1] * b[i:i + 1]
  return out


def _chain(mats: Sequence[jax.Array]) -> jax.Array:
  """The product of ``mats``, associated in the order of fewest
  multiply-adds (the textbook dynamic program), each product ``_matmul``."""
  dims = [a.shape[0] for a in mats] + [mats[-1].shape[1]]
  n = len(mats)
  cost = {(i, i): 0 for i in range(n)}
  split = {}
  for length in range(1, n):
    for i in range(n - length):
      j = i + length
      cost[i, j], split[i, j] = min(
          (cost[i, s] + cost[s + 1, j] + dims[i] * dims[s + 1] * dims[j + 1], s)
          for s in range(i, j))

  def product(i, j):
    if i == j:
      return mats[i]
    s = split[i, j]
    return _matmul(product(i, s), product(s + 1, j))

  return product(0, n - 1)


def deep_linear(hidden: Sequence[int],
                options: Mapping[str, Sequence[str]]) -> Model:
  """A product of ``len(hidden) + 1`` weight matrices, each hidden layer
  followed by the relaxed norm.

  Args:
    hidden: widths between the factors; ``(6,)`` is the two-layer network
      ``W_2 W_1 x`` of the talk.
    options: option names for the ``init`` and ``norm`` axes (``norm``
      missing: ``('none',)``).

  Returns:
    A ``Model`` whose knobs are the init and norm weights and ``init_scale``.
    Its parameters are ``{'w': [W_1, ..., W_L]}`` and its state ``{}`` with
    the norm options ``('none',)``; otherwise ``{'w': [...], 'norm': [one
    per hidden layer]}`` and ``{'norm': [...]}``. The factors keep their
    path either way: a member's stochastic rounding draws its bits by path
    (``placement``), so a member without norm in a grid with a norm axis
    rounds as its run without the axis.
  """
  hidden = tuple(hidden)
  norm_names = tuple(options.get('norm', ('none',)))
  norm_init, norm_apply = components.relaxed_norm(norm_names)
  init_at = components.scaled_init(options['init'])
  plain = norm_names == ('none',)

  def init(key, in_dim, out_dim, knobs):
    widths = (in_dim,) + hidden + (out_dim,)
    init_w = init_at(knobs)
    ws = [init_w(jax.random.fold_in(key, i), (fan_in, fan_out))
          for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:]))]
    if plain:
      return {'w': ws}, {}
    norms = [norm_init(width) for width in hidden]
    return ({'w': ws, 'norm': [p for p, _ in norms]},
            {'norm': [s for _, s in norms]})

  def apply(params, state, x, knobs, train, key=None, preactivation=None):
    if plain and preactivation is None:
      # The same function as ((x W_1) W_2) ..., computed as (W_L^T ... W_1^T)
      # x^T: ``_chain`` picks the cheapest association (the [in, out] product
      # first when the batch outnumbers the widths: 42% of the textbook
      # order's FLOPs for the talk's net), and in the transposed form a
      # vmapped grid's [members * out, batch] activations are one row-major
      # matrix, so neither pass transposes them. Together: 41 -> 8.9 us per
      # member-step on one CPU device (WORKSPACE.md).
      return _chain([w.T for w in reversed(params['w'])] + [x.T]).T, state
    # Layer by layer (with a hook and no norm: the textbook order, equal to
    # the product above up to float rounding).
    ws = params['w']
    new_norm_state = []
    for i, w in enumerate(ws[:-1]):
      x = x @ w
      if not plain:
        x, s = norm_apply(params['norm'][i], state['norm'][i], x,
                          knobs['norm'], train,
                          components.component_key(key, 'norm', i), knobs)
        new_norm_state.append(s)
      if preactivation is not None:
        x = preactivation(i, x)
    y = x @ ws[-1]
    return y, (state if plain else {'norm': new_norm_state})

  def depth(params):
    return {'w': list(range(len(params['w']))),
            **({} if plain else {'norm': [layer_depth(n, i) for i, n in
                                          enumerate(params['norm'])]})}

  return Model(init, apply, choice_axes=('norm', 'init'), depth=depth,
               preactivation_hook=True, feature_major=plain,
               layer_keys=True, per_sample=True)
