"""Registries of named options, and the axes of a grid, each declared once.

A choice axis (``optimizer``, ``norm``, ...) is one ``Axis``: its registry of
options, the option used when a grid does not vary it, the options an ablation
varies by default, the value knobs its components read (with defaults), and
its launcher flag and help. The module that defines the options declares the
axis beside them (``AXIS = registry.register(registry.Axis(...))``);
``TrainConfig``, ``AblationConfig``, the launchers' flags and their ``--help``
derive from ``AXES``. Adding an option is one registry entry; adding an axis
is one declaration plus the line where its component acts (a model's
``apply``, or the training loop for a ``loop`` axis: optimizer, precision).
"""

from collections.abc import Mapping, Sequence
import dataclasses
import inspect
import math
from typing import Any, TypeVar

import numpy as np

T = TypeVar('T')


def check_int(name: str, value: Any, lo: int, hi: int | None = None) -> int:
  """``value`` as an ``int``; ``ValueError`` naming it unless it is an
  integer (Python or NumPy, not a bool) in ``[lo, hi)`` (``hi=None``: no
  upper bound)."""
  if (not isinstance(value, (int, np.integer)) or isinstance(value, bool)
      or value < lo or (hi is not None and value >= hi)):
    accepted = (f'>= {lo}' if hi is None else
                f'in [{lo}, {"2**32" if hi == 2**32 else hi})')
    raise ValueError(f'{name} must be an integer {accepted}; got {value!r}.')
  return int(value)


def accepted(registry: Mapping[str, Any], ordered: bool = False) -> str:
  """What ``registry`` accepts, for errors and ``--help``: its ``accepted``
  (a ``Parsed`` registry describes the names it parses), else its names
  (sorted, or in its order: ``ordered``)."""
  return getattr(registry, 'accepted', None) or ', '.join(
      registry if ordered else sorted(registry))


def get(registry: Mapping[str, T], name: str, what: str) -> T:
  """Looks ``name`` up in ``registry``; a helpful error names what exists."""
  try:
    return registry[name]
  except (KeyError, TypeError):
    raise ValueError(f'Unknown {what} {name!r}; accepted: '
                     f'{accepted(registry)}.') from None


def check_options(registry: Mapping[str, Any], names: Sequence[str],
                  what: str) -> tuple[str, ...]:
  """Validates a list of option names of ``what``; returns it as a tuple.

  Two names of one option (a ``Parsed`` registry's ``bfloat16`` and
  ``e8m7``) are refused as a name listed twice is: the grid would hold
  identical members under two labels.
  """
  if isinstance(names, str):
    raise ValueError(f'{what}: expected a list of options, got the string '
                     f'{names!r}; write ({names!r},).')
  names = tuple(names)
  if not names:
    raise ValueError(
        f'{what}: empty list of options; accepted: {accepted(registry)}.')
  options = [get(registry, name, what) for name in names]
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise ValueError(f'{what}: options listed twice: {", ".join(duplicates)}.')
  for i, a in enumerate(options):
    for j in range(i):
      try:
        same = a is options[j] or bool(a == options[j])
      except Exception:  # pylint: disable=broad-except
        same = False  # options that do not compare (arrays): by name only
      if same:
        raise ValueError(f'{what}: {names[j]!r} and {names[i]!r} are one '
                         'option listed twice; keep one.')
  return names


class Options(dict):
  """An axis's registry, option name -> component: a ``dict`` that keeps its
  built-in entries and checks the ones added.

  Adding an option is an assignment (``OPTIMIZERS['lion'] = ...``), checked
  by ``check(what, name, value)`` when given (a ``Signature`` or
  ``InstanceOf``); an option a user added may be assigned again (a notebook
  cell run again). A built-in option may not be replaced or removed: its
  results would carry its name for another option (``clear`` removes the
  ones added).
  """

  def __init__(self, what: str, options: Mapping[str, Any], check=None):
    super().__init__()
    self.what, self.check, self.builtin = what, check, tuple(options)
    for name, value in options.items():
      self._check(name, value)
      super().__setitem__(name, value)

  def _check(self, name, value):
    if not isinstance(name, str) or not name:
      raise TypeError(f'{self.what} option name {name!r}; accepted: a '
                      'non-empty string.')
    if self.check is not None:
      self.check(self.what, name, value)

  def _keep_builtin(self, name):
    if name in self.builtin:
      raise ValueError(
          f'{self.what} {name!r} is built in: its results would carry its '
          'name for another option. Register yours under a new name (built '
          f'in: {", ".join(self.builtin)}).')

  def _admit(self, name, value):
    """Raises unless ``value`` may be registered as ``name``."""
    if name in self.builtin and value is not dict.get(self, name):
      self._keep_builtin(name)
    self._check(name, value)

  def __setitem__(self, name, value):
    self._admit(name, value)
    super().__setitem__(name, value)

  def __delitem__(self, name):
    self._keep_builtin(name)
    super().__delitem__(name)

  def pop(self, name, *default):
    self._keep_builtin(name)
    return super().pop(name, *default)

  def popitem(self):
    raise ValueError(f'{self.what} options: popitem would remove a built-in '
                     'one; delete a registered option by name.')

  def clear(self):
    for name in [n for n in self if n not in self.builtin]:
      super().__delitem__(name)

  def update(self, *args, **kwargs):
    items = dict(*args, **kwargs)
    for name, value in items.items():  # all checked before any is added
      self._admit(name, value)
    for name, value in items.items():
      super().__setitem__(name, value)

  @classmethod
  def fromkeys(cls, keys, value=None):
    return dict.fromkeys(keys, value)  # a plain dict, as ``copy`` gives

  def __ior__(self, other):
    self.update(other)
    return self

  def setdefault(self, name, value=None):
    if name not in self:
      self[name] = value
    return self[name]

  def __reduce__(self):
    return _options, (self.what, self.builtin, dict(self), self.check)


def _options(what, builtin, items, check):
  """``Options`` rebuilt (a copy or an unpickling): the same built-ins."""
  options = Options(what, {n: items[n] for n in builtin}, check)
  options.update({n: v for n, v in items.items() if n not in builtin})
  return options


@dataclasses.dataclass(frozen=True)
class Signature:
  """An ``Options`` check: each option is a function that can be called as
  ``text`` says, with ``args`` and ``kwargs`` standing for its arguments."""
  text: str
  args: tuple[Any, ...] = ()
  kwargs: tuple[tuple[str, Any], ...] = ()

  def __call__(self, what: str, name: str, value: Any) -> None:
    if not callable(value):
      raise TypeError(f'{what} {name!r}: got {value!r}; accepted: a function '
                      f'{self.text}.')
    label = getattr(value, '__qualname__', None) or repr(value)
    try:
      signature = inspect.signature(value)
    except (TypeError, ValueError):
      return  # no signature to read (a builtin): it is checked when called
    try:
      signature.bind(*self.args, **dict(self.kwargs))
    except TypeError as e:
      raise TypeError(f'{what} {name!r}: {label} cannot be called as '
                      f'{self.text} ({e}).') from None


@dataclasses.dataclass(frozen=True)
class InstanceOf:
  """An ``Options`` check: each option is an instance of ``cls``."""
  cls: type
  text: str

  def __call__(self, what: str, name: str, value: Any) -> None:
    if not isinstance(value, self.cls):
      label = getattr(value, '__qualname__', None) or repr(value)
      raise TypeError(f'{what} {name!r}: got {label}; accepted: {self.text}.')


class Parsed(Mapping):
  """Options built on lookup: ``parse(name)`` returns the option or raises
  ``ValueError``; iterating lists ``names`` (the ones to show), and errors and
  ``--help`` give ``accepted`` (number formats ``e<E>m<M>``, placements
  joined by ``+``)."""

  def __init__(self, names: Sequence[str], parse, accepted: str):
    self._names, self._parse, self.accepted = tuple(names), parse, accepted

  def __getitem__(self, name):
    try:
      return self._parse(name)
    except (ValueError, TypeError, AttributeError):
      raise KeyError(name) from None

  def __iter__(self):
    return iter(self._names)

  def __len__(self):
    return len(self._names)


def in_bounds(value: float, minimum: float | None, inclusive: bool = False,
              maximum: float | None = None) -> bool:
  """Whether ``value`` is finite and within the bounds ``bound_text`` says."""
  low = minimum is not None and (value < minimum if inclusive
                                 else value <= minimum)
  high = maximum is not None and value >= maximum
  return math.isfinite(value) and not low and not high


def bound_text(minimum: float | None, inclusive: bool = False,
               maximum: float | None = None) -> str:
  """Allowed values in words: ``>= 0 and < 1``, ``> 0``, or empty: any."""
  low = ('' if minimum is None else
         f'{">=" if inclusive else ">"} {minimum:g}')
  high = '' if maximum is None else f'< {maximum:g}'
  return ' and '.join(b for b in (low, high) if b)


@dataclasses.dataclass(frozen=True)
class Knob:
  """A scalar a component reads: a grid's ``Values`` axis may vary it.

  Attributes:
    name: the knob's name in a grid, in ``train``'s knobs, and the
      launchers' flag.
    default: its value when a grid does not vary it.
    help: one line for the launchers' ``--help``.
    minimum: values must exceed it (or equal it, if ``inclusive``); ``None``:
      any finite value.
    inclusive: ``minimum`` itself is allowed (a momentum of 0).
    maximum: values must be below it (``None``: no upper bound).
    read_by: the options of its axis that read it (``None``: every one
      but ``ignored_by``); the others must ignore it
      (tests/test_components.py checks both).
    ignored_by: with ``read_by=None``, the options that do not read it.
    declared_for: the options ``read_by`` and ``ignored_by`` describe (set
      by an ``Axis`` with ``open_knobs``: its options when declared;
      ``None``: every option). One registered later may read the knob (a
      user's optimizer built with ``hp['momentum']``), so it counts as a
      reader.
  """
  name: str
  default: float
  help: str
  minimum: float | None = 0.0
  inclusive: bool = False
  maximum: float | None = None
  read_by: tuple[str, ...] | None = None
  ignored_by: tuple[str, ...] = ()
  declared_for: tuple[str, ...] | None = None

  def readers(self, options: Sequence[str]) -> tuple[str, ...]:
    """The ones of ``options`` that read this knob, or may (registered after
    the declaration)."""
    return tuple(o for o in options if (
        self.declared_for is not None and o not in self.declared_for) or (
            o not in self.ignored_by
            and (self.read_by is None or o in self.read_by)))

  def bound(self) -> str:
    """The values allowed, in words (``>= 0``, ``> 0``, or empty: any)."""
    return bound_text(self.minimum, self.inclusive, self.maximum)

  def check(self, values: Sequence[float]) -> None:
    """Raises ``ValueError`` naming the first value out of bounds (the
    launchers' flags are parsed with the same bound: ``cli.parse_knob``)."""
    for v in values:
      if not in_bounds(v, self.minimum, self.inclusive, self.maximum):
        raise ValueError(f"{self.name}: '{v:g}' must be a finite number"
                         + (f' {self.bound()}.' if self.bound() else '.'))

  def full_help(self) -> str:
    if self.read_by is not None:
      return self.help + f' Read by: {", ".join(self.read_by)}.'
    if self.ignored_by:
      return self.help + f' Ignored by: {", ".join(self.ignored_by)}.'
    return self.help


@dataclasses.dataclass(frozen=True)
class Axis:
  """A choice axis of the training recipe, declared in one place.

  Attributes:
    name: the axis's name in a grid, in ``TrainConfig.options`` and in the
      knobs (``'norm'``).
    options: the registry: option name -> the component (whatever the code
      that acts on this axis calls).
    default: the option used when a grid does not vary the axis.
    flag: the launchers' flag (a comma list of options, e.g. ``norms``).
    help: what the axis chooses, for ``--help`` (the options are appended).
    study: the options an ablation varies when its flag is not given and the
      model reads the axis; ``None``: not varied by default.
    knobs: the value knobs this axis's components read.
    loop: the training loop reads it, whatever the model (the optimizer);
      otherwise the axis is read by the models that list it in
      ``choice_axes``.
    relaxable: its weights may lie between vertices (a ``Gate``); ``False``
      for a choice that is a table lookup, not a mixture (a number format).
    switchable: its components compute only the chosen option when told
      (``relaxed.switching``; ``TrainConfig.switched``).
    open_knobs: every option, one registered later too, is handed all the
      axis's knobs (the optimizers' ``hp``), so a later one may read a knob
      its ``read_by`` does not list (``Knob.declared_for``).
  """
  name: str
  options: Mapping[str, Any]
  default: str
  flag: str
  help: str
  study: tuple[str, ...] | None = None
  knobs: tuple[Knob, ...] = ()
  loop: bool = False
  relaxable: bool = True
  switchable: bool = False
  open_knobs: bool = False

  def __post_init__(self):
    self.get(self.default)
    if self.study is not None:
      object.__setattr__(self, 'study', self.check(self.study))
    for knob in self.knobs:
      if knob.read_by is not None:
        self.check(knob.read_by)
      if knob.ignored_by:
        self.check(knob.ignored_by)
    if self.open_knobs:
      declared = tuple(self.options)
      object.__setattr__(self, 'knobs', tuple(
          dataclasses.replace(k, declared_for=declared) for k in self.knobs))

  def get(self, name: str) -> Any:
    """The option ``name``; an error names the accepted ones."""
    return get(self.options, name, self.name)

  def check(self, names: Sequence[str]) -> tuple[str, ...]:
    """Validates a list of this axis's options; returns it as a tuple."""
    return check_options(self.options, names, self.name)

  def knob_defaults(self) -> dict[str, float]:
    return {k.name: k.default for k in self.knobs}

  def flag_help(self) -> str:
    """The flag's help: what it chooses, the options, the default."""
    default = ','.join(self.study) if self.study else self.default
    return (f'{self.help} Comma list of: {accepted(self.options, ordered=True)}. '
            f'Default: {default}.')


# name -> Axis, in the order the launchers list them and grids order them.
AXES: dict[str, Axis] = {}


def register(axis: Axis) -> Axis:
  """Adds ``axis`` to ``AXES`` (its name and flag must be new); returns it."""
  taken = {a.flag for a in AXES.values()} | set(knobs())
  if axis.name in AXES or axis.flag in taken:
    raise ValueError(f'axis {axis.name!r} (flag {axis.flag!r}) is already '
                     f'registered; axes: {", ".join(AXES)}.')
  for knob in axis.knobs:
    if knob.name in taken or knob.name in AXES:
      raise ValueError(f'knob {knob.name!r} of axis {axis.name!r} is already '
                       'declared.')
  AXES[axis.name] = axis
  return axis


def get_axis(name: str) -> Axis:
  return get(AXES, name, 'choice axis')


def knobs() -> dict[str, Knob]:
  """Every value knob of every registered axis, by name."""
  return {k.name: k for axis in AXES.values() for k in axis.knobs}


def knob_axis(name: str) -> Axis:
  """The axis whose components read knob ``name``."""
  return next(a for a in AXES.values() if any(k.name == name for k in a.knobs))


def check_knob_read(name: str, options: Sequence[str], hint: str = '') -> None:
  """Raises ``ValueError`` if none of ``options`` (of the axis that reads
  knob ``name``) reads it: a knob set for members that ignore it."""
  owner, knob = knob_axis(name), knobs()[name]
  if not knob.readers(options):
    declared = knob.readers(knob.declared_for or tuple(owner.options))
    later = [o for o in knob.readers(owner.options) if o not in declared]
    raise ValueError(
        f'{name}: no member reads it: the {owner.name} options here are '
        f'{", ".join(options)}, and it is read by {", ".join(declared)}'
        + (f' (and may be by {", ".join(later)}, registered since)'
           if later else '') + f'{hint}.')
