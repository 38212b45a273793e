"""What every launcher in ``experiments/`` shares: parsing, errors, Ctrl-C, output.

A launcher builds its config from flags, runs one library call, and saves
into one results directory. ``launch`` does the rest the same way for all:
bad input is one ``error:`` line before anything compiles; Ctrl-C is one line,
and the members that had finished are saved; every output file of a run
appears in ``--out`` at once (``storage.staged``). While a grid runs, its
checkpoints are kept in ``--out/checkpoint``: the same command after a crash,
a ``kill -9`` or Ctrl-C resumes it, bit-identical to an uninterrupted run;
finished results in ``--out`` are never replaced without ``--overwrite``.
"""

from collections.abc import Callable, Sequence
import json
import math
import os
import shutil
import sys
from typing import Any

from absl import app
from absl import flags
from absl import logging

from rahimi_jax import components  # pylint: disable=unused-import  (registers the axes)
from rahimi_jax import registry
from rahimi_jax import storage

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

# Flags that change how a run goes, not its results: a run may resume with
# others.
EXECUTION_FLAGS = ('out', 'overwrite', 'dry_run', 'logs_per_call',
                   'checkpoint_every_s', 'keep_checkpoints', 'progress', 'memory_budget_mb',
                   'verbosity', 'v', 'logtostderr', 'alsologtostderr')


def parse_numbers(name: str, items: Sequence[str] | str, kind: type = float, *,
                  minimum: float | None = 0.0, inclusive: bool = False,
                  distinct: bool = True) -> tuple[Any, ...]:
  """A comma list of numbers; the error names the bad item and what is wanted.

  Args:
    name: the flag or field, for errors.
    items: a comma-separated string or its items.
    kind: ``float`` or ``int``.
    minimum: values must exceed it (``None``: any finite value).
    inclusive: values may also equal ``minimum``.
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
      raise ValueError(f'{name}: {s!r} is not a number; give {what}.') from None
    low = minimum is not None and (value < minimum if inclusive
                                   else value <= minimum)
    if not math.isfinite(value) or low:
      raise ValueError(f'{name}: {s!r} must be a finite {noun}' + (
          f' {">=" if inclusive else ">"} {minimum:g}.' if minimum is not None
          else '.'))
    if distinct and value in out:
      raise ValueError(f'{name}: {s!r} is listed twice.')
    out.append(value)
  return tuple(out)


def define_axis_flags(flag_values: flags.FlagValues = flags.FLAGS, *,
                      choices: bool = True, grid: bool = True) -> None:
  """Defines the flags of the registered axes (``registry.AXES``).

  Args:
    flag_values: where to define them.
    choices: also one comma-list flag per choice axis (``--optimizers``,
      ``--norms``, ...), its help listing the options.
    grid: each value knob's flag (``--learning_rate``, ``--momentum``, ...)
      takes a comma list, one grid axis; otherwise one value for every member.
  """
  if choices:
    for axis in registry.AXES.values():
      flags.DEFINE_list(axis.flag, None, axis.flag_help(),
                        flag_values=flag_values)
  what = ('Comma list of values (a grid axis)' if grid
          else 'One value for every member')
  for knob in registry.knobs().values():
    bound = f', each {knob.bound()}' if knob.bound() else ''
    flags.DEFINE_list(knob.name, None,
                      f'{knob.full_help()} {what}{bound}; default '
                      f'{knob.default:g}.', flag_values=flag_values)


def axis_flag_values(flag_values: flags.FlagValues = flags.FLAGS, *,
                     choices: bool = True
                     ) -> tuple[dict[str, Any], dict[str, Any]]:
  """``(options, values)``: the axis and knob flags given, by axis and knob."""
  options = {a.name: flag_values[a.flag].value
             for a in registry.AXES.values()
             if choices and flag_values[a.flag].value is not None}
  values = {k: flag_values[k].value for k in registry.knobs()
            if flag_values[k].value is not None}
  return options, values


def parse_knob(name: str, items) -> tuple[float, ...]:
  """Values of the value knob ``name`` (a comma string, numbers, or one
  number), checked against its declared bound; the error names the knob, the
  bad item and what is wanted (or the accepted knobs)."""
  knob = registry.get(registry.knobs(), name, 'value knob')
  items = items if isinstance(items, (str, list, tuple)) else [items]
  return parse_numbers(name, items, minimum=knob.minimum,
                       inclusive=knob.inclusive)


def key_flags(module_name: str) -> dict[str, Any]:
  """``{name: value}`` of the flags module ``module_name`` defines (a
  launcher's, for its results' metadata)."""
  return {f.name: f.value for f in
          flags.FLAGS.get_key_flags_for_module(sys.modules[module_name])}


def start(argv: Sequence[str]) -> None:
  """A launcher's first lines in ``main``: no positional arguments, one XLA
  device per CPU core (``program.use_host_cores``, before JAX's first
  operation), warnings-only logging."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from rahimi_jax import program  # pylint: disable=g-import-not-at-top
  program.use_host_cores()
  quiet_logging()


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
  """The flags of the running launcher (its own and this module's) that
  decide its results: a checkpoint resumes only under the same."""
  names = {f.name for module in ('__main__', __name__)
           for f in flags.FLAGS.get_key_flags_for_module(
               sys.argv[0] if module == '__main__' else module)}
  return {n: flags.FLAGS[n].value for n in sorted(names - set(EXECUTION_FLAGS))}


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
  try:
    with open(os.path.join(checkpoint, 'flags.json')) as f:
      saved = json.load(f)
  except (OSError, ValueError):
    saved = None
  now = json.loads(json.dumps(run_flags(), default=str))
  if saved != now:
    differ = sorted(n for n in set(saved or {}) | set(now)
                    if (saved or {}).get(n) != now.get(n))
    raise ValueError(
        f'out: {out} holds the checkpoint of an unfinished run with other '
        'flags (' + ', '.join(f'--{n}={(saved or {}).get(n)}, not {now.get(n)}'
                              for n in differ[:3]) +
        '); re-run with those to resume, or --overwrite to start afresh.')
  return f'resuming the unfinished run checkpointed in {checkpoint}'


def launch(build: Callable[[], Any], describe: Callable[[Any], str],
           run: Callable[[Any], Any], write: Callable[[Any, Any, str], str],
           out: str, *, dry_run: bool = False) -> int:
  """Builds, runs and saves one study; returns the exit code.

  Args:
    build: ``build() -> config``; raises ``ValueError`` on bad input (printed
      as one ``error:`` line, exit code 1).
    describe: ``describe(config) -> text`` printed before the run (the grid).
    run: ``run(config) -> outcome``; on Ctrl-C it may raise
      ``program.Interrupted`` carrying the members that had finished.
    write: ``write(config, outcome, directory) -> text``: writes the outcome's
      files into ``directory`` (staged: they replace ``out`` together) and
      returns the report printed after the files are in place.
    out: the results directory.
    dry_run: stop after checking the input and printing ``describe``.

  Returns:
    0, 1 for bad input, or ``INTERRUPTED`` after Ctrl-C (give it to
    ``run_app``, which then exits at once).
  """
  try:
    config = build()
    out = storage.check_writable(out)
    resuming = _check_resume(out)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(describe(config), flush=True)
  if dry_run:
    print(f'dry run: the input is valid; nothing was run or written to {out}.')
    return 0
  from rahimi_jax import program  # pylint: disable=g-import-not-at-top
  checkpoint = os.path.join(out, storage.CHECKPOINT)
  if flags.FLAGS['overwrite'].value:
    shutil.rmtree(checkpoint, ignore_errors=True)
  if resuming:
    print(resuming, flush=True)
  else:
    os.makedirs(checkpoint, exist_ok=True)
    storage.write_text(os.path.join(checkpoint, 'flags.json'),
                       json.dumps(run_flags(), default=str, indent=1))
  resume = (' (the same command resumes from its checkpoint in '
            f'{checkpoint})')
  try:
    with program.run_options(
        checkpoint_dir=checkpoint, keep=flags.FLAGS['keep_checkpoints'].value,
        checkpoint_every_s=flags.FLAGS['checkpoint_every_s'].value,
        logs_per_call=flags.FLAGS['logs_per_call'].value,
        progress={'auto': None, 'bar': True,
                  'none': False}[flags.FLAGS['progress'].value]):
      outcome = run(config)
  except program.CheckpointMismatch as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  except KeyboardInterrupt as e:
    partial = getattr(e, 'results', None)
    if partial is None:
      print(f'interrupted: no member had finished{resume}.', file=sys.stderr)
    else:
      storage.save(partial, out, keep=(storage.CHECKPOINT,))
      print(f'interrupted: saved the {e.finished} of {e.total} members that '
            f'had finished to {out}/{storage.CSV} (metadata marks it '
            f'interrupted){resume}.', file=sys.stderr)
    return INTERRUPTED
  try:
    with storage.staged(out) as stage:
      text = write(config, outcome, stage)
  except KeyboardInterrupt:
    print(f'interrupted while saving; previous contents of {out} kept.',
          file=sys.stderr)
    return INTERRUPTED
  print(text)
  return 0

