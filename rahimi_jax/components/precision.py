"""Rounding float32 values to a lower-precision format, with traced format and mode.

``quantize(x, fmt, mode, key)`` returns the float32 value of ``x`` rounded to
the format ``fmt`` (mantissa bits, minimum exponent, largest finite value,
whether it has infinities) in the rounding ``mode`` (nearest-even, toward zero
or stochastic). Both are traced arrays, not Python constants, so one compiled
program holds float32, bfloat16 nearest-even, bfloat16 stochastic, float16 and
float8 members side by side and ``vmap`` runs over them.

Everything happens on the float32 bit pattern in integer arithmetic. XLA's CPU
backend flushes subnormal floats to zero in arithmetic (``2 * 1e-40`` is 0
under ``jit``), so a float computation could not round to bfloat16's
subnormals, and converting through ``bfloat16`` would fix the mode at trace
time (and XLA may fold ``convert(convert(x))`` away, openxla/xla#41605).

Semantics (those of IEEE 754 and of the ``gfloat`` reference):

* the significand keeps ``man_bits`` bits below the leading one; below the
  format's smallest normal (``2**emin``) the spacing stays ``2**(emin -
  man_bits)`` (gradual underflow, subnormals);
* nearest-even: ties go to the even significand; toward zero: truncation;
  stochastic: with ``K = SR_BITS`` random bits ``r`` per value, the fraction
  of a quantum being dropped is first rounded to ``K`` bits (nearest-even,
  ``D``), and the value rounds away from zero iff ``D + r >= 2**K``: up with
  probability ``D / 2**K``, unbiased to ``2**-K`` of a quantum;
* overflow (a rounded magnitude above ``max``): ``max`` when saturating or
  rounding toward zero, otherwise infinity, or NaN for a format without
  infinities (float8 e4m3fn); an infinite input stays infinite (NaN without
  infinities) in every mode, ``max`` only when saturating;
* NaN stays NaN; zeros keep their sign.
"""

from collections.abc import Mapping
import functools
import re
from typing import NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from rahimi_jax import registry
from rahimi_jax.components import relaxed

SR_BITS = 16  # random bits per stochastically rounded value
MODES = ('nearest_even', 'toward_zero', 'stochastic')
_NEAREST, _TOWARD_ZERO, _STOCHASTIC = range(len(MODES))  # traced mode codes
_NAN_BITS = 0x7FC00000
_INF_BITS = 0x7F800000


class Format(NamedTuple):
  """A binary floating-point format, as (traceable) numbers.

  Attributes:
    man_bits: significand bits after the leading one (1..23).
    emin: exponent of the smallest normal number.
    max: the largest finite value.
    has_inf: overflow gives infinity (otherwise NaN).
  """
  man_bits: jax.typing.ArrayLike
  emin: jax.typing.ArrayLike
  max: jax.typing.ArrayLike
  has_inf: jax.typing.ArrayLike


def ieee_format(exp_bits: int, man_bits: int) -> Format:
  """An IEEE-754-style format: ``exp_bits`` of exponent, top code for inf/NaN."""
  if not (isinstance(exp_bits, int) and 2 <= exp_bits <= 8):
    raise ValueError(f'exp_bits must be an integer in 2..8; got {exp_bits!r}.')
  if not (isinstance(man_bits, int) and 1 <= man_bits <= 23):
    raise ValueError(f'man_bits must be an integer in 1..23; got {man_bits!r}.')
  emax = 2**(exp_bits - 1) - 1
  return Format(man_bits, 1 - emax, float((2 - 2.0**-man_bits) * 2.0**emax),
                True)


FORMATS: dict[str, Format] = {
    'float32': ieee_format(8, 23),
    'bfloat16': ieee_format(8, 7),
    'float16': ieee_format(5, 10),
    # OCP float8: e5m2 is IEEE-like; e4m3fn has no infinities and uses the
    # top exponent for numbers (max 448), only S.1111.111 is NaN.
    'float8_e5m2': ieee_format(5, 2),
    'float8_e4m3fn': Format(3, -6, 448.0, False),
}
_CUSTOM = re.compile(r'e(\d+)m(\d+)')


def get_format(name: str) -> Format:
  """A format by name: one of ``FORMATS``, or ``'e<E>m<M>'`` (IEEE-style)."""
  if name in FORMATS:
    return FORMATS[name]
  match = _CUSTOM.fullmatch(name)
  if match is None:
    raise ValueError(f'Unknown format {name!r}; accepted: '
                     f'{", ".join(FORMATS)}, or e<E>m<M> with E in 2..8 '
                     'exponent bits and M in 1..23 mantissa bits (e.g. e8m3).')
  return ieee_format(int(match.group(1)), int(match.group(2)))


def get_mode(name: str) -> int:
  """The traced code of a rounding mode (its index in ``MODES``)."""
  return MODES.index(registry.get({m: m for m in MODES}, name,
                                  'rounding mode'))


def format_knobs(fmt: Format) -> dict[str, jax.Array]:
  """``fmt`` as the arrays ``quantize`` reads (stack them to vmap formats)."""
  return {
      'man_bits': jnp.asarray(fmt.man_bits, jnp.int32),
      'emin': jnp.asarray(fmt.emin, jnp.int32),
      'max_bits': jnp.asarray(np.float32(fmt.max).view(np.int32)),
      'has_inf': jnp.asarray(fmt.has_inf, bool),
  }


def _split(n, s):
  """``(n >> s, n - (n >> s << s))`` for int32 ``n >= 0`` and any ``s >= 0``
  (shifts of 32 and more drop every bit)."""
  kept = jnp.where(s >= 32, 0, n >> jnp.minimum(s, 31))
  return kept, n - jnp.where(s >= 32, 0, kept << jnp.minimum(s, 31))


def _rounds_up(kept, rem, s):
  """Whether ``kept * 2**s + rem`` (``rem < 2**s``) rounds up to nearest,
  ties to even (int32)."""
  half = jnp.where(s >= 1, 1 << jnp.clip(s - 1, 0, 30), 0)
  half = jnp.where(s >= 32, jnp.int32(2**30), half)  # above any rem < 2**30
  up = (s >= 1) & ((rem > half) | ((rem == half) & ((kept & 1) == 1)))
  return up.astype(jnp.int32)


def _round_half_even(n, s):
  """``round(n / 2**s)`` to nearest, ties to even, for ``n >= 0``, ``s >= 0``."""
  kept, rem = _split(n, s)
  return kept + _rounds_up(kept, rem, s)


# Jitted: a step rounds each array at several places and the traces of
# ``engine.cost_ratios`` and the compile re-trace the step; a jit's trace is
# reused per shape (the rounding study's first run 41-43 -> 30-32 s,
# WORKSPACE.md). Integer arithmetic: the same bits inlined or not.
@functools.partial(jax.jit, static_argnames=('overflows',))
def quantize(x: jax.Array, fmt: Mapping[str, jax.Array], mode: jax.Array,
             srbits: jax.Array | None = None, *,
             saturate: bool | jax.Array = False, overflows: bool = False):
  """``x`` (float32) rounded to ``fmt`` in ``mode``; float32 out.

  Args:
    x: float32 array.
    fmt: ``format_knobs(...)``: traced scalars (or arrays broadcasting
      against ``x``).
    mode: traced int32 code, an index in ``MODES``.
    srbits: unsigned random integers, shape of ``x`` (only the low
      ``SR_BITS`` bits are used); required for stochastic rounding (see
      ``stochastic_bits``): without them its values are NaN.
    saturate: overflow gives ``max`` instead of inf / NaN.
    overflows: also return where a finite ``x`` overflowed (its rounded
      magnitude above ``max``: a value that rounds down to ``max`` did not).

  Returns:
    float32 array of the values of the format, shape of ``x`` (and the
    overflows, a bool array, when asked).
  """
  x = jnp.asarray(x, jnp.float32)
  bits = lax.bitcast_convert_type(x, jnp.int32)
  sign = bits & jnp.int32(-2**31)
  u = bits & 0x7FFFFFFF
  ef = u >> 23
  sig = jnp.where(ef > 0, (u & 0x7FFFFF) | 0x800000, u & 0x7FFFFF)
  eb = jnp.maximum(ef, 1) - 150  # |x| = sig * 2**eb
  # The quantum's exponent. For a float32 subnormal (ef == 0) ef - 127 is
  # below any format's emin (>= -126), as its true exponent is, so no
  # leading-zero count is needed.
  q = jnp.maximum(ef - 127, fmt['emin']) - fmt['man_bits']
  d = jnp.maximum(q - eb, 0)  # bits of sig below the quantum

  # d <= 23: the dropped bits are u's low d bits (the leading one is kept),
  # and rounding up adds 2**d to u, carrying into the exponent as the value
  # does. d >= 24: all of |x| < 2**q is dropped; the result is 0 or 2**q.
  inside = d <= 23
  _, rem = _split(sig, d)
  kept_lsb = jnp.where(inside, (sig >> jnp.minimum(d, 23)) & 1, 0)
  nearest = _rounds_up(kept_lsb, rem, d)
  if srbits is None:
    stochastic = jnp.zeros_like(nearest)
  else:
    # The dropped fraction rem / 2**d to SR_BITS bits, nearest-even.
    frac = jnp.where(d >= SR_BITS,
                     _round_half_even(rem, jnp.maximum(d - SR_BITS, 0)),
                     rem << jnp.clip(SR_BITS - d, 0, SR_BITS))
    r = (srbits & (2**SR_BITS - 1)).astype(jnp.int32)
    stochastic = (frac + r >= 2**SR_BITS).astype(jnp.int32)
  up = jnp.select([mode == _NEAREST, mode == _STOCHASTIC],
                  [nearest, stochastic], 0)
  pow2q = jnp.where(q >= -126, (jnp.clip(q, -126, 127) + 127) << 23,
                    1 << jnp.clip(q + 149, 0, 30))
  out = jnp.where(inside, u - rem + (up << jnp.minimum(d, 23)),
                  jnp.where(up == 1, pow2q, 0))

  finite = ef < 255
  over = jnp.where(finite, out > fmt['max_bits'], ef == 255)
  clamp = saturate | (mode == _TOWARD_ZERO)
  overflowed = jnp.where(clamp, fmt['max_bits'],
                         jnp.where(fmt['has_inf'], _INF_BITS, _NAN_BITS))
  out = jnp.where(over, overflowed, out)
  is_nan = (ef == 255) & ((u & 0x7FFFFF) != 0)
  out = jnp.where(is_nan, _NAN_BITS, out)
  inf_in = (ef == 255) & ~is_nan
  out = jnp.where(inf_in & ~jnp.asarray(saturate),
                  jnp.where(fmt['has_inf'], _INF_BITS, _NAN_BITS), out)
  value = lax.bitcast_convert_type(sign | out, jnp.float32)
  if srbits is None:  # no bits to round with: NaN, not a silent truncation
    value = jnp.where(mode == _STOCHASTIC, jnp.nan, value)
  return (value, over & finite) if overflows else value


def _mix(x):
  """A bijective 32-bit integer hash with full avalanche (Wellons'
  ``lowbias32``: bias 0.17 against an ideal 0.0)."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


@functools.partial(jax.jit, static_argnums=1)  # as ``quantize``
def stochastic_bits(key: jax.Array, shape) -> jax.Array:
  """Random bits for ``quantize``'s stochastic mode, drawn from ``key``.

  A counter-based generator: entry ``i`` is a keyed hash of ``i`` (two
  rounds of ``_mix``, the key's words mixed in between), about 12 integer
  operations per value where ``jax.random.bits`` (threefry) spends ~100; the
  rounding consumes 16 bits per value, every value and step, so this was
  most of the stochastic mode's cost (WORKSPACE.md). The key still comes
  from the member's seed and the step (``fold_in``), so arms stay paired.
  """
  words = jax.random.key_data(key).reshape(-1).astype(jnp.uint32)
  size = int(np.prod(shape, dtype=np.int64))
  i = lax.iota(jnp.uint32, size).reshape(shape)
  x = _mix(i * jnp.uint32(0x9E3779B9) + words[0])
  for w in words[1:]:
    x = _mix(x ^ w)
  return x


AXIS = registry.register(registry.Axis(
    name='precision', options=registry.Parsed(
        FORMATS, get_format,
        f'{", ".join(FORMATS)}, or e<E>m<M> (IEEE-style: E in 2..8 exponent '
        'bits, M in 1..23 mantissa bits, e.g. e8m3)'), default='float32',
    flag='precisions',
    help=('Number format of the values rounded at the placements (float32: '
          'nothing is rounded).'),
    loop=True, relaxable=False))
ROUNDING_AXIS = registry.register(registry.Axis(
    name='rounding', options={m: m for m in MODES}, default='nearest_even',
    flag='roundings',
    help=('Rounding mode to the format: nearest-even, toward zero (overflow '
          'saturates at the largest finite value), or stochastic (random bits '
          'from the step key, paired across arms).'),
    loop=True, relaxable=False))


def select(formats, format_weights: jax.Array, modes,
           mode_weights: jax.Array) -> tuple[dict[str, jax.Array], jax.Array]:
  """The format knobs and mode code that one-hot weights pick.

  The options of the ``precision`` and ``rounding`` axes are tables of
  numbers; the weights pick a row (``relaxed.pick``), so every format and
  mode of a grid shares one program.

  Returns:
    ``(fmt, mode)`` for ``quantize``.
  """
  table = jax.tree.map(lambda *a: jnp.stack(a),
                       *[format_knobs(AXIS.get(f)) for f in AXIS.check(formats)])
  codes = jnp.asarray([get_mode(m) for m in ROUNDING_AXIS.check(modes)],
                      jnp.int32)
  return (relaxed.pick(format_weights, table),
          relaxed.pick(mode_weights, codes))
