"""Relaxed (continuous) choices: a discrete choice as a point on the simplex.

A choice axis with options ``o_1 .. o_k`` is evaluated at weights ``w`` as
``sum_i w_i * o_i``. At a one-hot ``w`` this is exactly ``o_j`` (products with
0 and 1 and additions of 0 are exact in IEEE arithmetic), so a grid point is the
plain discrete choice, while a non-vertex ``w`` interpolates between options and
makes a component's influence a derivative.

An option of weight exactly 0 must not poison the others, even where it
overflows, divides by zero, returns NaN, or has an infinite derivative
(``sqrt`` at 0): ``0 * inf`` is NaN, so the plain weighted sum leaks it into
the value, into forward-mode tangents (``0 * d option``), and into gradients
(the zero cotangent sent into the option meets the infinite derivative inside
it). The rule used here is the *strong zero*: where a weight is exactly 0, a
non-finite value, tangent or cotangent of its option counts as 0. Finite ones
are kept, so every derivative that exists is the plain formula's, including
the derivative with respect to the weight itself (the option's value) and the
mixed ones that gate sensitivities through a training run need (how mixing in
a little of an option changes the training gradients). At a weight other than
0 nothing is filtered: interior weights compute exactly the plain formula, and
a non-finite option there poisons the member honestly.

It is applied at two points:

* ``mix`` filters each option's value, tangent and cotangent;
* ``guard`` filters the tangents and cotangents (not the values) of everything
  that flows into an option: inputs, parameters, state, hyperparameters, and
  the results of a function argument such as ``residual_fn``. ``relax``
  applies it; components whose options take different arguments call it per
  option.

Selecting on ``w != 0`` alone (``where(w != 0, x, stop_gradient(x))``) would
also drop the finite mixed derivatives, and a select on the finiteness of a
tangent or cotangent has no transpose JAX could derive; so both points are
small JAX primitives whose tangent and transpose rules apply the filter. They
compose with ``jit``, ``vmap``, ``grad``, ``jvp`` and each other (the tests go
to second order). Forward, ``guard`` compiles to nothing.
"""

from collections.abc import Callable, Iterable, Sequence
import contextlib
import functools
import threading
import types
import zlib
from typing import Any, NamedTuple

import jax
from jax.extend import core as jex_core
from jax.interpreters import ad
from jax.interpreters import batching
from jax.interpreters import mlir
import jax.numpy as jnp


def _strong_zero_impl(on, x):
  return jnp.where(on | jnp.isfinite(x), x, jnp.zeros_like(x))


def _identity_impl(on, x):
  del on
  return x


# strong_zero(on, x): x, except that where ``on`` is False its non-finite
# entries are 0. guard(on, x): x. Both pass a tangent or a cotangent through
# strong_zero. ``on`` is boolean and broadcasts against x (trailing axes).
_strong_zero_p = jex_core.Primitive('relaxed_strong_zero')
_guard_p = jex_core.Primitive('relaxed_guard')


def _filter(on, t):
  """A tangent or cotangent through strong_zero (symbolic zeros stay so)."""
  return t if type(t) is ad.Zero else _strong_zero_p.bind(on, t)


def _define(prim, impl):
  prim.def_impl(impl)
  prim.def_abstract_eval(lambda on, x: x)
  mlir.register_lowering(prim, mlir.lower_fun(impl, multiple_results=False))

  def jvp(primals, tangents):
    on, x = primals
    return prim.bind(on, x), _filter(on, tangents[1])

  def batch(args, dims):
    on, x = args
    on_dim, x_dim = dims
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    x = batching.bdim_at_front(x, x_dim, size)
    if on_dim is not None:  # [size, ...] aligned with x's leading axis
      on = batching.bdim_at_front(on, on_dim, size)
      on = on.reshape(on.shape[:1] + (1,) * (x.ndim - on.ndim) + on.shape[1:])
    return prim.bind(on, x), 0

  ad.primitive_jvps[prim] = jvp
  batching.primitive_batchers[prim] = batch


_define(_strong_zero_p, _strong_zero_impl)
_define(_guard_p, _identity_impl)
# Both are linear in x where it is finite (their tangent maps are
# strong_zero), and their transposes filter the same way.
for _prim in (_strong_zero_p, _guard_p):
  ad.primitive_transposes[_prim] = lambda ct, on, x: [None, _filter(on, ct)]


def _guarded(prim, on, leaf):
  """``prim(on, leaf)`` for a floating-point array; other leaves unchanged."""
  if (isinstance(leaf, jax.Array)
      and jnp.issubdtype(leaf.dtype, jnp.inexact)):
    return prim.bind(on, leaf)
  return leaf


def guard(weight: jax.Array, tree: Any) -> Any:
  """``tree``, whose derivatives are strong zeros where ``weight == 0``.

  Wrap everything an option reads in ``guard(w_i, ...)``: a cotangent that an
  option of weight 0 turns into NaN (``0 * inf``) then stops there instead of
  reaching the shared inputs, while finite derivatives pass. The value is
  unchanged, and forward it costs nothing.

  Args:
    weight: the option's scalar weight.
    tree: a pytree. Its floating-point arrays are guarded; a function leaf
      (such as ``residual_fn=``) becomes one whose results are guarded; other
      leaves (keys, integers, shapes, dtypes, Python numbers) pass unchanged.

  Returns:
    A pytree of the structure and values of ``tree``.
  """
  on = jnp.asarray(weight) != 0

  def guard_leaf(leaf):
    if isinstance(leaf, (types.FunctionType, types.MethodType,
                         functools.partial)):
      return _guard_function(weight, leaf)
    return _guarded(_guard_p, on, leaf)

  return jax.tree.map(guard_leaf, tree)


def _guard_function(weight, fn):
  """``fn`` with its results guarded (it is still differentiable inside)."""

  @functools.wraps(fn)
  def guarded(*args, **kwargs):
    return guard(weight, fn(*args, **kwargs))

  return guarded


class LayerKeys(NamedTuple):
  """A step's key that differs by layer: ``below`` for the layers below
  ``boundary``, ``above`` for the rest.

  The covariate-shift probe (``diagnostics.covariate_shift``) computes a
  layer's gradient after the layers below it took their step: their
  randomness (noisy batch norm's noise, dropout's mask) is then the next
  step's, while the layer itself and those above keep this step's. A model
  gets it as its ``key`` and hands it to ``component_key`` (or
  ``layer_key``), which pick the layer's key.
  """
  below: jax.Array
  above: jax.Array
  boundary: jax.Array


def layer_key(key: 'jax.Array | LayerKeys | None', layer: int = 0
              ) -> jax.Array | None:
  """``key`` as one PRNG key for ``layer``: resolves a ``LayerKeys``.

  A component that has no layer (a flax PRNG stream) takes layer 0's: the
  moved layers' key as soon as any layer moved.
  """
  if isinstance(key, LayerKeys):
    return jnp.where(layer < key.boundary, key.below, key.above)
  return key


def component_key(key: 'jax.Array | LayerKeys | None', axis: str,
                  layer: int = 0) -> jax.Array | None:
  """The PRNG key of one component (``axis``) in one ``layer`` for one step.

  It depends only on the step's key (the member's seed and the step) and on
  where the component sits, never on which option is chosen, so two members
  that differ only in a component draw identical random numbers (common
  random numbers across arms). ``None`` (no key given) stays ``None``; a
  ``LayerKeys`` gives the key of ``layer``'s side of its boundary.
  """
  if key is None:
    return None
  key = layer_key(key, layer)
  axis_id = zlib.crc32(axis.encode()) & 0x7FFFFFFF
  return jax.random.fold_in(jax.random.fold_in(key, axis_id), layer)


def mix(weights: jax.Array, options: Sequence[Any]) -> Any:
  """Returns ``sum_i weights[i] * options[i]`` leaf by leaf.

  An option of weight exactly 0 contributes exactly 0, even where it is inf or
  NaN, and none of its non-finite derivatives (see the module docstring); the
  derivative with respect to its weight is its value where finite, 0
  elsewhere. At other weights this is the plain weighted sum. Guard the
  options' inputs with ``guard`` (``relax`` does) so that their gradients
  stay clean too.

  Integer leaves (counts; no component mixes one today) are the option's
  at a vertex, else the weighted sum in floating point rounded to the
  nearest integer (the weights cast to the integer type first truncated 0.5
  to 0: mixing counts 2 and 4 at 0.5 each gave 0).

  Args:
    weights: ``[k]`` weights, one per option (a point on the simplex).
    options: ``k`` pytrees of identical structure.

  Returns:
    A pytree of the structure of each option.
  """
  if not options:
    raise ValueError('mix needs at least one option.')
  if jnp.shape(weights) != (len(options),):
    raise ValueError(
        f'mix got weights of shape {jnp.shape(weights)} for {len(options)} '
        'options; expected one weight per option.')
  weights = jnp.asarray(weights)

  def term(weight, leaf):
    leaf = _guarded(_strong_zero_p, weight != 0, jnp.asarray(leaf))
    if jnp.issubdtype(leaf.dtype, jnp.integer):
      return weight * leaf.astype(weight.dtype)
    return weight.astype(leaf.dtype) * leaf

  def mix_leaves(*leaves):
    terms = [term(weights[i], leaf) for i, leaf in enumerate(leaves)]
    total = functools.reduce(jnp.add, terms)
    dtype = jnp.asarray(leaves[0]).dtype
    if jnp.issubdtype(dtype, jnp.integer):
      vertex = jnp.stack([jnp.asarray(l) for l in leaves])[jnp.argmax(weights)]
      return jnp.where(jnp.max(weights) == 1, vertex,
                       jnp.round(total).astype(dtype))
    return total

  return jax.tree.map(mix_leaves, *options)


_SWITCHING = threading.local()


@contextlib.contextmanager
def switching(axes: Iterable[str]):
  """While tracing: the choice ``axes`` compute only each member's option.

  Inside, a component of one of ``axes`` (``switched(axis)``) runs the option
  its weights pick (``choose``: ``lax.switch`` on their argmax) instead of
  mixing all of them. That is the same function only at one-hot weights,
  and it has no derivative in the weights: for a grid's members (whose
  choice weights are one-hot) run a group at a time, each group's weights of
  ``axes`` shared by its members and so not batched (``engine.run``'s
  ``switch``), so that the switch stays a branch under ``vmap`` rather than
  computing every option. Thread-local: programs traced in other threads are
  unaffected.
  """
  before = getattr(_SWITCHING, 'axes', frozenset())
  _SWITCHING.axes = before | frozenset(axes)
  try:
    yield
  finally:
    _SWITCHING.axes = before


def switched(axis: str) -> bool:
  """Whether ``axis``'s components choose rather than mix (``switching``)."""
  return axis in getattr(_SWITCHING, 'axes', ())


def choose(weights: jax.Array, branches: Sequence[Callable[[], Any]]) -> Any:
  """``branches[argmax(weights)]()``: only the chosen option is computed
  (where ``weights`` is not batched). Each branch returns the same pytree
  structure, shapes and dtypes; at a one-hot ``weights`` this is ``mix``'s
  value."""
  if jnp.shape(weights) != (len(branches),):
    raise ValueError(
        f'choose got weights of shape {jnp.shape(weights)} for '
        f'{len(branches)} options; expected one weight per option.')
  if len(branches) == 1:
    return branches[0]()
  return jax.lax.switch(jnp.argmax(weights), list(branches))


def pick(weights: jax.Array, table: Any) -> Any:
  """The row of ``table`` (a pytree of arrays, one row per option along
  their first axis) that one-hot ``weights`` pick: ``argmax`` traced, so
  every option of a grid shares one program. For the axes that are tables
  of numbers, not relaxable (a number format, a rounding mode, a placement).
  """
  rows = {jnp.shape(leaf)[0] for leaf in jax.tree.leaves(table)}
  if rows != {jnp.shape(weights)[-1]} or jnp.ndim(weights) != 1:
    raise ValueError(
        f'pick got weights of shape {jnp.shape(weights)} for a table of '
        f'{sorted(rows)} rows; expected one weight per row.')
  return jax.tree.map(lambda a: a[jnp.argmax(weights)], table)


def relax(fns: Sequence[Callable[..., Any]], axis: str | None = None
          ) -> Callable[..., Any]:
  """Returns ``f(weights, *args) = mix(weights, [fn_i(*guard(w_i, args))])``.

  Each option reads the arguments through ``guard`` with its own weight, so an
  option of weight 0 poisons neither the value nor any derivative. Where
  ``axis`` is ``switched``, only the chosen option runs (``choose``).
  """
  fns = tuple(fns)

  def relaxed(weights, *args, **kwargs):
    if axis is not None and switched(axis):
      return choose(weights, [functools.partial(fn, *args, **kwargs)
                              for fn in fns])
    outs = []
    for i, fn in enumerate(fns):
      a, k = guard(weights[i], (args, kwargs))
      outs.append(fn(*a, **k))
    return mix(weights, outs)

  return relaxed
