"""What every launcher in ``experiments/`` shares: parsing, errors, Ctrl-C, output.

A launcher builds its config from flags, runs one library call, and saves
into one results directory. ``launch`` does the rest the same way for all:
bad input is one ``error:`` line before anything compiles; Ctrl-C is one line,
and the members that had finished are saved; every output file of a run
appears in ``--out`` at once (``storage.staged``). While a grid runs, its
checkpoints are kept in ``--out/checkpoint``: the same command after a crash,
a ``kill -9`` or Ctrl-C resumes it, bit-identical to an uninterrupted run;
finished results in ``--out`` are never replaced without ``--overwrite``.

Configs. Every launcher also takes ``--config=FILE`` (``define_config_flag``,
the ``ml_collections.config_flags`` convention of the flax examples and
init2winit): a Python file whose ``get_config()`` returns an
``ml_collections.ConfigDict`` whose fields are the launcher's flag names
(``steps``, ``seeds``, ``optimizers``, ``learning_rate``, ``out``, ...; list
flags take a comma string, ``'sgd,adam'``, or a list). ``--config.steps=1000``
overrides one field on the command line. A flag given on the command line wins
over the config (``--config=run.py --steps=10`` runs 10 steps; a re-run can
then change ``--out`` or add ``--dry_run`` as usual); the same flag given both
as ``--steps`` and as ``--config.steps`` is an error. A field that is no flag
of the launcher is one ``error:`` line naming it and the accepted fields,
before anything compiles (``start`` applies the config).

Re-runs. Each launcher records its flags (``key_flags``) as
``metadata['flags']`` in ``metadata.json``, and ``--config`` also reads a
results directory or its ``metadata.json``:
``--config=/tmp/rahimi_ablate`` sets every flag to the recorded value, so the
run is the same one (``out`` included: give ``--out`` to keep the first
results). One flag serves both, rather than a separate ``--rerun_from``, so a
re-run has the same precedence rules and ``--config.FIELD`` overrides as a
config file, and there is one answer to which of two sources wins. A run from a
config file records it too (``metadata['config_file']`` and its sha256,
``config_file``): a re-run from the results runs that file first when it is
still there and a ``.py`` (and says so, and whether it changed since), so the
options it registers (``components.OPTIMIZERS['lion'] = ...``) are there
again; its fields give way to the recorded flags.
"""

from collections.abc import Callable, Mapping, Sequence
import hashlib
import json
import os
import re
import shutil
import sys
from typing import Any, NamedTuple
import warnings

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_dict
from ml_collections import config_flags
from ml_collections.config_flags import config_flags as config_flags_lib

from rahimi_jax import components  # pylint: disable=unused-import  (registers the axes)
from rahimi_jax import registry
from rahimi_jax import storage

# The flags this module's helpers define (``define_axis_flags``,
# ``define_config_flag``) are key flags of the launcher that calls them: they
# are its --help, its recorded ``metadata['flags']`` and its config's fields.
flags.disclaim_key_flags()

CONFIG = 'config'  # the config flag's name

flags.DEFINE_bool('overwrite', False, 'Replace the finished results in --out, '
                  'or start afresh over its checkpoint of an unfinished run '
                  '(default: refuse, or resume).')
flags.DEFINE_integer('logs_per_call', None, 'Logged passes (a log and the '
                     '--log_every steps after it) per program call, between '
                     'which progress shows and a checkpoint is saved '
                     '(default: about 5 s of work). Results do not depend on '
                     'it.')
flags.DEFINE_float('checkpoint_every_s', 30.0, 'Seconds between checkpoints '
                   'of a running grid (each at the end of a call; 0: after '
                   'every call).')
flags.DEFINE_integer('keep_checkpoints', 2, 'Checkpoints kept per chunk of '
                     'members while a grid runs (the newest).')
flags.DEFINE_enum('progress', 'auto', ['auto', 'bar', 'none'], 'Progress of a '
                  'grid run: a bar (tqdm), none, or auto: a bar on a '
                  'terminal, else absl INFO lines (--verbosity=0).')

if 'chunk_size' not in flags.FLAGS:  # benchmarks.grid_throughput's, if first
  flags.DEFINE_string('chunk_size', None, 'Members vmapped together on a '
                      'device: auto (the width measured fastest for this '
                      'program on this host, cached, when the run is long '
                      'enough to pay for measuring; else the rule), tune '
                      '(measure now), rule (the built-in rule, measuring '
                      'nothing) or an integer. Default: $RAHIMI_JAX_CHUNK_SIZE, '
                      'else auto. A resumed run keeps its chunks.')
  flags.register_validator(
      'chunk_size', lambda v: v is None or v in ('auto', 'tune', 'rule') or (
          v.isdigit() and int(v) >= 1),
      message='--chunk_size accepts auto, tune, rule or an integer >= 1.')

# --matmul_precision: how float32 matrix products (and convolutions) compute.
# JAX's own default differs by backend (true float32 on CPU, TensorFloat-32 on
# recent NVIDIA GPUs, one bfloat16 pass on TPU), so a launcher names it and
# records it: by default true float32 on every backend.
MATMUL_PRECISIONS = ('float32', 'tensorfloat32', 'bfloat16', 'default')
# Where a reduced precision exists: TF32 on NVIDIA GPUs from compute
# capability 8.0 (Ampere), one bfloat16 pass on TPU. Elsewhere XLA computes
# other products under the name (float32 on CPU, TF32 for 'bfloat16' on such a
# GPU, three bfloat16 passes for 'tensorfloat32' on TPU): a false record.
_REDUCED_ON = {'tensorfloat32': 'gpu', 'bfloat16': 'tpu'}


def define_precision_flag(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines ``--matmul_precision`` (``MATMUL_PRECISIONS``), which ``start``
  applies to every program the launcher traces (``set_matmul_precision``)."""
  flags.DEFINE_enum(
      'matmul_precision', 'float32', MATMUL_PRECISIONS,
      'Float32 matmul and convolution precision of every program: float32 '
      '(true float32 products on every backend), tensorfloat32 (TF32 '
      'tensor-core products: NVIDIA GPUs from Ampere on), bfloat16 (one '
      'bfloat16 pass: TPU), or default (the backend\'s own: TF32 on those '
      'GPUs, one bfloat16 pass on TPU, float32 on CPU). A precision the '
      'backend does not have is an error. Recorded with the results.',
      flag_values=flag_values)


def define_switch_flag(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines ``--switch`` (``engine.run``'s ``switch``; ``switch_value``)."""
  flags.DEFINE_list(
      'switch', ['auto'], 'Choice axes (norm, optimizer, activation, '
      'placement) whose options each member computes alone instead of all of '
      'them: the members run in groups, one per combination of those '
      'options (side by side on the devices), all with the same compiled '
      'program, which branches on the group\'s options; "auto": on a CPU, '
      'each such axis whose relaxed step does >= 1.1x the elementwise work '
      'of the members\' own (engine.cost_ratios; printed), while each group '
      'keeps two members; "none": one relaxed program (every member computes '
      'every option).',
      flag_values=flag_values)


def switch_value(flag_values: flags.FlagValues = flags.FLAGS
                 ) -> tuple[str, ...] | str:
  """``--switch`` as ``engine.run`` takes it (``'auto'`` where the launcher
  defines none)."""
  if 'switch' not in flag_values:
    return 'auto'
  return _axes_flag('switch', flag_values.switch)


def _axes_flag(name: str, given) -> tuple[str, ...] | str:
  """A list flag of axis names, or ``auto``, or ``none`` (``()``); an empty
  list is a ``ValueError`` (checked in a launcher's ``build``)."""
  given = tuple(given)
  if not given:
    raise ValueError(f'{name}: empty; give auto, none or axis names.')
  return {('auto',): 'auto', ('none',): ()}.get(given, given)


def partition_value(flag_values: flags.FlagValues = flags.FLAGS
                    ) -> tuple[str, ...] | str:
  """``--partition`` as ``engine.run`` takes it (its axes checked against
  the grid by ``engine.check_partition``)."""
  return _axes_flag('partition', flag_values.partition)


def check_switch(*grids) -> None:
  """``--switch`` checked against the grids a launcher will run (in its
  ``build``: a bad axis is a clean error before anything compiles)."""
  from rahimi_jax import engine  # pylint: disable=g-import-not-at-top
  for grid in grids:
    engine.check_switch(grid, switch_value())


def switch_line(metadata) -> str:
  """What ``--switch`` did to a run: from its results' metadata (or one of
  a study's parts': ``{'partition': ..., 'engine': ...}``)."""
  choice = metadata.get('partition', {})
  axes = choice.get('switch', [])
  if not axes:
    line = 'switched: none (relaxed: every member computes every option)'
  else:
    groups = metadata['engine']['groups']
    line = (f'switched: {",".join(axes)} ({groups} groups of members, each '
            'computing only its own options)')
  if choice.get('switch_ratios'):  # --switch=auto
    ratios = ', '.join(f'{a} {r:.2f}x'
                       for a, r in choice['switch_ratios'].items())
    line += (f"; elementwise work of the relaxed step over the members' own, "
             f'per axis: {ratios} (switched at >= '
             f'{choice["switch_threshold"]:g}x)')
  return line


def matmul_precisions(device=None) -> tuple[str, ...]:
  """The ``MATMUL_PRECISIONS`` that ``device`` (default: JAX's first)
  computes as named: float32 and default everywhere, tensorfloat32 on a GPU
  (not one that reports a compute capability below 8.0), bfloat16 on a
  TPU."""
  import jax  # pylint: disable=g-import-not-at-top
  device = device or jax.devices()[0]
  out = []
  for name in MATMUL_PRECISIONS:
    platform = _REDUCED_ON.get(name, device.platform)
    if platform != device.platform:
      continue
    capability = getattr(device, 'compute_capability', None)
    if name == 'tensorfloat32' and capability is not None:
      try:
        if float(capability) < 8.0:
          continue
      except (TypeError, ValueError):
        pass
    out.append(name)
  return tuple(out)


def set_matmul_precision(value: str, device=None) -> None:
  """Every program traced from now on computes float32 products at
  ``value`` (``jax_default_matmul_precision``; recorded by
  ``provenance.provenance``).

  Raises:
    ValueError: ``value`` is not in ``MATMUL_PRECISIONS``, or ``device``
      (default: JAX's first) does not have it (``matmul_precisions``): XLA
      would compute other products there and the run would record a
      precision it never used.
  """
  if value not in MATMUL_PRECISIONS:
    raise ValueError(f'Unknown matmul precision {value!r}; accepted: '
                     f'{", ".join(MATMUL_PRECISIONS)}.')
  import jax  # pylint: disable=g-import-not-at-top
  device = device or jax.devices()[0]
  here = matmul_precisions(device)
  if value not in here:
    emulate = (' To study bfloat16 products here, round the matmul inputs '
               'with the precision axis (precision bfloat16, placement '
               'activations).' if value == 'bfloat16' else '')
    raise ValueError(
        f'matmul precision {value!r} does not exist on {device.platform} '
        f'({device.device_kind}): XLA would compute other products and the '
        f'results would record {value}; accepted here: {", ".join(here)}.'
        + emulate)
  jax.config.update('jax_default_matmul_precision', value)


RUN_FLAGS = ('overwrite', 'logs_per_call', 'checkpoint_every_s',
             'keep_checkpoints', 'progress', 'chunk_size')  # read by launch
# Those only a grid's run reads (``program.run_options``): all but overwrite.
GRID_RUN_FLAGS = tuple(n for n in RUN_FLAGS if n != 'overwrite')
# Flags that change how a run goes, not its results: a run may resume with
# others.
EXECUTION_FLAGS = ('out', 'overwrite', 'dry_run', 'logs_per_call',
                   'checkpoint_every_s', 'keep_checkpoints', 'progress',
                   'chunk_size',
                   'memory_budget_mb', 'config', 'verbosity', 'v',
                   'logtostderr', 'alsologtostderr')


def parse_numbers(name: str, items: Sequence[str] | str, kind: type = float, *,
                  minimum: float | None = 0.0, inclusive: bool = False,
                  maximum: float | None = None,
                  distinct: bool = True) -> tuple[Any, ...]:
  """A comma list of numbers; the error names the bad item and what is wanted.

  Args:
    name: the flag or field, for errors.
    items: a comma-separated string or its items.
    kind: ``float`` or ``int``.
    minimum: values must exceed it (``None``: any finite value).
    inclusive: values may also equal ``minimum``.
    maximum: values must be below it (``None``: no upper bound).
    distinct: reject repeated values.
  """
  if isinstance(items, str):
    items = items.split(',')
  items = [str(s).strip() for s in items if str(s).strip()]
  noun = 'integer' if kind is int else 'number'
  what = f'comma-separated {noun}s, e.g. {"64,64" if kind is int else "0.1,0.01"}'
  if not items:
    raise ValueError(f'{name}: empty list; give {what}.')
  out = []
  for s in items:
    try:
      value = kind(s)
    except ValueError:
      raise ValueError(f'{name}: {s!r} is not {"an" if kind is int else "a"} '
                       f'{noun}; give {what}.') from None
    if not registry.in_bounds(value, minimum, inclusive, maximum):
      bound = registry.bound_text(minimum, inclusive, maximum)
      raise ValueError(f'{name}: {s!r} must be a finite {noun}'
                       + (f' {bound}.' if bound else '.'))
    if distinct and value in out:
      raise ValueError(f'{name}: {s!r} is listed twice.')
    out.append(value)
  return tuple(out)


def define_axis_flags(flag_values: flags.FlagValues = flags.FLAGS, *,
                      choices: bool = True, grid: bool = True,
                      knobs: Sequence[str] | None = None) -> None:
  """Defines the flags of the registered axes (``registry.AXES``).

  Args:
    flag_values: where to define them.
    choices: also one comma-list flag per choice axis (``--optimizers``,
      ``--norms``, ...), its help listing the options.
    grid: each value knob's flag (``--learning_rate``, ``--momentum``, ...)
      takes a comma list, one grid axis; otherwise one value for every member.
    knobs: the value knobs to define flags for (``None``: every one), for a
      study that sets the others itself.
  """
  if choices:
    for axis in registry.AXES.values():
      flags.DEFINE_list(axis.flag, None, axis.flag_help(),
                        flag_values=flag_values)
  what = ('Comma list of values (a grid axis)' if grid
          else 'One value for every member')
  for knob in _knobs(knobs).values():
    bound = f', each {knob.bound()}' if knob.bound() else ''
    flags.DEFINE_list(knob.name, None,
                      f'{knob.full_help()} {what}{bound}; default '
                      f'{knob.default:g}.', flag_values=flag_values)


def _knobs(names: Sequence[str] | None) -> dict[str, registry.Knob]:
  """The value knobs ``names`` (``None``: all), in registry order."""
  every = registry.knobs()
  for name in names or ():
    registry.get(every, name, 'value knob')
  return {k: v for k, v in every.items() if names is None or k in names}


def axis_flag_values(flag_values: flags.FlagValues = flags.FLAGS, *,
                     choices: bool = True, knobs: Sequence[str] | None = None
                     ) -> tuple[dict[str, Any], dict[str, Any]]:
  """``(options, values)``: the axis and knob flags given, by axis and knob
  (``knobs``: as given to ``define_axis_flags``)."""
  options = {a.name: flag_values[a.flag].value
             for a in registry.AXES.values()
             if choices and flag_values[a.flag].value is not None}
  values = {k: flag_values[k].value for k in _knobs(knobs)
            if flag_values[k].value is not None}
  return options, values


def parse_knob(name: str, items) -> tuple[float, ...]:
  """Values of the value knob ``name`` (a comma string, numbers, or one
  number), checked against its declared bound; the error names the knob, the
  bad item and what is wanted (or the accepted knobs)."""
  knob = registry.get(registry.knobs(), name, 'value knob')
  items = items if isinstance(items, (str, list, tuple)) else [items]
  return parse_numbers(name, items, minimum=knob.minimum,
                       inclusive=knob.inclusive, maximum=knob.maximum)


def parse_single_knobs(values: Mapping[str, Any] | Sequence | None,
                       accepted: Sequence[str], why: str,
                       options: Mapping[str, Sequence[str]] | None = None
                       ) -> tuple[tuple[str, float], ...]:
  """Value knobs at one value for every member of a study's grid.

  Args:
    values: knob -> its value (a number, or a comma string or list of one
      number, as a flag gives it), or ``(knob, value)`` pairs.
    accepted: the knobs the study takes this way.
    why: why a knob takes one value here, for the error on several.
    options: the study's options by axis; a knob that none of its axis's
      options reads is refused (``--momentum`` beside sgd alone was recorded
      and never applied).

  Returns:
    ``(knob, value)`` pairs in registry order, each value checked against
    its knob's bound.
  """
  values = dict(values or {})
  out = {}
  for name, value in values.items():
    if name not in accepted:
      raise ValueError(f'{name}: not a value knob of this study; accepted: '
                       f'{", ".join(accepted)}.')
    parsed = parse_knob(name, value)
    if len(parsed) != 1:
      raise ValueError(f'{name}: {why}; got {", ".join(map(str, parsed))}.')
    given = (options or {}).get(registry.knob_axis(name).name)
    if given is not None:
      registry.check_knob_read(name, given)
    out[name] = parsed[0]
  return tuple((k, out[k]) for k in registry.knobs() if k in out)


_ALIAS = re.compile(r'Alias for --(\w+)\.')  # absl's DEFINE_alias help


def key_flags(module_name: str,
              flag_values: flags.FlagValues = flags.FLAGS) -> dict[str, Any]:
  """``{name: value}`` of the flags of the module ``module_name`` (a
  launcher's: its results' ``metadata['flags']``, its config's fields).

  Left out: ``--config`` (its values are the flags) and aliases (``--lrs``:
  the flag it names is there).
  """
  module = sys.modules[module_name]
  return {f.name: f.value
          for f in flag_values.get_key_flags_for_module(module)
          if f.name != CONFIG and not _ALIAS.fullmatch(f.help or '')}


class _Unreadable(NamedTuple):
  """A config that could not be loaded: ``apply_config`` reports it as one
  ``error:`` line (an exception while parsing flags would be absl's)."""
  message: str


def _field_type(flag: flags.Flag) -> type:
  """The ConfigDict type of a field recorded as ``None`` for ``flag``, so that
  ``--config.FIELD=`` can still set it."""
  for parser, kind in ((flags.BooleanParser, bool), (flags.IntegerParser, int),
                       (flags.FloatParser, float)):
    if isinstance(flag.parser, parser):
      return kind
  return str


_HOW_LAUNCHED = ('overwrite', 'dry_run')


def config_from_results(path: str,
                        flag_values: flags.FlagValues = flags.FLAGS
                        ) -> config_dict.ConfigDict:
  """The flags a run recorded in its ``metadata.json``, as a config.

  Args:
    path: a results directory, or its ``metadata.json``.
    flag_values: the launcher's flags (for the type of a field recorded as
      ``None``).

  Returns:
    One field per recorded flag: lists as comma strings (as on the command
    line, so ``--config.optimizers=sgd,adam`` overrides one), ``None`` as a
    typed placeholder. Aliases an earlier run recorded (``lrs``) are left
    out: the flag they name is recorded too; so are ``overwrite`` and
    ``dry_run``, which say how that run was launched, not what it ran (a
    recorded ``--overwrite`` would replace another run's results).
  """
  file = os.path.join(path, storage.METADATA) if os.path.isdir(path) else path
  try:
    with open(file) as f:
      metadata = json.load(f)
    recorded = metadata.get('flags')
  except (OSError, ValueError, AttributeError) as e:
    raise ValueError(f'config: cannot read {file}: '
                     f'{str(e).splitlines()[0]}') from None
  if not isinstance(recorded, dict):
    raise ValueError(f'config: {file} records no flags (no "flags" in its '
                     'metadata); give a config file instead.')
  config = config_dict.ConfigDict()
  for name, value in recorded.items():
    if name in _HOW_LAUNCHED or (name in flag_values and _ALIAS.fullmatch(
        flag_values[name].help or '')):
      continue
    if isinstance(value, list):
      value = ','.join(map(str, value))
    elif value is None:
      value = config_dict.placeholder(
          _field_type(flag_values[name]) if name in flag_values else str)
    config[name] = value
  spec = metadata.get('config_file')
  if not isinstance(spec, str):
    return config
  script, sep, arg = spec.partition(':')
  spec = os.path.abspath(script) + sep + arg
  parser = flag_values[CONFIG].parser if CONFIG in flag_values else None
  if isinstance(parser, _ConfigParser):
    parser.recorded_file = spec  # recorded again by the re-run
  if not (script.endswith('.py') and os.path.isfile(script)):
    return config
  # Run for what it registers (a user's options); the recorded flags win.
  sha256 = _sha256(script)
  if isinstance(parser, _ConfigParser):
    parser.file_sha256 = sha256  # the version run, recorded again
  changed = metadata.get('config_file_sha256') not in (None, sha256)
  print(f'config: running {spec}, the config file of the run {file} records, '
        'for the options it registers (the recorded flags win over its '
        'fields)' + ('; it changed since that run (its sha256 differs): '
                     'what it registers may differ' if changed else ''),
        file=sys.stderr)
  try:
    _load_config_file(spec)
  except Exception as e:  # pylint: disable=broad-except
    text = ([l for l in str(e).splitlines() if l.strip()] or [''])[-1].strip()
    raise ValueError(f'config: {spec}, which {file} records: '
                     f'{type(e).__name__}: {text}') from None
  return config


def _sha256(path: str) -> str:
  with open(path, 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()


def _load_config_file(spec: str, parse: Callable[[str], Any] | None = None):
  """``parse(spec)``, ml_collections' loader by default (it runs the file
  and returns its ``get_config()``), without the loader's own deprecation
  warning."""
  parse = parse or config_flags_lib.ConfigFileFlagParser(name=CONFIG).parse
  with warnings.catch_warnings():
    warnings.filterwarnings('ignore', 'the load_module', DeprecationWarning)
    return parse(spec)


def config_file(flag_values: flags.FlagValues = flags.FLAGS) -> str | None:
  """The Python config file this run was given (``--config=FILE.py``, its
  absolute path, ``:arg`` kept), or the one the results directory it re-runs
  recorded; ``None`` if neither."""
  if CONFIG not in flag_values or flag_values[CONFIG].value is None:
    return None
  holder = flag_values[CONFIG]
  spec = holder.config_filename or ''
  path, sep, arg = spec.partition(':')
  if path.endswith('.py'):
    return os.path.abspath(path) + sep + arg
  return getattr(holder.parser, 'recorded_file', None)


_SCALARS = (bool, int, float, str)


def _is_list(value: Any) -> bool:
  """A list or tuple of numbers, strings or bools (a list flag's value)."""
  return isinstance(value, (list, tuple)) and all(
      isinstance(v, _SCALARS) for v in value)


def _comma_lists(config: config_dict.ConfigDict) -> config_dict.ConfigDict:
  """``config`` with its list fields as comma strings, the form
  ``--config.FIELD=a,b`` overrides (ml_collections parses no list field)."""
  fields = config.to_dict(preserve_field_references=True)
  return config_dict.ConfigDict({
      k: ','.join(map(str, v)) if _is_list(v) else v
      for k, v in fields.items()})


class _ConfigParser(config_flags_lib.ConfigFileFlagParser):
  """``--config``: a config file's ``get_config()`` (``file.py:arg`` passes
  ``arg``), or a results directory's recorded flags (``config_from_results``).
  A file that cannot be loaded becomes ``_Unreadable``."""

  def __init__(self, flag_values: flags.FlagValues):
    super().__init__(name=CONFIG, lock_config=False)
    self._flag_values = flag_values
    self.recorded_file = None  # the config file a results directory names
    self.file_sha256 = None  # of the config file run, as it was run

  def parse(self, path):
    file = path.split(':', 1)[0]
    self.recorded_file = self.file_sha256 = None
    try:
      if os.path.isdir(path) or path.endswith('.json'):
        return config_from_results(path, self._flag_values)
      if not file.endswith('.py'):
        return _Unreadable(f'config: {path!r} is neither a Python config file '
                           '(.py) nor a results directory or its '
                           f'{storage.METADATA}.')
      if not os.path.isfile(file):
        return _Unreadable(f'config: no such file {file!r}.')
      self.file_sha256 = _sha256(file)
      config = _load_config_file(path, super().parse)
      getattr(config, 'keys', None)  # a load error surfaces here
      return (_comma_lists(config) if isinstance(config, config_dict.ConfigDict)
              else config)
    except Exception as e:  # pylint: disable=broad-except
      lines = [l for l in str(e).splitlines() if l.strip()] or [repr(e)]
      text = lines[-1].strip()  # a wrapped traceback's last line
      if text.startswith('config: '):
        return _Unreadable(text)
      if type(e).__name__ not in text:
        text = f'{type(e).__name__}: {text}'
      return _Unreadable(f'config: {path}: {text}')


def define_config_flag(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines ``--config`` (see the module docstring) for the calling launcher.

  ``start`` applies it to the launcher's flags (``apply_config``).
  """
  # accept_new_attributes: a misspelt --config.FIELD becomes a field, and
  # apply_config's unknown-field error names it with the accepted ones.
  config_flags.DEFINE_config_file(
      CONFIG, None, 'A config file (Python; get_config() returns an '
      'ml_collections.ConfigDict whose fields are flags of this launcher), '
      'or a results directory or its metadata.json to re-run with the flags '
      'it records. --config.FIELD=VALUE overrides one field; a flag given on '
      'the command line wins over the config.', flag_values=flag_values,
      lock_config=False, accept_new_attributes=True)
  flag_values[CONFIG].parser = _ConfigParser(flag_values)
  # The launcher's --help; also the run flags every launcher reads (launch).
  for name in (CONFIG, *RUN_FLAGS):
    if name in flag_values:
      flags.declare_key_flag(name, flag_values)


def _flag_argument(name: str, value: Any) -> str:
  """A config field's value as the flag's command-line text."""
  if _is_list(value):
    return ','.join(map(str, value))
  if isinstance(value, _SCALARS):
    return str(value)
  raise ValueError(f'config.{name}: {value!r} is not a flag value; give a '
                   'number, a string, a bool or a list of them.')


def check_aliases(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Raises ``ValueError`` if a flag was given both by its name and by an
  alias (``--learning_rate`` and ``--lrs``: absl kept the last silently)."""
  for name in flag_values:
    alias = flag_values[name]
    match = _ALIAS.fullmatch(alias.help or '')
    if match and alias.present and flag_values[match[1]].present > alias.present:
      raise ValueError(f'{match[1]}: given twice on the command line, as '
                       f'--{match[1]} and --{name}; give one.')


def apply_config(module_name: str = '__main__',
                 flag_values: flags.FlagValues = flags.FLAGS
                 ) -> dict[str, Any]:
  """Sets the launcher's flags from ``--config``, if given.

  Each field sets the flag of its name, parsed as the command line would
  parse it (a list flag takes a comma string or a list); flags given on the
  command line keep their value.

  Args:
    module_name: the launcher's module (its key flags are the fields
      accepted).
    flag_values: the parsed flags.

  Returns:
    ``{flag: value}`` of the fields applied.

  Raises:
    ValueError: the config cannot be loaded, is not a ConfigDict, has a field
      that is no flag of the launcher or a value its flag rejects, or a flag
      was given both as ``--NAME`` and ``--config.NAME``.
  """
  if CONFIG not in flag_values or flag_values[CONFIG].value is None:
    return {}
  holder = flag_values[CONFIG]
  config = holder.value
  if isinstance(config, _Unreadable):
    raise ValueError(config.message)
  source = holder.config_filename
  if not isinstance(config, config_dict.ConfigDict):
    raise ValueError(f'config: get_config() in {source} must return an '
                     'ml_collections.ConfigDict; got '
                     f'{type(config).__name__}.')
  accepted = key_flags(module_name, flag_values)
  fields = dict(config.items())
  unknown = [name for name in fields if name not in accepted]
  if unknown:
    raise ValueError(
        f'config: unknown field{"s" if len(unknown) > 1 else ""} '
        f'{", ".join(map(repr, unknown))} in {source}; accepted: '
        f'{", ".join(sorted(accepted))}.')
  for name in holder.override_values:
    if flag_values[name].present:
      raise ValueError(f'{name}: given twice on the command line, as '
                       f'--{name} and --config.{name}; give one.')
  applied = {}
  for name, value in fields.items():
    flag = flag_values[name]
    if flag.present:  # the command line wins
      continue
    if value is None:
      if flag.default is not None:
        raise ValueError(f'config.{name}: None, but --{name} takes a value '
                         f'(default {flag.default_as_str}).')
    else:
      try:
        value = flag.parser.parse(_flag_argument(name, value))
      except (TypeError, ValueError) as e:
        raise ValueError(f'config.{name}: {value!r}: {e}') from None
    try:
      setattr(flag_values, name, value)
    except flags.Error as e:
      raise ValueError(f'config.{name}: {e}') from None
    applied[name] = value
  return applied


def start(argv: Sequence[str], module_name: str = '__main__') -> None:
  """A launcher's first lines in ``main``: no positional arguments, the
  ``--config`` applied (``apply_config``; a bad one is one ``error:`` line and
  exit code 1), one XLA device per CPU core (``program.use_host_cores``,
  before JAX's first operation), compiled programs kept on disk for later
  runs (``program.use_compilation_cache``), warnings-only logging.

  Args:
    argv: what ``absl.app.run`` passes to ``main``.
    module_name: the launcher's module (``__name__``).
  """
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  quiet_logging()  # before JAX's first operation, which logs its backends
  try:
    check_aliases()
    apply_config(module_name)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  from rahimi_jax import program  # pylint: disable=g-import-not-at-top
  try:
    program.initialize_distributed()
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  program.use_host_cores()
  program.use_compilation_cache()
  apply_precision_flag()


def apply_precision_flag() -> None:
  """``set_matmul_precision(--matmul_precision)``, where the flag is
  defined; a precision the backend does not have is one ``error:`` line and
  exit code 1. Call it after ``program.use_host_cores`` (it asks JAX for its
  devices)."""
  if 'matmul_precision' not in flags.FLAGS:
    return
  try:
    set_matmul_precision(flags.FLAGS.matmul_precision)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


def quiet_logging() -> None:
  """Warnings and errors only, unless ``--verbosity`` was given.

  JAX's INFO lines (e.g. that no TPU library was found on a CPU machine) and
  the engine's per-batch progress are noise in a launcher's report.
  """
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)


INTERRUPTED = 130  # the shell's code for a process ended by Ctrl-C


def run_app(main: Callable[[list[str]], int]) -> None:
  """``absl.app.run(main)``; after Ctrl-C the process ends without waiting.

  The interrupted XLA program runs on in the background until it finishes,
  and a normal interpreter exit would wait for it.
  """
  def main_then_exit(argv):
    code = main(argv)
    if code == INTERRUPTED:
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(code)  # pylint: disable=protected-access
    return code

  app.run(main_then_exit)


def run_flags() -> dict[str, Any]:
  """The running launcher's flags that decide its results (``key_flags`` of
  ``__main__`` but ``EXECUTION_FLAGS``): a checkpoint resumes only under the
  same."""
  return {n: v for n, v in sorted(key_flags('__main__').items())
          if n not in EXECUTION_FLAGS}


def _check_resume(out: str) -> str | None:
  """Raises ``ValueError`` if ``out`` cannot take this run; returns a line
  saying a checkpoint will be resumed, if one will."""
  checkpoint = os.path.join(out, storage.CHECKPOINT)
  if flags.FLAGS['overwrite'].value:
    return None
  if storage.is_finished(out):
    raise ValueError(f'out: {out} holds the finished results of an earlier '
                     'run; give another --out, or --overwrite to replace them.')
  if not os.path.isdir(checkpoint):
    return None
  file = os.path.join(checkpoint, 'flags.json')
  try:
    with open(file) as f:
      saved = json.load(f)
  except FileNotFoundError:  # not written yet (another process's run)
    return None
  except (OSError, ValueError) as e:
    saved = e
  if not isinstance(saved, dict):  # no flags to re-run with: none resumes
    why = (str(saved).splitlines() or [''])[0] if isinstance(
        saved, Exception) else f'not a JSON object: {saved!r:.40}'
    raise ValueError(
        f'out: {out} holds the checkpoint of an unfinished run whose flags '
        f'cannot be read ({file}: {why}); --overwrite to start afresh, or '
        'give another --out.')
  now = json.loads(json.dumps(run_flags(), default=str))
  if saved != now:
    differ = sorted(n for n in set(saved) | set(now)
                    if saved.get(n) != now.get(n))

    def typed(value):  # as typed on the command line
      if value is None:
        return '(not given)'
      return ','.join(map(str, value)) if isinstance(value, list) else value

    raise ValueError(  # every one: re-run with some, it is refused again
        f'out: {out} holds the checkpoint of an unfinished run with other '
        'flags (' + ', '.join(
            f'--{n}={typed(saved.get(n))}, not {typed(now.get(n))}'
            for n in differ) +
        '); re-run with those to resume, or --overwrite to start afresh.')
  return f'resuming the unfinished run checkpointed in {checkpoint}'


def record_flags(outcome: Any) -> None:
  """Records the running launcher's flags (``key_flags``) in the metadata
  of every ``Results`` in ``outcome`` (one, or a dict holding some), so its
  results directory re-runs as it ran (``--config=DIR``)."""
  if isinstance(outcome, storage.Results):
    outcome.metadata['flags'] = key_flags('__main__')
    spec = config_file()
    if spec is not None:
      outcome.metadata['config_file'] = spec
      # As it was run (an edit during the run is a change a re-run reports).
      sha256 = (getattr(flags.FLAGS[CONFIG].parser, 'file_sha256', None)
                if CONFIG in flags.FLAGS else None)
      if sha256 is not None:
        outcome.metadata['config_file_sha256'] = sha256
  elif isinstance(outcome, dict):
    for value in outcome.values():
      record_flags(value)


def launch(build: Callable[[], Any], describe: Callable[[Any], str],
           run: Callable[[Any], Any], write: Callable[[Any, Any, str], str],
           out: str, *, dry_run: bool = False, grid: bool = True) -> int:
  """Builds, runs and saves one study; returns the exit code.

  Args:
    build: ``build() -> config``; raises ``ValueError`` on bad input (printed
      as one ``error:`` line, exit code 1).
    describe: ``describe(config) -> text`` printed before the run (the grid).
    run: ``run(config) -> outcome``, inside ``program.run_options`` of the
      run flags (``engine.run`` takes ``--switch`` from there); on Ctrl-C it
      may raise ``program.Interrupted`` carrying the members that had
      finished. Its ``Results`` get the flags (``record_flags``).
    write: ``write(config, outcome, directory) -> text``: writes the outcome's
      files into ``directory`` (staged: they replace ``out`` together) and
      returns the report printed after the files are in place.
    out: the results directory.
    dry_run: stop after checking the input and printing ``describe``.
    grid: whether ``run`` trains a grid (``program``'s chunks, checkpoints
      and progress); if not, a ``GRID_RUN_FLAGS`` flag given another value
      than its default is bad input (nothing would read it).

  Returns:
    0, 1 for bad input, or ``INTERRUPTED`` after Ctrl-C (give it to
    ``run_app``, which then exits at once).
  """
  from rahimi_jax import program  # pylint: disable=g-import-not-at-top
  options = dict(
      keep=flags.FLAGS['keep_checkpoints'].value,
      checkpoint_every_s=flags.FLAGS['checkpoint_every_s'].value,
      logs_per_call=flags.FLAGS['logs_per_call'].value,
      progress={'auto': None, 'bar': True,
                'none': False}[flags.FLAGS['progress'].value],
      chunk_size=flags.FLAGS['chunk_size'].value)
  try:
    if not grid:
      for name in GRID_RUN_FLAGS:
        flag = flags.FLAGS[name]
        if flag.value != flag.default:
          raise ValueError(
              f'--{name}={flag.value}: this launcher trains no grid, so '
              'nothing reads it; the grid launchers do (ablate, attribute, '
              'batchnorm, deep_linear, rounding).')
    program.RunOptions(**options)  # checks the run flags
    if options['chunk_size'] is None:
      program.env_chunk_mode()
    config = build()
    out = storage.check_writable(out, create=False)  # a dry run writes nothing
    resuming = _check_resume(out)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(describe(config), flush=True)
  if dry_run:
    print(f'dry run: the input is valid; nothing was run or written to {out}.')
    return 0
  import jax  # pylint: disable=g-import-not-at-top
  held = None
  try:  # process 0 writes (several processes: initialize_distributed)
    if jax.process_index() == 0:
      held = storage.lock(out)
      if storage.recover(out):  # a save killed mid-way: its checkpoint back
        resuming = _check_resume(out)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    if held is not None:
      os.close(held)
    return 1

  def run_and_save() -> int:
    checkpoint = os.path.join(out, storage.CHECKPOINT)
    overwrite = flags.FLAGS['overwrite'].value
    if overwrite and os.path.isdir(checkpoint):
      print(f'--overwrite: starting afresh; the checkpoint of an unfinished '
            f'run in {checkpoint} is discarded (without --overwrite, a run '
            'resumes from it).', flush=True)
      shutil.rmtree(checkpoint, ignore_errors=True)
    if resuming:
      print(resuming, flush=True)
    else:
      os.makedirs(checkpoint, exist_ok=True)
      storage.write_text(os.path.join(checkpoint, 'flags.json'),
                         json.dumps(run_flags(), default=str, indent=1))
    resume = (f' (the same command{" without --overwrite" * overwrite} '
              f'resumes from its checkpoint in {checkpoint})')
    try:
      with program.run_options(checkpoint_dir=checkpoint, switch=switch_value(),
                               **options), program.watch_interrupts():
        outcome = run(config)
      record_flags(outcome)
    except program.CheckpointMismatch as e:
      print(f'error: {e}', file=sys.stderr)
      return 1
    except KeyboardInterrupt as e:
      partial = getattr(e, 'results', None)
      if partial is None:
        print(f'interrupted: no member had finished{resume}.', file=sys.stderr)
      else:
        record_flags(partial)  # --config=DIR re-runs it, as a finished run
        storage.save(partial, out, keep=(storage.CHECKPOINT,))
        print(f'interrupted: saved the {e.finished} of {e.total} members that '
              f'had finished to {out}/{storage.CSV} (metadata marks it '
              f'interrupted){resume}.', file=sys.stderr)
      return INTERRUPTED
    if jax.process_index() != 0:
      return 0  # several processes (initialize_distributed): process 0 writes
    try:
      with storage.staged(out) as stage:
        text = write(config, outcome, stage)
    except KeyboardInterrupt:
      print(f'interrupted while saving; previous contents of {out} kept.',
            file=sys.stderr)
      return INTERRUPTED
    print(text)
    hits = program.compile_cache_hits()
    if hits:
      print(f'{hits} program{"s" * (hits != 1)} loaded from the compilation '
            f'cache ({jax.config.jax_compilation_cache_dir}), not compiled: '
            'compile times above include the loading '
            '(JAX_ENABLE_COMPILATION_CACHE=false compiles afresh).')
    return 0

  try:
    return run_and_save()
  finally:
    if held is not None:
      os.close(held)

