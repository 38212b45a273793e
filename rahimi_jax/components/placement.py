"""Where a training step rounds to the precision axis's format, and loss scaling.

The ``placement`` axis chooses the points of a step at which values are
rounded (``precision.quantize``, in the ``rounding`` axis's mode); arithmetic
between them stays float32, as on hardware that accumulates low-precision
products in float32:

* ``storage``: the parameters, after initialization and after every update
  (the master weights are the rounded ones);
* ``gradients``: the gradients the optimizer receives, in the loss-scaled
  domain (rounded after multiplying by the loss scale, divided by it after);
* ``updates``: the updates the optimizer returns, before they are applied;
* ``optimizer_state``: every floating array of the optimizer's state
  (momentum, Adam's moments) after every update;
* ``constants``: the optimizer's knobs and constants (learning rate,
  momentum, weight decay, b1, b2, eps, decay), rounded once; under stochastic
  rounding they round to nearest (a one-off value would be a coin flip per
  seed, not an average over steps);
* ``activations``: the inputs of every matmul of the forward pass
  (activations and a rounded copy of the weights; the stored weights stay
  float32 unless ``storage`` is on too). The backward pass differentiates
  the rounding as the identity (straight-through) and runs in float32; the
  least-squares optimizers' residual function is not rounded.

Only the training steps round: the logged evaluations (train and test loss
and accuracy) run the forward pass in float32 on the stored parameters, so
an ``activations`` member is evaluated unrounded and a ``storage`` member on
its rounded parameters.

An option is one place or several joined by ``+`` (``storage+gradients``), so
a grid can separate their effects and combine them. Each option is a row of
booleans; ``argmax`` of the member's one-hot weights picks it (traced), and
places that no option of a grid uses cost nothing (static).

The ``loss_scaling`` axis multiplies the loss (in practice: the float32
gradients) by a scale before the ``gradients`` rounding and divides after, so
that small gradients survive a format with little range below 1 (float16).
``none``: scale 1; ``static``: the ``loss_scale`` knob, and an overflow
becomes an infinite update as it would in the hardware; ``dynamic``: starts
at ``loss_scale``, halves and skips the step (parameters and optimizer state
unchanged) when a rounded gradient is not finite, doubles after
``DYNAMIC_PERIOD`` finite steps in a row (the rule of Micikevicius et al.,
2018, with PyTorch's ``GradScaler`` and jmp's defaults).

The choice between the three is traced, so one program holds them; that is why
``jmp`` (which fixes the scaling class at trace time) is not used.
"""

from collections.abc import Callable, Mapping
import functools
from typing import Any
import zlib

import jax
from jax import lax
import jax.numpy as jnp

from rahimi_jax import registry
from rahimi_jax import stats
from rahimi_jax.components import precision
from rahimi_jax.components import relaxed

PLACES = ('storage', 'gradients', 'updates', 'optimizer_state', 'constants',
          'activations')
# Places whose rounded values are counted (overflows, underflows); constants
# are explained from their rounded values instead.
COUNTED = tuple(p for p in PLACES if p != 'constants')
LOSS_SCALINGS = ('none', 'static', 'dynamic')
DYNAMIC_PERIOD = 2000  # finite steps before a dynamic scale doubles
DYNAMIC_FACTOR = 2.0


def _places(name: str) -> frozenset[str]:
  """A placement option: one place or several joined by ``+``, as a set."""
  parts = name.split('+')
  if any(p not in PLACES for p in parts) or len(set(parts)) != len(parts):
    raise ValueError(name)
  return frozenset(parts)


AXIS = registry.register(registry.Axis(
    name='placement', options=registry.Parsed(
        PLACES, _places,
        f'{", ".join(PLACES)}, or several joined by + (e.g. storage+gradients)'),
    default='storage',
    flag='placements',
    help=('Where a step rounds to the precision: storage (parameters), '
          'gradients, updates, optimizer_state, constants (the optimizer\'s '
          'hyperparameters), activations (matmul inputs of the forward pass).'),
    loop=True, relaxable=False, switchable=True))
LOSS_SCALING_AXIS = registry.register(registry.Axis(
    name='loss_scaling', options={n: n for n in LOSS_SCALINGS}, default='none',
    flag='loss_scalings',
    help=('Loss scaling around the gradients rounding: none, static (the '
          'loss_scale knob), dynamic (starts at loss_scale; halves and skips '
          f'the step on a non-finite gradient, doubles after {DYNAMIC_PERIOD} '
          'finite steps).'),
    loop=True, relaxable=False,
    knobs=(registry.Knob('loss_scale', 2.0**15,
                         'Loss scale: the static one, the dynamic one\'s '
                         'start.', read_by=('static', 'dynamic')),)))

# The columns a rounding grid logs (train.make_train), declared with the
# others.
stats.METRICS.update(
    {f'{kind}_{p}': stats.Metric(False, 0.0, float('inf'))
     for kind in ('overflows', 'underflows') for p in COUNTED}
    | {'loss_scale': stats.Metric(False, 0.0, float('inf')),
       'steps_skipped': stats.Metric(False, 0.0, float('inf'))})


def places(options: Mapping[str, tuple[str, ...]]) -> tuple[str, ...]:
  """The places some member of a grid with ``options`` rounds at (static).

  Empty when the precision axis has only ``float32`` (nothing rounds).
  """
  if tuple(options['precision']) == ('float32',):
    return ()
  used = set().union(*(AXIS.get(o) for o in options['placement']))
  return tuple(p for p in PLACES if p in used)


def counters(options, events: bool = True) -> dict[str, jax.Array]:
  """Zeroed per-log counters of a grid with ``options`` (see ``Policy``):
  with ``events``, each place's overflows and underflows and the updates
  lost; the steps a dynamic loss scale skipped in any case (one scalar)."""
  names = []
  if events:
    names += [f'{kind}_{p}' for p in places(options) if p in COUNTED
              for kind in ('overflows', 'underflows')]
    if 'storage' in places(options):
      names += ['updates_lost', 'updates_made']
  if 'dynamic' in options['loss_scaling']:
    names.append('steps_skipped')
  return {n: jnp.zeros((), jnp.float32) for n in names}


@jax.custom_jvp
def _ste(x, rounded):
  """``rounded``, differentiated as ``x`` (straight-through; exact, where
  ``x + stop_gradient(rounded - x)`` could round)."""
  del x
  return rounded


@_ste.defjvp
def _ste_jvp(primals, tangents):
  return primals[1], tangents[0]


def count_both(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(sum(a), sum(b))`` of two boolean arrays of one shape, in one int32
  reduction of ``a + (b << 15)`` when they have fewer than 2**15 entries
  (each count then fits its 15 bits): a reduction costs about as much as
  rounding the array once on CPU, and the loop counts at every step."""
  if a.size >= 2**15:
    return jnp.sum(a), jnp.sum(b)
  total = jnp.sum(a.astype(jnp.int32) + (b.astype(jnp.int32) << 15))
  return total & (2**15 - 1), total >> 15


class Policy:
  """One member's rounding in one step: the format, the mode, the places.

  Built inside the traced step from the grid's options (static) and the
  member's knobs (traced). ``round(place, tree, counts)`` rounds ``tree`` if
  the member's placement includes ``place`` and returns it unchanged
  otherwise, adding to ``counts`` the values it sent beyond the format's
  largest finite value (``overflows_<place>``) and the nonzero ones it
  flushed to zero (``underflows_<place>``).
  """

  def __init__(self, options: Mapping[str, tuple[str, ...]],
               knobs: Mapping[str, Any], key: jax.Array | None):
    self.places = places(options)
    self.fmt, self.mode = precision.select(
        options['precision'], knobs['precision'], options['rounding'],
        knobs['rounding'])
    table = jnp.asarray([[p in AXIS.get(o) for p in PLACES]
                         for o in AXIS.check(options['placement'])])
    self._on = relaxed.pick(knobs['placement'], table)
    self.stochastic = 'stochastic' in options['rounding']
    self.key = key
    scalings = LOSS_SCALING_AXIS.check(options['loss_scaling'])
    self.scaling = relaxed.pick(knobs['loss_scaling'], jnp.asarray(
        [LOSS_SCALINGS.index(s) for s in scalings]))
    self.dynamic = 'dynamic' in scalings
    self.scaled = scalings != ('none',)
    self.loss_scale = jnp.asarray(knobs['loss_scale'], jnp.float32)
    self.switched = relaxed.switched('placement')

  def on(self, place: str) -> jax.Array:
    """Whether the member rounds at ``place`` (traced bool)."""
    return self._on[PLACES.index(place)]

  def _at(self, place: str, rounded: Callable[[jax.Array], tuple[
      jax.Array, jax.Array]], x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``rounded(x)`` (the value and its int32 ``[overflows, underflows]``)
    if the member rounds at ``place``, else ``x`` and no events. Switched
    (``relaxed.switched('placement')``, the placement shared by a group's
    members) a branch: a group that does not round here computes nothing;
    else both, and a select."""
    on = self.on(place)
    if self.switched:
      return lax.cond(on, rounded, lambda x: (x, jnp.zeros(2, jnp.int32)), x)
    q, events = rounded(x)
    return jnp.where(on, q, x), jnp.where(on, events, 0)

  def _round(self, x, key, mode=None, overflows=False):
    """``x`` rounded (``mode``: the member's; stochastic bits from ``key``
    when some option rounds stochastically and ``mode`` is not forced), and
    where it overflowed, if asked (``precision.quantize``)."""
    bits = None
    if self.stochastic and mode is None:
      if key is None:
        raise ValueError('stochastic rounding needs a key.')
      bits = precision.stochastic_bits(key, x.shape)
    q, over = precision.quantize(x, self.fmt,
                                 self.mode if mode is None else mode, bits,
                                 overflows=True)
    return (_ste(x, q), over) if overflows else _ste(x, q)

  def _events(self, x, key):
    """``x`` rounded, and its events: ``[overflows, flushed to 0]``."""
    q, over = self._round(x, key, overflows=True)
    return q, jnp.stack(count_both(over, (x != 0) & (q == 0)))

  def round(self, place: str, tree: Any, counts: dict[str, jax.Array],
            counted: jax.Array | bool = True, used: Any = None
            ) -> tuple[Any, dict[str, jax.Array]]:
    """``tree``'s float32 leaves rounded if the member rounds at ``place``.

    ``counted``: whether its events count (False for the state of an
    optimizer option of weight 0, which the relaxed mixture keeps but the
    member does not use). ``used``: per leaf of ``tree``, whether its events
    count (``None``: all; a grid's parameters also hold the norm options a
    member does not use, which weight decay still moves).
    """
    if place not in self.places:
      return tree, counts
    on = self.on(place)
    key = (None if self.key is None
           else jax.random.fold_in(self.key, PLACES.index(place)))
    counting = f'overflows_{place}' in counts
    leaves, treedef = jax.tree.flatten_with_path(tree)
    flags = ([True] * len(leaves) if used is None
             else treedef.flatten_up_to(used))
    out, over, under = [], 0, 0
    for (path, leaf), flag in zip(leaves, flags):
      if not (hasattr(leaf, 'dtype') and leaf.dtype == jnp.float32):
        out.append(leaf)  # counts, integers
        continue
      # Each array's bits by its path, not its position: a relaxed grid's
      # tree also holds the other options' arrays (a batch norm's scale
      # beside a member without norm), which must not move this one's.
      array = zlib.crc32(jax.tree_util.keystr(path).encode()) & 0x7FFFFFFF

      def rounded(x, k=None if key is None else jax.random.fold_in(key, array)):
        if counting:
          return self._events(x, k)
        return self._round(x, k), jnp.zeros(2, jnp.int32)

      q, events = self._at(place, rounded, leaf)
      out.append(q)
      events = jnp.where(flag, events, 0)
      over, under = over + events[0], under + events[1]
    counts = dict(counts)
    if counting:
      on = on & counted
      counts[f'overflows_{place}'] += jnp.where(on, over, 0).astype(jnp.float32)
      counts[f'underflows_{place}'] += jnp.where(on, under, 0).astype(
          jnp.float32)
    return jax.tree.unflatten(treedef, out), counts

  def constants(self, hp: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """The optimizer's knobs and constants, rounded if ``constants`` is on
    (to nearest under stochastic rounding)."""
    if 'constants' not in self.places:
      return dict(hp)
    mode = jnp.where(self.mode == precision.get_mode('stochastic'),
                     precision.get_mode('nearest_even'), self.mode)
    on = self.on('constants')
    return {n: jnp.where(on, self._round(jnp.asarray(v, jnp.float32), None,
                                         mode), v)
            for n, v in hp.items()}

  def matmul_input(self, tally: list[jax.Array]) -> Callable[[jax.Array],
                                                              jax.Array]:
    """The models' hook for the ``activations`` place: ``x -> rounded x``.

    Each call rounds one matmul input (with its own stochastic key) and
    appends its overflow and underflow counts to ``tally``, which the step
    returns from the differentiated function as auxiliary output.
    """

    def hook(x):
      key = (None if self.key is None else jax.random.fold_in(
          jax.random.fold_in(self.key, PLACES.index('activations')),
          len(tally)))

      q, events = self._at('activations',
                           functools.partial(self._events, key=key), x)
      tally.append(lax.stop_gradient(events))
      return q

    return hook

  # ------------------------------------------------------------ loss scaling
  def initial_scaler(self) -> jax.Array:
    """``[scale, finite steps in a row]`` of a member at step 0."""
    return jnp.stack([self.scale(None), jnp.float32(0)])

  def scale(self, scaler: jax.Array | None) -> jax.Array:
    """The member's current loss scale (1 without loss scaling)."""
    dynamic = self.loss_scale if scaler is None else scaler[0]
    return jnp.select([self.scaling == 1, self.scaling == 2],
                      [self.loss_scale, dynamic], jnp.float32(1))

  def gradients(self, grads: Any, scaler: jax.Array,
                counts: dict[str, jax.Array]):
    """Gradients through the loss scale and the ``gradients`` rounding.

    Returns:
      ``(grads, finite, counts)``: the unscaled gradients, whether every
      rounded (scaled) gradient is finite, and the updated counts.
    """
    if not self.scaled:  # no member scales its loss (static)
      grads, counts = self.round('gradients', grads, counts)
      return grads, jnp.bool_(True), counts
    s = self.scale(scaler)
    scaled = jax.tree.map(lambda g: g * s, grads)
    scaled, counts = self.round('gradients', scaled, counts)
    finite = jnp.isfinite(sum(jnp.sum(g * 0) for g in jax.tree.leaves(scaled)))
    return jax.tree.map(lambda g: g / s, scaled), finite, counts

  def skips(self, finite: jax.Array) -> jax.Array:
    """Whether the member skips this step (dynamic scaling, non-finite)."""
    return (self.scaling == 2) & ~finite if self.dynamic else jnp.bool_(False)

  def next_scaler(self, scaler: jax.Array, finite: jax.Array) -> jax.Array:
    """The dynamic rule: halve on a non-finite step, double after
    ``DYNAMIC_PERIOD`` finite ones in a row."""
    if not self.dynamic:
      return scaler
    scale, good = scaler[0], jnp.where(finite, scaler[1] + 1, 0)
    grow = good >= DYNAMIC_PERIOD
    scale = jnp.where(finite, jnp.where(grow, scale * DYNAMIC_FACTOR, scale),
                      scale / DYNAMIC_FACTOR)
    new = jnp.stack([scale, jnp.where(grow, 0, good)])
    return jnp.where(self.scaling == 2, new, scaler)
