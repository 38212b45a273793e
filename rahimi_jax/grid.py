"""Declaring a grid of ablations and turning it into stacked, traced knobs.

A grid is the product of its axes:

* ``Choice(name, options)``: a finite set of named options (e.g. optimizers).
  Its knob is a weight vector on the simplex, one-hot at grid points.
* ``Gate(name, off, on, gates)``: a component switched by a scalar gate in
  [0, 1]; its knob is the weight pair ``(1 - g, g)`` on ``(off, on)``, so a
  grid can hold relaxed (non-vertex) members beside discrete ones.
* ``Values(name, values)``: numbers (e.g. learning rates). Its knob is a float.
* ``Seeds(n)``: random seeds. Its knob is a PRNG key; everything random in a
  run (initialization, data order) derives from it alone, so members that
  differ only in a component share their random numbers (paired design).

``Grid.knobs()`` stacks every member's knobs on a leading axis, ready for
``jax.vmap``.
"""

from collections.abc import Iterable
import dataclasses
import functools
import itertools
import math
from typing import Any, NamedTuple

import jax
import numpy as np

SEED = 'seed'
# The most members a grid holds: each is a Python object (its name and
# values, ~1 KB), built before anything runs; a grid of 10^8 (a typo in
# --seeds) would exhaust the host's memory instead of failing cleanly.
MAX_MEMBERS = 10**6


def _check_size(what: str, count: int, parts: str) -> None:
  """``ValueError`` if a ``what`` (grid, union) of ``count`` members, made of
  ``parts`` (as the message shows them), is over ``MAX_MEMBERS``."""
  if count > MAX_MEMBERS:
    raise ValueError(
        f'A {what} of {count:,} members ({parts}) is over {MAX_MEMBERS:,}: '
        'every member is built on the host first; run it in parts.')


@functools.lru_cache(maxsize=None)
def _key_maker(impl: str):
  """The seeds' PRNG keys of ``impl``, compiled (per chunk width): the engine
  builds each chunk's knobs while the devices run the previous chunks, and an
  eager ``vmap`` of ``jax.random.key`` took 0.5 ms per call, a compiled one
  0.01. Keyed by the PRNG implementation, which a user may change."""
  return jax.jit(jax.vmap(functools.partial(jax.random.key, impl=impl)))


def _keys(seeds):
  return _key_maker(jax.config.jax_default_prng_impl)(seeds)


def _check_name(name):
  if not isinstance(name, str) or not name.isidentifier():
    raise ValueError(f'Axis name must be an identifier; got {name!r}.')


@dataclasses.dataclass(frozen=True)
class Choice:
  """A choice among named options; its knob is a ``[k]`` simplex weight."""
  name: str
  options: tuple[str, ...]

  def __post_init__(self):
    _check_name(self.name)
    options = tuple(self.options) if not isinstance(self.options, str) else (
        self.options,)
    if not options:
      from rahimi_jax import registry  # pylint: disable=g-import-not-at-top
      axis = registry.AXES.get(self.name)
      raise ValueError(f'{self.name}: empty list of options' + (
          f'; accepted: {", ".join(axis.options)}.' if axis else '.'))
    if len(set(options)) != len(options):
      raise ValueError(f'{self.name}: options listed twice in {list(options)}.')
    object.__setattr__(self, 'options', options)

  @property
  def labels(self) -> tuple[str, ...]:
    return self.options


@dataclasses.dataclass(frozen=True)
class Values:
  """Numeric values of a hyperparameter; its knob is a float32 scalar."""
  name: str
  values: tuple[float, ...]

  def __post_init__(self):
    _check_name(self.name)
    try:
      items = (list(self.values) if isinstance(self.values, (list, tuple))
               else np.atleast_1d(self.values).tolist())
      if isinstance(self.values, str) or any(
          isinstance(v, (str, bool, np.bool_)) for v in items):  # True: not 1
        raise TypeError
      values = tuple(float(v) for v in items)
    except (TypeError, ValueError):
      raise ValueError(
          f'{self.name}: values must be numbers; got {self.values!r}.') from None
    if not values:
      raise ValueError(f'{self.name}: empty list of values.')
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
      raise ValueError(f'{self.name}: values must be finite; got {bad}.')
    if len(set(values)) != len(values):
      raise ValueError(f'{self.name}: values listed twice in {list(values)}.')
    # The knob is float32 (``Grid.knobs``): a value it turns to infinity, or
    # to 0 or a subnormal (flushed to 0 on CPUs), is not the value asked for.
    tiny, most = (float(np.finfo(np.float32).tiny),
                  float(np.finfo(np.float32).max))
    bad = [v for v in values if abs(v) > most or 0 < abs(v) < tiny]
    if bad:
      raise ValueError(f'{self.name}: {bad[0]!r} is out of float32\'s range '
                       f'(the knob\'s type): give 0 or a magnitude from '
                       f'{tiny:.4g} to {most:.4g}.')
    labels = [_format(v) for v in values]
    for i, label in enumerate(labels):
      if labels.index(label) != i:
        raise ValueError(
            f'{self.name}: {values[labels.index(label)]!r} and {values[i]!r} '
            f'both read {label} in member names (6 significant digits); give '
            'values that differ there.')
    object.__setattr__(self, 'values', values)

  @property
  def labels(self) -> tuple[float, ...]:
    return self.values


@dataclasses.dataclass(frozen=True)
class Gate:
  """A component switched by a scalar gate in [0, 1] between two options.

  ``Gate('norm', 'none', 'batch', (0.0, 0.3, 1.0))``: the norm axis at weights
  ``(1 - g, g)`` on ``(off, on)``; 0 is the ablated component, 1 the present
  one, values between are the relaxed mixture (e.g. 70% batch norm + 30% none),
  all in one program with the other members.
  """
  name: str
  off: str
  on: str
  gates: tuple[float, ...] = (0.0, 1.0)

  def __post_init__(self):
    _check_name(self.name)
    if self.off == self.on:
      raise ValueError(f'{self.name}: off and on are the same option {self.on!r}.')
    try:
      given = np.atleast_1d(self.gates)
      if given.dtype.kind in 'SU':
        raise TypeError  # '01' is not the gate 1
      gates = tuple(float(g) for g in given)
    except (TypeError, ValueError):
      raise ValueError(f'{self.name}: gates must be numbers; got '
                       f'{self.gates!r}.') from None
    if not gates or any(not 0 <= g <= 1 for g in gates):
      raise ValueError(f'{self.name}: gates must be a non-empty list in [0, 1]; '
                       f'got {list(gates)}.')
    if len(set(gates)) != len(gates):
      raise ValueError(f'{self.name}: gates listed twice in {list(gates)}.')
    object.__setattr__(self, 'gates', gates)

  @property
  def options(self) -> tuple[str, str]:
    return (self.off, self.on)

  @property
  def labels(self) -> tuple[float, ...]:
    return self.gates


@dataclasses.dataclass(frozen=True)
class Seeds:
  """Random seeds: ``Seeds(4)`` is seeds 0..3, ``Seeds((7, 9))`` those two."""
  seeds: int | tuple[int, ...]
  name: str = SEED

  def __post_init__(self):
    _check_name(self.name)
    seeds = self.seeds
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
      if not 1 <= seeds <= MAX_MEMBERS:
        raise ValueError(f'seeds must be a count from 1 to {MAX_MEMBERS:,} '
                         f'(a grid\'s most members); got {seeds}.')
      seeds = tuple(range(int(seeds)))
    try:
      if isinstance(seeds, (str, bytes)):
        raise TypeError  # '12' is not seeds 1 and 2
      seeds = tuple(seeds)
      if any(isinstance(s, bool) or int(s) != s for s in seeds):
        raise TypeError  # nor 1.9 seed 1
      seeds = tuple(int(s) for s in seeds)
    except (TypeError, ValueError):
      raise ValueError(f'seeds must be a count or integers; got {seeds!r}.') from None
    if not seeds:
      raise ValueError('seeds: empty list of seeds.')
    if len(set(seeds)) != len(seeds) or min(seeds) < 0 or max(seeds) >= 2**32:
      raise ValueError(f'seeds must be distinct integers in [0, 2**32); got '
                       f'{list(seeds)}.')
    object.__setattr__(self, 'seeds', seeds)

  @property
  def labels(self) -> tuple[int, ...]:
    return self.seeds


Axis = Choice | Gate | Values | Seeds


class Member(NamedTuple):
  """One grid point: its position, readable name and axis values."""
  index: int
  name: str
  values: dict[str, Any]


def _with_labels(axis: Axis, labels: tuple[Any, ...]) -> Axis:
  field = {Choice: 'options', Gate: 'gates', Values: 'values',
           Seeds: 'seeds'}[type(axis)]
  return dataclasses.replace(axis, **{field: labels})


def _format(value):
  return f'{value:g}' if isinstance(value, float) else str(value)


class Grid:
  """The full product of ``axes``; seeds default to ``Seeds(1)``."""

  def __init__(self, *axes: Axis):
    if len(axes) == 1 and isinstance(axes[0], (list, tuple)):
      axes = tuple(axes[0])
    for axis in axes:
      if not isinstance(axis, (Choice, Gate, Values, Seeds)):
        raise ValueError(f'Grid axes must be Choice, Gate, Values or Seeds; '
                         f'got {axis!r}.')
    names = [a.name for a in axes]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
      raise ValueError(f'Grid axes declared twice: {", ".join(duplicates)}.')
    if sum(isinstance(a, Seeds) for a in axes) == 0:
      axes = tuple(axes) + (Seeds(1),)
    count = math.prod(len(a.labels) for a in axes)
    _check_size('grid', count, ' x '.join(f'{len(a.labels)} {a.name}'
                                          for a in axes))
    self._set(tuple(axes), itertools.product(*(a.labels for a in axes)))

  def _set(self, axes, points):
    self.axes: tuple[Axis, ...] = axes
    self.members: tuple[Member, ...] = tuple(
        Member(i, ','.join(f'{a.name}={_format(v)}'
                           for a, v in zip(axes, point)),
               {a.name: v for a, v in zip(axes, point)})
        for i, point in enumerate(points))
    names = [m.name for m in self.members]
    if len(set(names)) != len(names):
      raise ValueError('Grid members listed twice: ' + ', '.join(
          sorted({n for n in names if names.count(n) > 1})))

  @classmethod
  def union(cls, *grids: 'Grid') -> 'Grid':
    """The members of several grids over the same axes, in order.

    For designs that are not a full product, e.g. gradient descent over many
    step sizes beside Adam at one: ``Grid.union(Grid(Choice('optimizer',
    ['sgd']), Values('learning_rate', lrs)), Grid(Choice('optimizer',
    ['adam']), Values('learning_rate', [1e-3])))``. Each axis of the union has
    the options (values, seeds) of all the grids, so the union runs as one
    program.
    """
    if not grids:
      raise ValueError('Grid.union needs at least one grid.')
    names = grids[0].axis_names
    for g in grids[1:]:
      if g.axis_names != names:
        raise ValueError(f'Grid.union needs the same axes in the same order; '
                         f'got {list(names)} and {list(g.axis_names)}.')
    axes = []
    for i, first in enumerate(grids[0].axes):
      kinds = {type(g.axes[i]) for g in grids}
      if len(kinds) > 1:
        raise ValueError(f'Axis {first.name!r} is of different kinds in '
                         f'Grid.union: {sorted(k.__name__ for k in kinds)}.')
      if isinstance(first, Gate):  # its values mean first.off..first.on
        ends = list(dict.fromkeys((g.axes[i].off, g.axes[i].on)
                                  for g in grids))
        if len(ends) > 1:
          raise ValueError(
              f'Gate {first.name!r} runs between other options in Grid.union: '
              + ', '.join(f'{off}..{on}' for off, on in ends)
              + '; a union keeps one pair (gate 1 would run the first '
              'grid\'s option).')
      labels = tuple(dict.fromkeys(l for g in grids for l in g.axes[i].labels))
      axes.append(_with_labels(first, labels))
    _check_size('union', sum(len(g) for g in grids),
                ' + '.join(f'{len(g):,}' for g in grids))
    grid = cls.__new__(cls)
    grid._set(tuple(axes), [tuple(m.values[n] for n in names)
                            for g in grids for m in g.members])
    return grid

  def __len__(self) -> int:
    return len(self.members)

  def __repr__(self) -> str:
    return f'Grid({", ".join(map(repr, self.axes))}) with {len(self)} members'

  def axis(self, name: str) -> Axis:
    for a in self.axes:
      if a.name == name:
        return a
    raise ValueError(f'No axis {name!r}; axes: {", ".join(self.axis_names)}.')

  @property
  def axis_names(self) -> tuple[str, ...]:
    return tuple(a.name for a in self.axes)

  @property
  def choices(self) -> dict[str, tuple[str, ...]]:
    """The options of every choice axis (static: they shape the program)."""
    return {a.name: a.options for a in self.axes
            if isinstance(a, (Choice, Gate))}

  def knobs(self, members: Iterable[int] | None = None) -> dict[str, Any]:
    """Every member's knobs stacked on a leading axis of size ``len(grid)``.

    Args:
      members: indices of the members to stack (default: all, in order).

    Returns:
      ``{axis: array}``: ``[G, k]`` float32 one-hot weights for a choice axis,
      ``[G]`` float32 for a value axis, ``[G]`` PRNG keys for the seeds.
    """
    rows = [self.members[i] for i in
            (range(len(self)) if members is None else members)]
    knobs = {}
    for a in self.axes:
      vals = [m.values[a.name] for m in rows]
      if isinstance(a, Choice):
        knobs[a.name] = np.eye(len(a.options), dtype=np.float32)[
            [a.options.index(v) for v in vals]]
      elif isinstance(a, Gate):
        g = np.asarray(vals, np.float32)[:, None]
        knobs[a.name] = np.concatenate([1 - g, g], axis=1)
      elif isinstance(a, Values):
        knobs[a.name] = np.asarray(vals, np.float32)
      else:
        knobs[a.name] = _keys(np.asarray(vals, np.uint32))
    return knobs

  def subset(self, indices: Iterable[int], keep: Iterable[str] = ()
             ) -> 'Grid':
    """A grid of the members at ``indices``; each axis keeps the labels used,
    an axis in ``keep`` all of its labels (its knobs then weigh every option
    of this grid)."""
    rows = [self.members[i] for i in indices]
    if not rows:
      raise ValueError('Grid.subset needs at least one member.')
    keep = set(keep)
    axes = []
    for a in self.axes:
      used = {m.values[a.name] for m in rows}
      labels = tuple(l for l in a.labels if l in used or a.name in keep)
      axes.append(_with_labels(a, labels))
    grid = Grid.__new__(Grid)
    grid._set(tuple(axes), [tuple(m.values[a.name] for a in self.axes)
                            for m in rows])
    return grid
