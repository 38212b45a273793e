"""Executing a grid: one compiled program per device, in resumable calls.

``execute(train_fn, grid, data)`` splits the grid's members into chunks
(``tuning.choose_chunk``: the width measured fastest for the program on this
host, cached, never dependent on the device count), compiles the member's
run ``vmap``ped over one chunk, and runs the chunks on all local devices at
once, a chunk per device, until every chunk has run. A ``train.make_train``
run goes in calls of a few seconds (``advance``), between which the host
shows progress and, under ``run_options(checkpoint_dir=...)``, checkpoints
every member's state: a killed run resumes from there bit for bit, on any
number of devices or processes. The last chunk is padded with copies of a
real member, whose outputs are dropped.
"""

import collections
from collections.abc import Callable, Sequence
import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import pickle
import queue
import signal
import sys
import threading
import time
import weakref
from typing import Any
import zlib

from absl import logging
import jax
from jax import monitoring
import numpy as np

from rahimi_jax import grid as grid_lib
from rahimi_jax import provenance
from rahimi_jax import results as results_lib
from rahimi_jax import storage
from rahimi_jax import train as train_lib
from rahimi_jax import tuning

DEFAULT_MEMORY_FRACTION = 0.5


def device_memory_bytes() -> int:
  """Memory of one device: the accelerator's limit, or host RAM for a CPU."""
  device = jax.local_devices()[0]
  stats = device.memory_stats() if device.platform != 'cpu' else None
  if stats and 'bytes_limit' in stats:
    return int(stats['bytes_limit'])
  return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')


_weak_default = False  # True while the only choice is import's default


def use_host_cores(num: int | None = None, *, default: bool = False
                   ) -> int | None:
  """Makes each host core its own XLA CPU device, so ``execute`` shards over cores.

  One XLA CPU device runs a vmapped grid's many small matmuls largely on one
  core; as separate devices the cores each run their share of the members
  (2.0x on this 2-core host for the benchmark's grids; a single large matmul
  still uses every core). ``import rahimi_jax`` calls it with
  ``default=True``, so Python users get the launchers' devices; a later call
  (a launcher's, the benchmark's ``--cpu_devices``) replaces that default.
  An explicit choice wins: nothing changes when
  ``--xla_force_host_platform_device_count`` is in ``XLA_FLAGS``,
  ``jax_num_cpu_devices`` was set by the user or an earlier non-default
  call, or JAX's backends are initialized.

  Args:
    num: CPU devices wanted (default: one per core this process may use,
      ``tuning.usable_cores``).
    default: the import-time default, which any later call may replace; it
      never starts JAX's backends.

  Returns:
    The number of CPU devices this process will have (``None`` for a
    ``default`` call that changed nothing).
  """
  global _weak_default
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  if num is not None and num < 1:
    raise ValueError(f'num must be >= 1; got {num}.')
  explicit = ('xla_force_host_platform_device_count' in
              os.environ.get('XLA_FLAGS', '')
              or (jax.config.jax_num_cpu_devices > 0 and not _weak_default))
  if explicit or xla_bridge.backends_are_initialized():
    return None if default else len(jax.devices('cpu'))
  if num is None:
    num = tuning.usable_cores()
  jax.config.update('jax_num_cpu_devices', num)
  _weak_default = default
  return num


# JAX's persistent compilation cache keeps programs that took this long or
# longer to compile (JAX's default, 1 s, leaves out a run's ``start``: ~0.7 s).
CACHE_MIN_COMPILE_S = 0.1
CACHE_SUBDIR = 'xla'


def use_compilation_cache(directory: str | None = None) -> str | None:
  """Keeps compiled programs on disk, so a later process loads them.

  Turns on JAX's persistent compilation cache in ``directory`` (default
  ``<cache>/xla``, ``<cache>`` as for generated datasets: ``data.cache_dir``)
  for programs that take ``CACHE_MIN_COMPILE_S`` or longer to compile. A
  later process on this machine that compiles the same program (same HLO,
  compile options, devices and jax version) loads it instead: the default
  ablation's 3 programs compiled in 6.3 s, then loaded in 1.3 s (tracing
  included), running as fast, to the same bits. Launchers call it
  (``cli.start``); a cache the user configured (``JAX_COMPILATION_CACHE_DIR``
  or ``jax_compilation_cache_dir``) or turned off
  (``JAX_ENABLE_COMPILATION_CACHE=false``) wins. The cache is trusted code
  (JAX's warning): a directory others may write to is refused. Delete the
  directory to clear it (each program is ~0.1-0.3 MB; JAX's
  ``jax_compilation_cache_max_size`` caps it, with ``filelock`` installed).

  Call it before JAX compiles the programs it should keep.

  Returns:
    The cache directory in use, or ``None``: off.
  """
  if not jax.config.jax_enable_compilation_cache:
    return None
  if jax.config.jax_compilation_cache_dir:
    return jax.config.jax_compilation_cache_dir
  if directory is None:
    from rahimi_jax import data as data_lib  # pylint: disable=g-import-not-at-top
    directory = os.path.join(data_lib.cache_dir(), CACHE_SUBDIR)
  try:
    os.makedirs(directory, mode=0o700, exist_ok=True)
    shared = os.stat(directory).st_mode & 0o022
  except OSError as e:
    logging.warning('No compilation cache: %s', e)
    return None
  if shared or not os.access(directory, os.W_OK):
    logging.warning('No compilation cache: %s is %s.', directory,
                    'writable by others' if shared else 'not writable')
    return None
  if 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS' not in os.environ:
    jax.config.update('jax_persistent_cache_min_compile_time_secs',
                      CACHE_MIN_COMPILE_S)
  jax.config.update('jax_compilation_cache_dir', directory)
  return directory


# What the compilation cache spared this process: programs loaded instead of
# compiled, and the seconds their compiles had taken (JAX's events).
_CACHE_SPARED = {'hits': 0, 'seconds': 0.0}
_CACHE_SPARED_LOCK = threading.Lock()


_THREAD_HITS = threading.local()  # JAX cache hits of this thread's compiles


def _count_cache_hit(event: str, **_) -> None:
  if event == '/jax/compilation_cache/cache_hits':
    with _CACHE_SPARED_LOCK:
      _CACHE_SPARED['hits'] += 1
    _THREAD_HITS.count = getattr(_THREAD_HITS, 'count', 0) + 1


def _count_compile_saved(event: str, seconds: float, **_) -> None:
  if event == '/jax/compilation_cache/compile_time_saved_sec':
    with _CACHE_SPARED_LOCK:
      _CACHE_SPARED['seconds'] += seconds
    _THREAD_HITS.seconds = getattr(_THREAD_HITS, 'seconds', 0.0) + seconds


monitoring.register_event_listener(_count_cache_hit)
monitoring.register_event_duration_secs_listener(_count_compile_saved)


def compile_cache_hits() -> int:
  """Programs this process has loaded from the compilation cache so far
  (``use_compilation_cache``) instead of compiling them."""
  return _CACHE_SPARED['hits']


def initialize_distributed() -> bool:
  """Joins a run of several processes (``jax.distributed``), when configured.

  Configured by JAX's ``JAX_COORDINATOR_ADDRESS`` (``host:port`` of process
  0) with ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` in each process's
  environment. Every process then runs the same grid: ``execute`` gives
  each process the chunks of its own devices and gathers every chunk's
  outputs to every process (process 0 writes a launcher's files). CPU
  processes talk over gloo. Call it before JAX's first operation.

  Returns:
    Whether this process joined several.
  """
  address = os.environ.get('JAX_COORDINATOR_ADDRESS')
  if not address:
    return False
  try:
    num = int(os.environ['JAX_NUM_PROCESSES'])
    index = int(os.environ['JAX_PROCESS_ID'])
  except (KeyError, ValueError):
    raise ValueError(
        f'JAX_COORDINATOR_ADDRESS={address} needs JAX_NUM_PROCESSES and '
        'JAX_PROCESS_ID (integers) beside it; got '
        f'{os.environ.get("JAX_NUM_PROCESSES")!r} and '
        f'{os.environ.get("JAX_PROCESS_ID")!r}.') from None
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(address, num_processes=num, process_id=index)
  return True


# Compiled programs kept for reuse (a grid re-run, the benchmark's warm call):
# each holds its executable's memory, so a long session of many grids keeps
# only the most recent ones.
CACHE_SIZE = 64  # compiled programs kept (the tuner's widths x devices)


def _in_axes(batched: tuple[Any, ...]) -> tuple[Any, ...]:
  """``vmap``'s ``in_axes`` of ``batched``: per argument a bool, or for a
  dict argument ``((key, bool), ...)`` (some knobs shared by a chunk)."""
  return tuple({k: 0 if b else None for k, b in x} if isinstance(x, tuple)
               else 0 if x else None for x in batched)


@functools.lru_cache(maxsize=CACHE_SIZE)
def _program(fn: Callable[..., Any], batched: tuple[Any, ...],
             donate: tuple[int, ...]):
  return jax.jit(jax.vmap(fn, in_axes=_in_axes(batched)),
                 donate_argnums=donate)


def _shared(run: train_lib.Train) -> tuple[str, ...]:
  """The knobs a chunk's members share (``TrainConfig.switched``: their
  components branch on them), passed once rather than per member."""
  return tuple(run.config.switched) if run.config is not None else ()


def _knobs(grid: grid_lib.Grid, members, shared: tuple[str, ...]):
  """``grid.knobs(members)``, the ``shared`` ones of the first member only."""
  knobs = grid.knobs(members)
  return {a: v[0] if a in shared else v for a, v in knobs.items()}


def _knobs_batched(grid: grid_lib.Grid, shared: tuple[str, ...]) -> Any:
  """``batched`` of the knobs argument (``_in_axes``)."""
  if not shared:
    return True
  return tuple((a.name, a.name not in shared) for a in grid.axes)


def _spec(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)


def _key(tree):
  leaves, treedef = jax.tree.flatten(_spec(tree))
  return treedef, tuple((l.shape, str(l.dtype)) for l in leaves)


# XLA CPU's backend optimization level for a run's ``start`` (the initial
# weights and data order: mostly threefry hashing, run once per chunk). Level
# 2 (LLVM -O2) compiled it 2-3x faster than the default 3 (mlp32: 2.1 -> 0.7
# s; the batch-norm study's CNN 4.0 -> 1.9 s) to the same bits, on every
# program measured (WORKSPACE.md). ``advance`` keeps XLA's default: at level 2
# it compiled only ~10% faster and a CNN's convolutions rounded differently
# (4e-6 after 60 steps). A level set in ``XLA_FLAGS`` wins.
START_OPTIMIZATION_LEVEL = 2


def _compiler_options(device, level: int | None) -> dict[str, Any]:
  if (level is None or device.platform != 'cpu' or
      'xla_backend_optimization_level' in os.environ.get('XLA_FLAGS', '')):
    return {}
  return {'xla_backend_optimization_level': level}


_COMPILED: collections.OrderedDict[Any, Any] = collections.OrderedDict()
_COMPILED_LOCK = threading.Lock()


def _in_callers_config(fn: Callable[..., Any]) -> Callable[..., Any]:
  """``fn`` traced at the calling thread's matmul precision and
  ``jax_enable_x64``, from any thread.

  ``jax.default_matmul_precision(...)`` and ``jax.enable_x64(...)`` are
  thread-local: a worker thread would trace at the global settings instead
  (and then store its program under the caller's key; under the caller's
  ``enable_x64(True)``, a float32 program for some devices).
  """
  precision = jax.config.jax_default_matmul_precision
  x64 = jax.config.jax_enable_x64

  def run(*args, **kwargs):
    with jax.default_matmul_precision(precision), jax.enable_x64(x64):
      return fn(*args, **kwargs)
  return run


# A compiled program's executable, serialized when compiled for several
# devices, per program (``compile_program``'s key less the device): what
# ``_load`` loads for the others. ``None``: it could not be serialized.
_SERIALIZED: dict[Any, Any] = {}
# program (``_COMPILED``'s key less the device) -> (seconds its compile call
# took, seconds of compiling a compilation cache spared it), as it was built.
_BUILT: dict[Any, tuple[float, float]] = {}
# Whether programs are compiled once and loaded for the other devices
# (``False`` after a failure: each device compiles its own).
_LOAD_FOR_DEVICES = True


def _serialize(compiled):
  """``compiled``'s executable as bytes (with its trees), or ``None``.

  Serialized before its first run: after one, a CPU program's sort
  comparator no longer serializes (``UNIMPLEMENTED: `LessThan` is not
  serializable``)."""
  try:
    from jax.experimental import serialize_executable  # pylint: disable=g-import-not-at-top
    return serialize_executable.serialize(compiled)
  except Exception as e:  # pylint: disable=broad-exception-caught
    _not_loaded(e)
    return None


def _load(serialized, device):
  """The program ``serialized`` (``_serialize``), compiled for one device,
  loaded for ``device`` without compiling it again: the same machine code,
  so the same bits. ``None`` where this JAX cannot (it takes JAX internals).

  On a 2-core CPU the devices' compiles in parallel took 1.4-1.7x one
  compile alone (mlp32's ``advance``: 4.0-4.3 s against 2.5-3.0 s).
  """
  try:
    import io  # pylint: disable=g-import-not-at-top
    from jax._src import compiler  # pylint: disable=g-import-not-at-top
    from jax.experimental import serialize_executable  # pylint: disable=g-import-not-at-top
    payload, in_tree, out_tree = serialized
    options = compiler.get_compile_options(
        num_replicas=1, num_partitions=1, device_assignment=[device])

    class Loader(serialize_executable._JaxPjrtUnpickler):  # pylint: disable=protected-access

      def persistent_load(self, pid):
        if pid[0] == 'device':  # every device the program names
          return device
        if pid[0] == 'exec':
          return self.backend.deserialize_executable(
              pid[1], executable_devices=self.execution_devices,
              compile_options=options)
        return super().persistent_load(pid)

    unloaded, args_info, no_kwargs = Loader(
        io.BytesIO(payload), device.client, [device]).load()
    loaded = jax.stages.Compiled(unloaded.load(), [],
                                 in_tree.unflatten(args_info), out_tree,
                                 no_kwargs=no_kwargs)
    placed = loaded._executable.xla_executable.local_devices()  # pylint: disable=protected-access
    if list(placed) != [device]:
      raise ValueError(f'loaded for {placed}, not {device}')
    return loaded
  except Exception as e:  # pylint: disable=broad-exception-caught
    _not_loaded(e)
    return None


def _not_loaded(error: Exception) -> None:
  global _LOAD_FOR_DEVICES
  if _LOAD_FOR_DEVICES:
    logging.warning('Compiling each program for each device: loading one '
                    "device's program for another failed (%s: %s).",
                    type(error).__name__, error)
  _LOAD_FOR_DEVICES = False


# Beside JAX's persistent compilation cache, on a CPU of several devices: a
# program compiled once, serialized before its first run, and loaded for each
# device by later processes (JAX's cache keeps one copy per device, each
# compiled: the first run compiled each device's in parallel, 5.8 s against
# 3.8 s for one compile and loads; and a program JAX's cache loaded does not
# serialize whole, so it cannot be loaded for another device).
STORE_SUBDIR = 'programs'
STORE_MAX_FILES = 256  # the least recently used beyond are deleted


def _cache_dir() -> str | None:
  """JAX's persistent compilation cache directory, ``None`` where it is off."""
  if not jax.config.jax_enable_compilation_cache:
    return None
  return jax.config.jax_compilation_cache_dir or None


def _stored_path(lowered, device, options: dict[str, Any],
                 arguments: Any) -> str | None:
  """Where ``lowered``, compiled for ``device`` with ``options``, is kept:
  named by its StableHLO, its arguments' and results' trees, its
  arguments' shapes and dtypes (``arguments``: ``_key`` of them; jit drops
  an argument the program never reads from the StableHLO, yet a call
  passes it: two grids of 1 and 2 init options had one name), the options,
  ``XLA_FLAGS``, the JAX, jaxlib and backend versions and the host's CPU
  (``tuning.host``, less its device and core counts). ``None``: the
  compilation cache is off."""
  directory = _cache_dir()
  if directory is None:
    return None
  import jaxlib  # pylint: disable=g-import-not-at-top
  host = {k: v for k, v in tuning.host().items() if k not in ('devices',
                                                              'cores')}
  key = hashlib.sha256(repr((
      lowered.as_text(), str(lowered.in_tree), str(lowered.out_tree),
      str(arguments), sorted(options.items()),
      os.environ.get('XLA_FLAGS', ''), jax.__version__, jaxlib.__version__,
      device.client.platform_version, sorted(host.items()))).encode())
  return os.path.join(directory, STORE_SUBDIR, key.hexdigest() + '.pkl')


def _read_stored(path: str | None):
  """``(serialized, compile seconds)`` kept at ``path``, or ``None``."""
  if path is None or not os.path.exists(path):
    return None
  try:
    with open(path, 'rb') as f:
      serialized, seconds = pickle.loads(zlib.decompress(f.read()))
    os.utime(path)  # last used: kept longest
    return serialized, float(seconds)
  except Exception as e:  # pylint: disable=broad-exception-caught
    logging.warning('Compiling: the stored program %s did not load (%s: %s); '
                    'removed.', path, type(e).__name__, e)
    with contextlib.suppress(OSError):
      os.remove(path)
    return None


def _write_stored(path: str | None, serialized, seconds: float) -> None:
  """Keeps ``serialized`` at ``path`` (atomically), and the
  ``STORE_MAX_FILES`` last used programs beside it."""
  if path is None or serialized is None:
    return
  try:
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    with storage.atomic_file(path, 'wb') as f:  # ~0.3 MB (5x smaller)
      f.write(zlib.compress(pickle.dumps((serialized, seconds)), 1))
  except OSError as e:  # a full disk or read-only cache: compile next time
    logging.warning('Program not stored (%s).', e)
    return

  def last_used(entry):  # another process may have removed it
    try:
      return entry.stat().st_mtime
    except OSError:
      return -math.inf

  with contextlib.suppress(OSError):
    kept = sorted((e for e in os.scandir(directory) if e.name.endswith('.pkl')),
                  key=last_used, reverse=True)
    for old in kept[STORE_MAX_FILES:]:
      with contextlib.suppress(OSError):
        os.remove(old.path)


def clear_compiled() -> None:
  """Forgets every program ``compile_program`` compiled or serialized in
  this process, and JAX's in-memory caches (a benchmark timing a first
  use; a persistent compilation cache on disk stays)."""
  with _COMPILED_LOCK:
    _COMPILED.clear()
    _SERIALIZED.clear()
    _BUILT.clear()
  jax.clear_caches()


def _program_keys(fn, spec, devices, batched, owner, cpu_level) -> list[Any]:
  """``compile_program``'s cache keys, one per device."""
  precision = jax.config.jax_default_matmul_precision
  return [(owner or fn, fn, device.id, batched, _key(spec), cpu_level,
           precision) for device in devices]


def compiled_already(fn, args, devices, batched: tuple[bool, ...],
                     owner=None, cpu_level: int | None = None) -> bool:
  """Whether ``compile_program`` has these programs in memory."""
  keys = _program_keys(fn, _spec(args), devices, batched, owner, cpu_level)
  with _COMPILED_LOCK:
    return all(k in _COMPILED for k in keys)


def build_cost(fn, args, devices, batched: tuple[bool, ...], owner=None,
               cpu_level: int | None = None) -> tuple[float, float]:
  """What building ``compile_program``'s programs took in this process
  (now or earlier): the seconds of the call that built them, and the
  compiling that a compilation cache spared it (programs loaded: the seconds
  their compile had taken). ``(0.0, 0.0)`` for programs not in memory."""
  if not devices:
    return 0.0, 0.0
  key = _program_keys(fn, _spec(args), devices, batched, owner, cpu_level)[0]
  with _COMPILED_LOCK:
    return _BUILT.get(key[:2] + key[3:], (0.0, 0.0))


def compile_program(fn, args, devices, batched: tuple[bool, ...],
                    donate: tuple[int, ...] = (), owner=None,
                    cpu_level: int | None = None):
  """``fn`` vmapped over a chunk of members, compiled for each of ``devices``
  (cached), and the compile seconds.

  Each device runs its own chunks with the same single-device program, so
  results do not depend on how many devices share the grid (an SPMD program
  of 2 devices rounded Adam's members differently in the last bit from one
  of 1). It is compiled once and loaded for the other devices (``_load``); with
  JAX's persistent compilation cache on (``use_compilation_cache``), on a
  CPU, it is also kept on disk (``STORE_SUBDIR`` of the cache) and a later
  process loads it for every device. Where loading fails each device's is
  compiled, in parallel (the same program, the same bits).

  A program is traced at the caller's float32 matmul precision
  (``jax_default_matmul_precision``, part of the cache key: a program
  compiled at another precision is not reused).

  Args:
    fn: the member's function.
    args: its arguments (arrays or ``ShapeDtypeStruct``), members stacked in
      the ``batched`` ones.
    devices: where it will run.
    batched: which arguments carry a leading member axis (for a dict
      argument, which of its entries: ``_in_axes``).
    donate: arguments whose buffers the program may reuse.
    owner: what ``compiled_programs`` finds it by (default ``fn``).
    cpu_level: XLA CPU's backend optimization level (``None``: XLA's).

  Returns:
    ``([compiled per device], seconds)``.
  """
  if not devices:  # a process that runs none of the chunks (several)
    return [], 0.0
  spec = _spec(args)
  keys = _program_keys(fn, spec, devices, batched, owner, cpu_level)

  @_in_callers_config  # traced in the pool's threads
  def lower(device):
    sharding = jax.sharding.SingleDeviceSharding(device)
    return _program(fn, batched, donate).lower(*jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
        spec))

  spared = []  # by JAX's compilation cache (net of loading), per device

  def one(device, lowered=None):
    before = getattr(_THREAD_HITS, 'seconds', 0.0)
    compiled = (lowered or lower(device)).compile(
        compiler_options=_compiler_options(device, cpu_level))
    spared.append(getattr(_THREAD_HITS, 'seconds', 0.0) - before)
    return compiled

  start = time.perf_counter()
  program = keys[0][:2] + keys[0][3:]  # the key less the device
  with _COMPILED_LOCK:  # the chunk tuner compiles widths in threads
    have = {k: _COMPILED[k] for k in keys if k in _COMPILED}
  missing = [(d, k) for d, k in zip(devices, keys) if k not in have]
  built = bool(missing)
  whole = len(missing) == len(keys)  # not some devices' only, after eviction
  # CPUs (tested) and GPUs (without the compilation cache: JAX's own loads a
  # GPU program compiled for one device on another) only.
  load = (_LOAD_FOR_DEVICES and jax.local_device_count() > 1 and
          devices[0].platform in (('cpu',) if _cache_dir() else ('cpu', 'gpu')))
  stored = None  # this program as an earlier process kept it
  with _COMPILED_LOCK:
    serialized = _SERIALIZED.get(program)
    tried = program in _SERIALIZED  # serialized (or found not to serialize)
  if missing and load and len(devices) > 1 and not tried:
    tried = True
    device, key = missing[0]
    lowered = lower(device)
    path = _stored_path(lowered, device, _compiler_options(device, cpu_level),
                        _key(spec))
    stored = _read_stored(path)
    if stored is not None:  # compiled by an earlier process
      serialized, _ = stored
    else:
      hits, begun = getattr(_THREAD_HITS, 'count', 0), time.perf_counter()
      have[key] = one(device, lowered)
      missing.pop(0)
      # One JAX's cache loaded does not serialize whole (its copy failed at
      # run time: "Function ... not found"): the others are compiled.
      fresh = getattr(_THREAD_HITS, 'count', 0) == hits
      serialized = _serialize(have[key]) if fresh else None  # before a run
      _write_stored(path, serialized, time.perf_counter() - begun)
  if load and serialized is not None and missing:
    with concurrent.futures.ThreadPoolExecutor(len(missing)) as pool:
      loaded = list(pool.map(lambda d: _load(serialized, d),
                             [d for d, _ in missing]))
    for (device, key), exe in zip(list(missing), loaded):
      if exe is not None:
        have[key] = exe
        missing.remove((device, key))
    if stored is not None and any(e is not None for e in loaded):
      with _CACHE_SPARED_LOCK:  # as JAX counts its cache's
        _CACHE_SPARED['hits'] += 1
        _CACHE_SPARED['seconds'] += stored[1]
      spared.append(stored[1])
  if missing:
    with concurrent.futures.ThreadPoolExecutor(len(missing)) as pool:
      have.update(zip([k for _, k in missing],
                      pool.map(one, [d for d, _ in missing])))
  seconds = time.perf_counter() - start if built else 0.0
  with _COMPILED_LOCK:
    for key in keys:
      _COMPILED[key] = have[key]
      _COMPILED.move_to_end(key)
    while len(_COMPILED) > CACHE_SIZE:
      _COMPILED.popitem(last=False)
    if built:  # only then can a program have left the cache
      # Set here, with its keys (another thread's clean-up below drops a
      # program none of whose keys is in ``_COMPILED``).
      if tried:
        _SERIALIZED[program] = serialized
      if whole or program not in _BUILT:  # not a device's load alone
        _BUILT[program] = (seconds, max(spared, default=0.0))
      live = {k[:2] + k[3:] for k in _COMPILED}
      for gone in [p for p in (*_SERIALIZED, *_BUILT) if p not in live]:
        _SERIALIZED.pop(gone, None)
        _BUILT.pop(gone, None)
  return [have[key] for key in keys], seconds


def compiled_programs(train_fn) -> list[Any]:
  """The compiled grid programs of ``train_fn`` in the cache, least recently
  used first (for a ``train.Train``: its ``start`` and ``advance``)."""
  return [c for key, c in _COMPILED.items() if key[0] is train_fn]


_BYTES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def program_bytes(compiled) -> int | None:
  """Peak bytes of a compiled program (arguments, outputs and temporaries);
  remembered per program (XLA's analysis took ~5 ms a call)."""
  if compiled not in _BYTES:
    stats = compiled.memory_analysis()
    _BYTES[compiled] = None if stats is None else (
        stats.argument_size_in_bytes + stats.output_size_in_bytes +
        stats.temp_size_in_bytes - stats.alias_size_in_bytes)
  return _BYTES[compiled]


class Interrupted(KeyboardInterrupt):
  """Ctrl-C during a grid run; carries the members that had finished.

  Attributes:
    results: ``Results`` of the finished members (in grid order), or ``None``
      when none had; their ``metadata['interrupted']`` is set here: how many
      of how many members finished, and any ``details``.
  """

  def __init__(self, results: results_lib.Results | None, finished: int,
               total: int, **details):
    super().__init__(f'interrupted with {finished} of {total} members finished')
    if results is not None:
      results.metadata['interrupted'] = {'finished': finished,
                                         'members': total, **details}
    self.results = results
    self.finished = finished
    self.total = total


class _Blocker:
  """Daemon threads that block until outputs are computed, each reused once
  it is done (``wait``): a thread started per wait cost a cached 2-step run
  of the deep linear grid (5 waits) ~1.5 ms of its ~20. One still blocked
  (its wait interrupted) is not reused; another starts. Daemon threads: an
  interrupted wait's outputs may still be computing when the process exits,
  which must not wait for them."""

  def __init__(self):
    self._jobs = queue.SimpleQueue()
    self._lock = threading.Lock()
    self._idle = 0

  def submit(self, outputs) -> threading.Event:
    """An event set once ``outputs`` are computed (or failed)."""
    done = threading.Event()
    with self._lock:
      if self._idle:
        self._idle -= 1
      else:
        threading.Thread(target=self._serve, daemon=True).start()
    self._jobs.put((outputs, done))
    return done

  def _serve(self):
    while True:
      outputs, done = self._jobs.get()
      try:
        jax.block_until_ready(outputs)
      except Exception:  # pylint: disable=broad-except
        pass  # surfaces in the waiting thread (``wait``'s fetch)
      del outputs  # its buffers are the caller's to free
      with self._lock:
        self._idle += 1
      done.set()


_BLOCKER = _Blocker()
if hasattr(os, 'register_at_fork'):  # a forked child has none of our threads
  os.register_at_fork(
      after_in_child=lambda: globals().update(_BLOCKER=_Blocker()))


def wait(outputs, fetch: bool = True):
  """Blocks until ``outputs`` are computed, answering Ctrl-C at once.

  A blocking ``device_get`` holds Python's signal handling until the whole
  program has run. Here a helper thread blocks instead (``_Blocker``), and
  the main thread waits on an event, which a signal interrupts:
  ``KeyboardInterrupt`` gets through at once, and a finished program is
  noticed at once too (the computation itself goes on in the background
  until the process exits). Returns ``outputs`` on the host (``fetch``) or
  where they are.
  """
  done = _BLOCKER.submit(outputs)
  while not done.wait(0.1):
    pass
  return jax.device_get(outputs) if fetch else jax.block_until_ready(outputs)


# Ctrl-C presses seen by ``watch_interrupts``'s handler and not yet acted on,
# and whether a block watches (a press outside one is never acted on later).
_PRESSES = []
_WATCHING = []


def _record_press(signum, frame):
  """SIGINT as Python's own handler answers it, and recorded."""
  if _WATCHING:
    _PRESSES.append(True)
  signal.default_int_handler(signum, frame)


def _interruptible() -> bool:
  """On the main thread, with SIGINT Python's ``KeyboardInterrupt`` (or
  ``watch_interrupts``'s recording of it), not ignored or a caller's own."""
  return (threading.current_thread() is threading.main_thread()
          and signal.getsignal(signal.SIGINT) in (signal.default_int_handler,
                                                  _record_press))


@contextlib.contextmanager
def watch_interrupts():
  """Within the block, Ctrl-C also leaves a record, so a press whose
  ``KeyboardInterrupt`` Python ignored still stops the run: raised inside a
  garbage-collection callback (XLA's: "Exception ignored in:
  _xla_gc_callback"), it was lost, and the run went on to the end (one early
  press in five, in a review). ``execute`` raises it at its next call.
  Elsewhere than ``_interruptible``, the block runs as it is."""
  if not _interruptible():
    yield
    return
  previous = signal.getsignal(signal.SIGINT)
  try:
    del _PRESSES[:]
    _WATCHING.append(True)
    signal.signal(signal.SIGINT, _record_press)
    yield
  finally:
    # Unwatched first: a press from here on is not kept for a later run.
    del _WATCHING[:], _PRESSES[:]
    signal.signal(signal.SIGINT, previous)


def _raise_missed_interrupt() -> None:
  """Raises ``KeyboardInterrupt`` if, in a ``watch_interrupts`` block, a
  recorded press did not stop the run (a ``KeyboardInterrupt`` that arrives
  stops it before this is reached)."""
  if _WATCHING and _PRESSES:
    del _PRESSES[:]
    raise KeyboardInterrupt


@contextlib.contextmanager
def _deferred_interrupt():
  """Holds Ctrl-C (SIGINT) until the block is done; yields a list that then
  holds ``True`` if one came. Where not ``_interruptible`` (off the main
  thread, SIGINT ignored or a handler of the caller's), the block runs as it
  is."""
  pressed = []
  if not _interruptible():
    yield pressed
    return
  previous = signal.getsignal(signal.SIGINT)
  signal.signal(signal.SIGINT, lambda *_: pressed.append(True))
  try:
    yield pressed
  finally:
    signal.signal(signal.SIGINT, previous)


def train_config_of(train_fn) -> dict[str, Any] | None:
  """The static config ``train.make_train`` closed over, as a dict, if any."""
  config = getattr(train_fn, 'config', None)
  return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else None


@dataclasses.dataclass
class RunOptions:
  """How ``execute`` paces, reports and checkpoints a run (``run_options``).

  Attributes:
    checkpoint_dir: where each ``execute`` call of the block keeps its
      checkpoints (``<dir>/run<k>`` for the k-th call), or ``None``: none.
      A call whose directory holds a checkpoint of the same run (train
      config, grid and data) resumes from it; of another run, it raises
      ``ValueError`` naming what differs.
    keep: checkpoints kept per chunk of members (the newest).
    checkpoint_every_s: seconds between checkpoints (each at the end of a
      call, of every chunk running, and of the chunks that finished since
      the last; on Ctrl-C, of those that finished). A save of a 14-member
      chunk's state took ~130 ms on CPU (orbax, synchronous): saving each
      chunk as it finished cost 13% of the default ablation grid's 8-s run.
    logs_per_call: logged passes per program call (each a log and the
      ``log_every`` steps after it); ``None``: about ``seconds_per_call``
      of work, timed on the first call (one pass). The results do not
      depend on it.
    seconds_per_call: the work per call when ``logs_per_call`` is ``None``.
    progress: show progress (steps done, members, steps/s, ETA): ``True`` a
      ``tqdm`` bar, ``False`` none, ``None`` a bar on a terminal or in a
      notebook and otherwise an absl INFO line at most every
      ``PROGRESS_LOG_S`` seconds.
    chunk_size: members per chunk when ``execute`` is not told: ``'auto'``
      the width measured fastest for the program on this host when the run
      is long enough to pay for measuring (cached; ``tuning.choose_chunk``),
      ``'tune'`` measured now, ``'rule'`` the built-in rule
      (``tuning.rule_width``), or a width; ``None``:
      ``$RAHIMI_JAX_CHUNK_SIZE`` if set, else ``'auto'``.
    switch: ``engine.run``'s ``switch`` when it is not told (a launcher's
      ``--switch``).
  """
  checkpoint_dir: str | None = None
  keep: int = 2
  checkpoint_every_s: float = 30.0
  logs_per_call: int | None = None
  seconds_per_call: float = 5.0
  progress: bool | None = None
  chunk_size: str | int | None = None
  switch: tuple[str, ...] | str = 'auto'
  calls: int = 0  # execute calls so far in the block (checkpoint directories)

  def __post_init__(self):
    # Named as a launcher's flags name them too.
    if self.keep < 1:
      raise ValueError(f'keep (--keep_checkpoints) must be >= 1; got '
                       f'{self.keep}.')
    if self.logs_per_call is not None and self.logs_per_call < 1:
      raise ValueError(f'logs_per_call must be >= 1; got {self.logs_per_call}.')
    if not self.seconds_per_call > 0:
      raise ValueError(f'seconds_per_call must be > 0; got '
                       f'{self.seconds_per_call}.')
    # NaN would never be reached: no checkpoint at all.
    if not 0 <= self.checkpoint_every_s < math.inf:
      raise ValueError(f'checkpoint_every_s must be finite and >= 0 (0: after '
                       f'every call); got {self.checkpoint_every_s}.')
    if self.chunk_size is not None:
      self.chunk_size = _chunk_mode(self.chunk_size)


def _chunk_mode(value: str | int) -> str | int:
  """``tuning.check_mode`` of ``value``, a width also as a string (from a
  flag)."""
  if isinstance(value, str) and value.strip().isdigit():
    value = int(value)
  return tuning.check_mode(value)


def env_chunk_mode() -> str | int:
  """The chunk mode ``$RAHIMI_JAX_CHUNK_SIZE`` sets (``'auto'`` unset); a
  bad value is a ``ValueError`` naming the variable."""
  value = os.environ.get(tuning.MODE_ENV, tuning.AUTO)
  try:
    return _chunk_mode(value)
  except ValueError as e:
    raise ValueError(f'${tuning.MODE_ENV}: {e}') from None


_OPTIONS = RunOptions()
PROGRESS_LOG_S = 30.0


def current_options() -> RunOptions:
  """The ``RunOptions`` of the enclosing ``run_options`` block."""
  return _OPTIONS


@contextlib.contextmanager
def run_options(**options):
  """``execute`` calls in the block run with these ``RunOptions``.

  A launcher wraps its study in one (its ``--out`` checkpoints, its pacing
  flags), so every grid the study runs, in whatever order and number of
  ``execute`` calls, is paced and checkpointed the same way.
  """
  global _OPTIONS
  previous, _OPTIONS = _OPTIONS, RunOptions(**options)
  try:
    yield _OPTIONS
  finally:
    _OPTIONS = previous


def _user_components(train_fn) -> list[Any]:
  """The model factory and the components of the options the run reads."""
  config = getattr(train_fn, 'config', None)
  if not isinstance(config, train_lib.TrainConfig):
    return [train_fn]
  return config.components()


def _fingerprint(train_fn, grid, data) -> dict[str, str]:
  """SHA-256 of what a checkpoint's run is: its config, grid and data, and
  the code that computes it (the library's source, ``provenance.
  code_sha256``, the versions of the libraries it runs on, and the user code
  of its model and options, ``provenance.user_code_sha256``)."""
  def sha(b):
    return hashlib.sha256(b).hexdigest()

  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(data):
    digest.update(np.ascontiguousarray(leaf).tobytes())
  import flax, jaxlib, optax  # pylint: disable=g-import-not-at-top,multiple-imports
  versions = [m.__version__ for m in (jax, jaxlib, optax, flax)]
  return {'code': sha(repr((provenance.code_sha256(), versions)).encode()),
          'user code': provenance.user_code_sha256(
              _user_components(train_fn)),
          'train config': sha(repr(train_config_of(train_fn)).encode()),
          # The axes and which of their combinations are members (a union
          # or subset of grids has the axes of another).
          'grid': sha(repr((grid.axes, [sorted(m.values.items(), key=str)
                                        for m in grid.members])).encode()),
          'data': digest.hexdigest() + sha(str(jax.tree.structure(data)).encode())}


class CheckpointMismatch(ValueError):
  """A checkpoint directory holds a checkpoint of another run."""


class _Checkpoints:
  """The checkpoints of one ``execute`` call: a plan (its run's fingerprint,
  the chunk size) and, per chunk of members, an orbax ``CheckpointManager``
  of the chunk's state (its real members' rows, from the host: restorable on
  any number of devices), its step the passes done."""

  def __init__(self, directory: str, keep: int):
    self.directory, self.keep = directory, keep
    self.managers = {}
    self.seconds = 0.0  # time the run waited on saving
    self.saves = 0

  def plan(self, fingerprint: dict[str, str]) -> dict[str, Any] | None:
    """The saved plan, if any; ``ValueError`` if of another run."""
    try:
      with open(os.path.join(self.directory, 'plan.json')) as f:
        plan = json.load(f)
    except FileNotFoundError:
      return None
    saved = plan['fingerprint']
    differ = [k for k in {**saved, **fingerprint}
              if saved.get(k) != fingerprint.get(k)]
    if differ:
      raise CheckpointMismatch(
          f'{self.directory} holds a checkpoint of another run (its '
          f'{" and ".join(differ)} differ{"s" if len(differ) == 1 else ""}); '
          'resume with the same settings, or start afresh elsewhere '
          '(a launcher: another --out, or --overwrite).')
    return plan

  def write_plan(self, plan: dict[str, Any]) -> None:
    os.makedirs(self.directory, exist_ok=True)
    storage.write_text(os.path.join(self.directory, 'plan.json'),
                       json.dumps(plan, indent=1))

  def _manager(self, chunk: int):
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    if chunk not in self.managers:
      directory = os.path.abspath(os.path.join(self.directory, f'chunk{chunk}'))
      os.makedirs(directory, exist_ok=True)
      several = {}
      if jax.process_count() > 1:  # process 0 saves; each reads its own
        several['create'] = False  # made above
        several['multiprocessing_options'] = (
            ocp.options.MultiprocessingOptions(
                primary_host=jax.process_index(),
                active_processes={jax.process_index()},
                barrier_sync_key_prefix=f'chunk{chunk}'))
      self.managers[chunk] = ocp.CheckpointManager(
          directory,
          # Synchronous: a failed save raises here (an async one's error
          # left the run hanging); saves are spaced by checkpoint_every_s.
          options=ocp.CheckpointManagerOptions(
              max_to_keep=self.keep, enable_async_checkpointing=False,
              **several))
    return self.managers[chunk]

  def restore(self, chunk: int, like):
    """``(passes done, state)`` of a chunk, or ``(0, None)``."""
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    manager = self._manager(chunk)
    step = manager.latest_step()
    if step is None:
      return 0, None
    leaves, treedef = jax.tree.flatten(like)
    target = treedef.unflatten([np.zeros(s.shape, s.dtype) if math.prod(s.shape)
                                else None for s in leaves])
    restored = jax.tree.leaves(
        manager.restore(step, args=ocp.args.StandardRestore(target)),
        is_leaf=lambda x: x is None)
    for s, r in zip(leaves, restored):  # orbax cuts a bigger array silently
      if r is not None and r.shape != s.shape:
        raise CheckpointMismatch(
            f'{self.directory}: chunk {chunk} was saved with shape {r.shape}'
            f', this run\'s is {s.shape}; resume with the same settings, or '
            'start afresh elsewhere.')
    return step, treedef.unflatten([
        np.zeros(s.shape, s.dtype) if r is None else r
        for s, r in zip(leaves, restored)])

  def save(self, chunk: int, passes: int, state) -> None:
    """Saves the state of a chunk after ``passes`` passes (atomically: orbax
    writes a temporary directory and renames it)."""
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    start = time.perf_counter()
    leaves, treedef = jax.tree.flatten(state)
    state = treedef.unflatten([np.asarray(a) if np.size(a) else None
                               for a in leaves])  # orbax saves no empty array
    self._manager(chunk).save(passes, args=ocp.args.StandardSave(state))
    self.seconds += time.perf_counter() - start
    self.saves += 1

  def close(self) -> None:
    start = time.perf_counter()
    for manager in self.managers.values():
      manager.wait_until_finished()
      manager.close()
    self.managers = {}
    self.seconds += time.perf_counter() - start


class _Progress:
  """Steps done of an ``execute`` call: a ``tqdm`` bar, or INFO lines."""

  def __init__(self, total_steps: int, members: int, show: bool | None):
    self.total, self.members, self.done = total_steps, members, 0
    self.start = self.last = time.perf_counter()
    interactive = sys.stderr.isatty() or 'ipykernel' in sys.modules
    self.bar = None
    if show or (show is None and interactive):
      try:  # a notebook's widget bar needs ipywidgets; else text
        import ipywidgets  # pylint: disable=g-import-not-at-top,unused-import
        import tqdm.auto as tqdm  # pylint: disable=g-import-not-at-top
      except ImportError:
        import tqdm  # pylint: disable=g-import-not-at-top
      self.bar = tqdm.tqdm(total=total_steps, unit='step', leave=False,
                           desc=f'{members} members', dynamic_ncols=True)
    self.log = show is None and not interactive

  def update(self, done: int) -> None:
    if self.bar is not None:
      self.bar.update(done - self.done)
    self.done = done
    now = time.perf_counter()
    if self.log and (now - self.last >= PROGRESS_LOG_S or done == self.total
                     or self.last == self.start):
      rate = done / max(now - self.start, 1e-9)
      logging.info('%d members: %d/%d steps, %.1f steps/s, ETA %.0fs',
                   self.members, done, self.total, rate,
                   (self.total - done) / rate if rate else float('nan'))
      self.last = now

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


def _resumable(train_fn) -> train_lib.Train:
  """``train_fn``'s ``train.Train``: ``make_train``'s pieces, or a plain
  ``train(knobs, data) -> outputs`` as one call (no passes between)."""
  resumable = getattr(train_fn, 'resumable', None)
  if isinstance(resumable, train_lib.Train):
    return resumable
  return train_lib.Train(getattr(train_fn, 'config', None), 0, train_fn,
                         None, lambda outputs: outputs)


@dataclasses.dataclass(frozen=True)
class _Chunked:
  """A run's programs for chunks of ``chunk`` members.

  Attributes:
    chunk: members per chunk.
    used: the devices that run chunks (none runs padding only).
    start: ``start`` compiled for this process's first used device, where
      every chunk starts (it is quick to run: a compile per device cost
      mlp32's chunks 2.5 s more) before moving to its own; for a run in one
      call (``start`` is the whole run), for every local used device.
      ``{device id: compiled}`` (empty where this process runs no chunk).
    advance: ``advance`` compiled per local used device (``{device id:
      compiled}``; empty for a run in one call).
    seconds: what compiling took (0 for programs compiled before).
    advance_s: what compiling ``advance`` took when it was built, now
      (beside ``start``'s compile) or earlier in this process; loaded from
      a compilation cache, the compiling that spared (``build_cost``).
    cost_s: what compiling the programs took, as ``advance_s`` (side by
      side: the longer one's).
    state: the chunk state's ``ShapeDtypeStruct``s.
    need: the most bytes one of the programs needs, if known.
  """
  chunk: int
  used: list[Any]
  start: dict[int, Any]
  advance: dict[int, Any]
  seconds: float
  advance_s: float
  cost_s: float
  state: Any
  need: int | None

  def started(self, knobs, placed: dict[int, Any], device) -> Any:
    """The state from ``start`` of a chunk whose ``knobs`` are on
    ``device``, on ``device`` (dispatched, not awaited); ``placed``: the
    data on each device."""
    if device.id in self.start:
      return self.start[device.id](knobs, placed[device.id])
    where = next(d for d in self.used if d.id in self.start)
    return jax.device_put(self.start[where.id](jax.device_put(knobs, where),
                                               placed[where.id]), device)


@contextlib.contextmanager
def blas_on_one_thread():
  """BLAS and LAPACK on one thread, on a CPU backend, while inside.

  jaxlib's CPU LAPACK kernels (an SVD, QR or Cholesky in a member's step or
  init) call scipy's OpenBLAS, which spreads each call over every core, while
  the engine runs one device per core (``use_host_cores``): two devices'
  calls at once oversubscribe the cores. The deep linear study's
  Levenberg–Marquardt and Gauss–Newton groups, one chunk each, ran 13.8 s
  one after another and 20.0 s side by side on 2 devices; on one BLAS thread
  each, side by side, 9.5 s (WORKSPACE.md, "Simple experiment 1"). The
  engine runs its programs inside this, on any number of devices, so that
  their bits do not depend on the device count (a LAPACK call's rounding
  depends on its threads). A library loaded inside (at a first compile) is
  not limited: the engine enters it after compiling.
  """
  if jax.default_backend() != 'cpu':
    yield
    return
  with _blas_controller().limit(limits=1, user_api='blas'):
    yield


_BLAS = {}  # the ThreadpoolController, and how many modules it has seen


def _blas_controller():
  """threadpoolctl's view of the loaded BLAS libraries, read again only
  after an import (which may load one: jaxlib's LAPACK loads scipy's
  OpenBLAS): reading them (``/proc/self/maps``) took ~2.5 ms of every run."""
  import threadpoolctl  # pylint: disable=g-import-not-at-top
  if _BLAS.get('modules') != len(sys.modules):
    _BLAS['controller'] = threadpoolctl.ThreadpoolController()
    _BLAS['modules'] = len(sys.modules)
  return _BLAS['controller']


def _compile_chunk(train_fn, run: train_lib.Train, grid: grid_lib.Grid,
                   data: Any, devices: Sequence[Any], chunk: int,
                   chunks: int | None = None, state: Any = None) -> _Chunked:
  """``run``'s programs for ``chunks`` chunks (default: as many as ``grid``
  fills) of ``chunk`` members of ``grid`` on ``devices`` (cached by
  ``compile_program``); given the chunk ``state``'s shapes, ``advance``
  only (the chunk tuner's probe, which starts chunks otherwise)."""
  me = jax.process_index()
  used = list(devices[:chunks or math.ceil(len(grid) / chunk)])
  local = [d for d in used if d.process_index == me]
  shared = _shared(run)
  knobs = _spec(_knobs(grid, np.zeros(chunk, int), shared))
  knobs_batched = _knobs_batched(grid, shared)
  starts = [] if state is not None else local[:1] if run.passes else local
  begun = time.perf_counter()
  start_args = (run.start, (knobs, data), starts, (knobs_batched, False))
  start_options = {'owner': train_fn, 'cpu_level': START_OPTIMIZATION_LEVEL
                                                   if run.passes else None}
  compiling = concurrent.futures.Future()
  if compiled_already(*start_args, **start_options):
    compiling.set_result(compile_program(*start_args, **start_options))
  else:  # compiled (or loaded) in a thread, beside ``advance``
    pool = concurrent.futures.ThreadPoolExecutor(1)
    compiling = pool.submit(_in_callers_config(compile_program), *start_args,
                            **start_options)
    pool.shutdown(wait=False)
  # The state's shapes: the compiled start's outputs when it is at hand
  # (tracing ``start`` again for them cost ~45 ms per call of a cached
  # run), else traced. Compiled side by side, the deep linear net's and the
  # 64-32-10 MLP's first compile took 1.01-1.39 / 1.96-2.43 s, against
  # 1.25-1.63 / 2.53-2.71 s one after the other (WORKSPACE.md).
  if state is None:
    state = (jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype),
                          compiling.result()[0][0].out_info)
             if compiling.done() and compiling.result()[0] else
             jax.eval_shape(jax.vmap(run.start, in_axes=_in_axes(
                 (knobs_batched, False))), knobs, data))
  advance, more, advance_cost = [], 0.0, (0.0, 0.0)
  if run.passes:
    scalar = jax.ShapeDtypeStruct((), np.int32)
    advance_args = (run.advance, (knobs, data, state, scalar, scalar), local,
                    (knobs_batched, False, True, False, False))
    advance, more = compile_program(*advance_args, donate=(2,),
                                    owner=train_fn)
    advance_cost = build_cost(*advance_args, owner=train_fn)
  start, seconds = compiling.result()
  start_cost = build_cost(*start_args, **start_options)
  if seconds or more:  # the two side by side: their wall time
    seconds = time.perf_counter() - begun
  # What building them took, now or earlier in this process (a run at a
  # given width, say), for the chunk tuner: side by side, the longer.
  cost = max(start_cost[0], advance_cost[0]) + start_cost[1] + advance_cost[1]
  need = max([program_bytes(c) or 0 for c in (*start[:1], *advance[:1])],
             default=0) or None
  return _Chunked(chunk, used, {d.id: c for d, c in zip(starts, start)},
                  {d.id: c for d, c in zip(local, advance)}, seconds,
                  sum(advance_cost), cost, state, need)


class _Probe:
  """``tuning.choose_chunk``'s measure of a ``make_train`` run at chunk
  widths: the run's own programs (``_compile_chunk``, so the width the run
  then takes is compiled already), each local device running a chunk of
  real members at once, as in a round of the run, timed over whole passes
  (a log and ``log_every`` steps). The widths of its first call are
  compiled whole; later ones, ``advance`` only, their chunks started by the
  first width's ``start`` (a chunk of another width: that start run on as
  many chunks of its width as it takes; ``start`` took about half of a
  width's compile, 0.3-0.6 s of the deep linear net's ~1 s).

  ``probe(widths, devices)`` is each width's estimated seconds per
  member-step of the whole run on the first ``devices`` devices (default
  all): a pass's time x the rounds of chunks the run needs at that width
  (every group's chunks, ``groups`` the run's group sizes, default the
  grid's: idle devices in the last round count), over members x steps per
  pass (the chunks timed are the first group's, ``grid``). A
  width whose programs need more than ``budget`` bytes is left out. Not
  timed: what a run does between passes and rounds (a call, a finish; the
  next round is dispatched ahead of them, but the host's work takes its
  share of a 2-core CPU). ``compile_s`` has each width's compile seconds
  (0 for programs compiled before), ``cost_s`` what compiling them took when
  they were built, now or earlier in this process (programs loaded from the
  compilation cache: the compiling that spared, ``use_compilation_cache``),
  ``next_compile_s`` what compiling another width should take (its
  ``advance``, as the last width's took).
  """

  def __init__(self, train_fn, run: train_lib.Train, grid: grid_lib.Grid,
               data: Any, devices: Sequence[Any], budget: int | None,
               groups: Sequence[int] | None = None):
    self.train_fn, self.run, self.grid, self.data = train_fn, run, grid, data
    self.devices, self.budget = list(devices), budget
    self.groups = list(groups or [len(grid)])
    self.compile_s: dict[int, float] = {}
    self.cost_s: dict[int, float] = {}
    self.next_compile_s = 0.0
    self.base: _Chunked | None = None  # the first width's, ``start`` too

  def _chunks(self, width: int, devices: int | None = None
              ) -> tuple[_Chunked, list[list[Any]]] | None:
    """The width's programs on the first ``devices`` devices and, per local
    used device, ``[advance, knobs, data, state]`` of a chunk started there;
    ``None``: over the budget."""
    base = self.base
    state = None if base is None else jax.tree.map(
        lambda s: jax.ShapeDtypeStruct((width,) + s.shape[1:], s.dtype),
        base.state)
    chunked = _compile_chunk(self.train_fn, self.run, self.grid, self.data,
                             self.devices[:devices], width,
                             self._chunks_of(width), state=state)
    self.compile_s[width] = self.compile_s.get(width, 0.0) + chunked.seconds
    self.cost_s.setdefault(width, chunked.cost_s)
    if chunked.advance_s:
      self.next_compile_s = chunked.advance_s
    if self.budget and chunked.need and chunked.need > self.budget:
      return None
    g, slots, shared = len(self.grid), [], _shared(self.run)
    local = [d for d in chunked.used if d.id in chunked.advance]
    placed = {d.id: jax.device_put(self.data, d) for d in local}
    starter = base or chunked  # the programs with a ``start``
    for i, device in enumerate(local):  # started where the run starts them
      members = (i * width + np.arange(width)) % g
      knobs = jax.device_put(_knobs(self.grid, members, shared), device)
      if starter.chunk == width:
        started = starter.started(knobs, placed, device)
      else:  # the first width's chunks, joined
        parts = []
        for k in range(0, width, starter.chunk):
          part = _knobs(self.grid, np.resize(members[k:], starter.chunk),
                        shared)
          parts.append(jax.device_get(starter.started(
              jax.device_put(part, device), placed, device)))
        started = jax.device_put(jax.tree.map(
            lambda *a: np.concatenate(a)[:width], *parts), device)
      slots.append([chunked.advance[device.id], knobs, placed[device.id],
                    started])
    return chunked, slots

  def _chunks_of(self, width: int) -> int:
    """The run's chunks at ``width``: each group's, its last padded."""
    return sum(math.ceil(n / width) for n in self.groups)

  @staticmethod
  def _time(slots, count: int, calls: int) -> float:
    """Seconds of ``calls`` calls of ``count`` passes on every device."""
    start = time.perf_counter()
    for _ in range(calls):
      for slot in slots:
        slot[3] = slot[0](*slot[1:], np.int32(0), np.int32(count))
    jax.block_until_ready([slot[3] for slot in slots])
    return time.perf_counter() - start

  def __call__(self, widths: Sequence[int], devices: int | None = None,
               rounds: int = tuning.PROBE_ROUNDS) -> dict[int, float]:
    steps = self.run.passes - 1  # passes with steps (the last only logs)
    if not widths or steps < 1:
      return {}
    with concurrent.futures.ThreadPoolExecutor(len(widths)) as pool:
      ready = dict(zip(widths, pool.map(_in_callers_config(
          functools.partial(self._chunks, devices=devices)), widths)))
    ready = {w: r for w, r in ready.items() if r is not None}
    if self.base is None and ready:
      self.base = next(iter(ready.values()))[0]
    if not ready:
      return {}
    plan, best = {}, {}  # width: (passes per call, calls per stretch)
    with blas_on_one_thread():  # as the run
      for w, (_, slots) in ready.items():
        best[w] = one = max(self._time(slots, 1, 1), 1e-9)  # a pass counts
        passes = max(1, math.ceil(tuning.MIN_PROBE_S / one))
        count = min(passes, steps)
        plan[w] = (count, math.ceil(passes / count), one)
      longest = max(one * count * calls
                    for count, calls, one in plan.values())
      rounds = max(1, min(rounds, math.ceil(
          rounds * tuning.MIN_PROBE_S / longest)))
      for _ in range(rounds):  # interleaved: a drift of the host's speed
        for w, (count, calls, _) in plan.items():  # falls on every width
          best[w] = min(best[w], self._time(ready[w][1], count, calls) /
                        (count * calls))
    members, every = sum(self.groups), self.run.config.log_every
    out = {}
    for w, (chunked, _) in ready.items():
      rounds_of_run = math.ceil(self._chunks_of(w) / len(chunked.used))
      out[w] = best[w] * rounds_of_run / (members * every)
    return out


def _gather_chunks(outputs: dict[int, Any], chunk: int, like) -> dict[int, Any]:
  """Every process's chunk outputs, on every process (``process_allgather``
  of each process's chunks, padded to one shape)."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  most = int(np.max(multihost_utils.process_allgather(
      np.asarray([len(outputs)]))))
  ids = np.full(most, -1, np.int32)
  ids[:len(outputs)] = sorted(outputs)
  padded = [jax.tree.map(lambda a: np.concatenate(
      [a, np.zeros((chunk - len(a),) + a.shape[1:], a.dtype)]), outputs[c])
            for c in sorted(outputs)]
  padded += [jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), like)
             ] * (most - len(outputs))
  stacked = jax.tree.map(lambda *xs: np.stack(xs), *padded)
  all_ids, gathered = multihost_utils.process_allgather((ids, stacked))
  out = {}
  for p, i in zip(*np.nonzero(np.asarray(all_ids) >= 0)):
    out[int(all_ids[p, i])] = jax.tree.map(lambda a: np.asarray(a[p, i]),
                                           gathered)
  return out


def _round_saved(checkpoints: _Checkpoints, finished: dict[int, Any],
                 chunks, chunk: int, like, passes: int, due: bool) -> bool:
  """Several processes: at the end of a round of chunks, when process 0's
  clock says a checkpoint is ``due``, every process's finished chunks are
  gathered and process 0 saves them all (orbax writes numpy arrays from
  process 0 only, and takes no array local to another process). Collective:
  every process calls it after every round."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  if not bool(multihost_utils.broadcast_one_to_all(np.bool_(due))):
    return False
  gathered = _gather_chunks(finished, chunk, like)
  if jax.process_index() == 0:
    for c, state in sorted(gathered.items()):
      checkpoints.save(c, passes, jax.tree.map(
          lambda a, c=c: a[:len(chunks[c])], state))
  return True


def execute(train_fn: Callable[..., Any], grid: grid_lib.Grid, data: Any, *,
            member_batch_size: int | None = None,
            memory_budget_bytes: int | None = None,
            num_devices: int | None = None,
            chunk_size: int | None = None,
            pad_to_width: bool = False,
            groups: Sequence[int] | None = None,
            metadata: dict[str, Any] | None = None) -> results_lib.Results:
  """Trains every member of ``grid`` with one compiled program.

  The grid splits into chunks of members; each device runs its chunks, one
  at a time, with the same compiled program (``compile_program``), so the
  results do not depend on the number of devices. A ``make_train`` run (its
  ``train.Train``) runs as ``start`` once, then ``advance`` call after call,
  each a few logged passes (``RunOptions``), with progress and, under
  ``run_options(checkpoint_dir=...)``, a checkpoint after each call; any
  other ``train_fn`` runs as one call.

  Args:
    train_fn: ``make_train``'s, or any pure ``train(knobs, data) -> outputs``;
      outputs are arrays of shape ``[L]`` (one per logged step, with a
      ``step`` entry) or ``[]``.
    grid: the grid of members.
    data: the dataset pytree, shared by all members.
    member_batch_size: the most members one device runs at once (caps the
      chunk size).
    memory_budget_bytes: the most memory one device's program may use
      (default: half a device's memory); smaller chunks beyond it.
    num_devices: local devices to run chunks on at once (default: all, or
      fewer where the tuning measured fewer faster, ``Choice.devices``;
      never more than there are chunks).
    chunk_size: members vmapped together on a device. Default (``None``):
      as ``RunOptions.chunk_size`` says (by default measured on this host
      for this program, cached; never dependent on the device count); 0: the
      grid's members split evenly over the devices. A resumed run keeps its
      first run's chunk size. The chosen width and how it was chosen are in
      ``metadata['engine']['chunk_choice']``.
    pad_to_width: with ``chunk_size``, chunks that wide even where the grid
      has fewer members (padded with copies of a member, whose outputs are
      dropped): a program compiled for a bigger grid runs a smaller one
      (``engine.run``'s switched groups of a cell), no other compiled.
    groups: sizes of consecutive runs of ``grid``'s members that no chunk
      mixes (``engine.run``'s switched groups, each taking one option of
      the switched axes; their sum is ``len(grid)``). Each group is chunked
      on its own at the width chosen for the first (its last chunk padded
      with copies, as the grid's always is), and the chunks of every group
      share the devices' rounds: groups too small to fill the devices run
      side by side. Default: one group.
    metadata: extra provenance to store with the results (beside the
      library's own: versions, devices, git state, the train config).

  Returns:
    Tidy ``Results``: one row per (member, logged step).

  Raises:
    Interrupted: on Ctrl-C, with the results of the member-batches (a chunk
      on every device) that had finished.
    CheckpointMismatch: a checkpoint of another run in this call's
      checkpoint directory.
    ValueError: a bad argument.
  """
  start = time.perf_counter()
  hits = compile_cache_hits()
  options = _OPTIONS
  run = _resumable(train_fn)
  g = len(grid)
  groups = [g] if groups is None else [int(n) for n in groups]
  if min(groups) < 1 or sum(groups) != g:
    raise ValueError(f'groups must be sizes >= 1 that sum to the grid\'s {g} '
                     f'members; got {groups}.')
  bounds = np.cumsum([0, *groups])
  shared = _shared(run)
  for axis in shared:
    for lo, hi in zip(bounds[:-1], bounds[1:]):
      taken = {m.values[axis] for m in grid.members[lo:hi]}
      if axis in grid.choices and len(taken) > 1:
        raise ValueError(
            f'The train config switches {axis!r}, so every member run '
            f'together must take the same {axis}; '
            f'{"this grid" if len(groups) == 1 else "a group"} has '
            f'{", ".join(sorted(taken))} (engine.run groups the members by '
            'it).')
  # The width is chosen for the first group (the others share it), whose
  # knobs weigh every option of the grid's, as the run's do.
  first = (grid if len(groups) == 1 else
           grid.subset(range(groups[0]), keep=grid.choices))
  if member_batch_size is not None and member_batch_size < 1:
    raise ValueError(f'member_batch_size must be >= 1; got {member_batch_size}.')
  if chunk_size is not None and chunk_size < 0:
    raise ValueError(f'chunk_size must be >= 0 (0: no chunks); got {chunk_size}.')
  me = jax.process_index()
  several = jax.process_count() > 1
  # Several processes (initialize_distributed): every process's devices
  # share the chunks; each process runs those of its own devices.
  devices = (jax.devices() if several else
             jax.local_devices()[:num_devices or jax.local_device_count()])
  checkpoints = plan = None
  if options.checkpoint_dir is not None:
    checkpoints = _Checkpoints(
        os.path.join(options.checkpoint_dir, f'run{options.calls}'),
        options.keep)
    options.calls += 1
    fingerprint = _fingerprint(run, grid, data)
    if len(groups) > 1:
      fingerprint['groups'] = ','.join(map(str, groups))
    plan = checkpoints.plan(fingerprint)
  budget = memory_budget_bytes or int(
      DEFAULT_MEMORY_FRACTION * device_memory_bytes())
  probe = None
  if plan is not None:  # a resumed run keeps its chunks
    if member_batch_size and member_batch_size < plan['chunk_size']:
      raise CheckpointMismatch(
          f'member_batch_size={member_batch_size}: the checkpoint in '
          f'{checkpoints.directory} ran chunks of {plan["chunk_size"]} '
          'members, which a resume keeps (its saved chunks are those); '
          f'resume with member_batch_size >= {plan["chunk_size"]} or none.')
    choice = tuning.Choice(plan['chunk_size'], 'checkpoint')
  elif chunk_size is None:
    mode = options.chunk_size or env_chunk_mode()
    # Several processes run process 0's choice (the others measure nothing).
    probe = (_Probe(train_fn, run, first, data, devices, budget, groups)
             if run.passes else None)
    flops = None
    # The rule's input, traced only where it decides (a CPU, a grid whose
    # rule width differs for a big member).
    if (run.passes and isinstance(mode, str) and
        tuning.rule_width(groups[0]) != tuning.rule_width(
            groups[0], step_flops=tuning.BIG_STEP_FLOPS)):
      from rahimi_jax import engine  # pylint: disable=g-import-not-at-top
      flops = tuning.member_step_flops(
          run.config, data, lambda: engine.step_flops(run.config, first, data))
    choice = tuning.choose_chunk(
        run.config if run.passes else None, first, data,
        mode=tuning.RULE if me and mode in (tuning.AUTO, tuning.TUNE) else mode,
        most=member_batch_size, measure=probe,
        devices=1 if several or num_devices else len(devices),
        step_flops=flops, groups=groups)
    if choice.devices and not (several or num_devices):
      devices = devices[:choice.devices]
    if several:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      width = int(multihost_utils.broadcast_one_to_all(np.int32(choice.width)))
      if me:
        choice = tuning.Choice(width, 'process 0')
  else:
    choice = tuning.Choice(chunk_size, 'given')
  chunk_size = choice.width
  most = chunk_size if pad_to_width and chunk_size else groups[0]
  chunk = min(chunk_size or math.ceil(groups[0] / len(devices)), most,
              member_batch_size or most)

  def chunked(width):  # each group's members, a chunk of ``width`` at a time
    return [np.arange(i, min(i + width, hi))
            for lo, hi in zip(bounds[:-1], bounds[1:])
            for i in range(lo, hi, width)]

  chunks = chunked(chunk)
  programs = _compile_chunk(train_fn, run, grid, data, devices, chunk,
                            len(chunks))
  # The chosen width's compile, done for the tuner's probe or now.
  compile_s = programs.seconds + (probe.compile_s.get(chunk, 0.0) if probe
                                  else 0.0)
  if (member_batch_size is None and plan is None and programs.need is not None
      and programs.need > budget and chunk > 1):
    over = (f'a chunk of {chunk} needs {programs.need / 2**20:.1f} MB > '
            f'budget {budget / 2**20:.1f} MB')
    chunk = max(1, int(budget // (programs.need / chunk)))  # fewer per chunk
    logging.info('%s; chunks of %d.', over, chunk)
    choice = dataclasses.replace(  # what runs, and why
        choice, width=chunk, source='memory budget',
        why=f'{over} ({choice.source} width {choice.width})')
    chunks = chunked(chunk)
    programs = _compile_chunk(train_fn, run, grid, data, devices, chunk,
                              len(chunks))
    compile_s += programs.seconds
  used, state_spec = programs.used, programs.state
  if checkpoints is not None and plan is None:
    checkpoints.write_plan({'fingerprint': fingerprint, 'chunk_size': chunk,
                            'members': g, 'passes': run.passes})

  hits = compile_cache_hits() - hits  # programs loaded, not compiled
  meta = {**provenance.provenance(), 'train_config': train_config_of(run),
          **(metadata or {})}
  run_start = time.perf_counter()
  rounds = [list(range(i, min(i + len(used), len(chunks))))
            for i in range(0, len(chunks), len(used))]
  every = run.config.log_every if run.passes else 1
  steps = run.config.steps if run.passes else 1
  # One progress display: process 0's (the others run in step with it).
  progress = _Progress(steps * len(rounds), g,
                       options.progress if me == 0 else False)
  calls, resumed, per_pass, saved = 0, [], None, time.perf_counter()
  outputs = {}  # per chunk
  # Chunks that finished after their last checkpoint: their final states, on
  # the host, saved with the next periodic save or on Ctrl-C (a resume ran
  # them again), so each chunk is saved at most once more and a short run
  # not at all.
  saved_at, pending = {}, {}
  placed = {d.id: jax.device_put(data, d) for d in used
            if d.process_index == me}

  def info(run_s):
    info = {
        'members': g,
        'member_batch_size': min(g, len(used) * chunk),
        'member_batches': len(rounds),
        'num_devices': len(used),
        'chunk_size': chunk,
        'chunk_choice': choice.record(),
        'chunks': len(chunks),
        **({'groups': len(groups)} if len(groups) > 1 else {}),
        'program_bytes': programs.need,
        'compile_s': compile_s,
        'compile_cache_hits': hits,
        'run_s': run_s,
        'wall_s': time.perf_counter() - start,
        'calls': calls,
    }
    if checkpoints is not None:
      info |= {'checkpoint_dir': checkpoints.directory,
               'checkpoints': checkpoints.saves,
               'checkpoint_s': checkpoints.seconds,
               'resumed_passes': resumed}
    return info

  def tidy(done, run_s):
    out = jax.tree.map(lambda *xs: np.concatenate(xs),
                       *[outputs[c] for c in sorted(outputs)])
    sub = grid if done == g else grid.subset(range(done))
    return results_lib.from_outputs(
        sub, out, metadata={**meta, 'engine': info(run_s)})

  def prepare(r):
    """Round ``r``'s chunks in this process, ``[(chunk, device)]``, with
    their knobs, states (started or restored; dispatched, not awaited) and
    passes done, on their devices."""
    mine = [(c, used[d]) for d, c in enumerate(rounds[r])
            if used[d].process_index == me]
    knobs, states, dones = [], [], []
    for c, device in mine:
      idx = chunks[c]
      knobs.append(jax.device_put(_knobs(grid, np.concatenate(
          [idx, np.full(chunk - len(idx), idx[-1])]), shared), device))
      done, state = 0, None
      if checkpoints is not None:
        done, state = checkpoints.restore(c, jax.tree.map(
            lambda a: jax.ShapeDtypeStruct((len(idx),) + a.shape[1:],
                                           a.dtype), state_spec))
        resumed.append(done)
        saved_at[c] = done
      if state is None:
        state = programs.started(knobs[-1], placed, device)
      else:  # the real members' rows; padding copies the last member's
        state = jax.device_put(jax.tree.map(lambda a: np.concatenate(
            [a, np.repeat(a[-1:], chunk - len(idx), 0)]), state), device)
      states.append(state)
      dones.append(done)
    return mine, knobs, states, dones

  def pace():
    """Passes in the next call: about ``seconds_per_call`` of work."""
    return min(run.passes, options.logs_per_call or (
        1 if per_pass is None else
        max(1, round(options.seconds_per_call / max(per_pass, 1e-9)))))

  def call(prepared, count):
    """Dispatches ``count`` more passes of a round's unfinished chunks; those
    chunks' indices (into the round's)."""
    mine, knobs, states, dones = prepared
    moved = [i for i in range(len(mine)) if dones[i] < run.passes]
    for i in moved:
      device = mine[i][1]
      states[i] = programs.advance[device.id](
          knobs[i], placed[device.id], states[i], np.int32(dones[i]),
          np.int32(count))
    return moved

  def flush():
    """Checkpoints the finished chunks' final states not yet saved."""
    for c, state in pending.items():
      checkpoints.save(c, run.passes, state)
      saved_at[c] = run.passes
    pending.clear()

  finish = _program(run.finish, (True,), ())
  ran = False
  with blas_on_one_thread():
    try:
      # Rounds set up ahead (started: a start is quick; their states live
      # beside the running round's): two where their states fit the budget
      # too, as a chunk starts on the first device, where its start must not
      # wait behind the round before (another device would wait on it).
      state_bytes = sum(math.prod(s.shape) * s.dtype.itemsize
                        for s in jax.tree.leaves(state_spec))
      depth = 2 if (programs.need or 0) + 2 * state_bytes <= budget else 1
      ready = collections.deque(prepare(r)
                                for r in range(min(depth, len(rounds))))
      ahead = None  # (count, moved) of the round's first call, dispatched
      returned = None  # when the last wait returned
      for r in range(len(rounds)):
        mine, knobs, states, dones = current = ready.popleft()
        if r + depth < len(rounds):
          ready.append(prepare(r + depth))
        following = ready[0] if ready else None
        progress.update(r * steps + min(min(dones, default=run.passes) * every,
                                        steps))
        # A chunk's outputs, dispatched on its device behind its last pass (a
        # device runs its programs in order: ``finish`` behind the next
        # round's call would wait for all of it).
        finished_on_device = None
        # Each chunk goes on from its own pass (a kill may fall between two
        # chunks' saves): the results do not depend on the passes per call.
        while min(dones, default=run.passes) < run.passes:
          if ahead is None:
            count, call_start = pace(), time.perf_counter()
            moved = call(current, count)
          else:  # dispatched during the last round; running since it returned
            (count, moved), call_start, ahead = ahead, returned, None
          if all(dones[i] + count >= run.passes for i in moved):
            finished_on_device = [finish(s) for s in states]
            # The next round's first call goes to the devices now, behind
            # this one: no device waits on the host between rounds (it
            # fetches and finishes this one meanwhile; the devices' threads
            # were busy 87-88% of a 200-step deep linear run in 8 rounds,
            # 93% so). Several processes keep their rounds in step
            # (collectives between rounds), so not there.
            if following is not None and not several:
              n = pace()
              moved_next = call(following, n)
              ahead = (n, moved_next) if moved_next else None
          wait(states, fetch=False)
          _raise_missed_interrupt()
          returned = time.perf_counter()
          calls += 1
          # Per pass run (passes past the last do nothing).
          seconds = (returned - call_start) / max(
              min(count, run.passes - dones[i]) for i in moved)
          per_pass = seconds if per_pass is None else 0.5 * (per_pass + seconds)
          save = (checkpoints is not None and not several and
                  time.perf_counter() - saved >= options.checkpoint_every_s)
          for i in moved:
            dones[i] = min(run.passes, dones[i] + count)
            if save:
              c = mine[i][0]
              checkpoints.save(c, dones[i], jax.tree.map(
                  lambda a: a[:len(chunks[c])], jax.device_get(states[i])))
              saved_at[c] = dones[i]
          if save:
            flush()
            saved = time.perf_counter()
          progress.update(r * steps + min(min(dones) * every, steps))
        if finished_on_device is None:  # one call (passes 0), or resumed done
          finished_on_device = [finish(s) for s in states]
        finished = {}
        for (c, _), state, out in zip(mine, states, wait(finished_on_device)):
          outputs[c] = jax.tree.map(lambda a: np.asarray(a[:len(chunks[c])]),
                                    out)
          if (checkpoints is not None and not several and run.passes
              and saved_at.get(c) != run.passes):
            pending[c] = jax.tree.map(lambda a: a[:len(chunks[c])],
                                      jax.device_get(state))
          if checkpoints is not None and (several or not run.passes):
            finished[c] = state = jax.tree.map(lambda a: a[:len(chunks[c])],
                                               jax.device_get(state))
            if not several:
              checkpoints.save(c, 0, state)
        if checkpoints is not None and several and _round_saved(
            checkpoints, finished, chunks, chunk, state_spec, run.passes,
            time.perf_counter() - saved >= options.checkpoint_every_s):
          saved = time.perf_counter()
        logging.info('member-batch %d/%d done (%.1fs)', r + 1, len(rounds),
                     time.perf_counter() - run_start)
      if several:
        outputs = {c: jax.tree.map(lambda a: a[:len(chunks[c])], out)
                   for c, out in _gather_chunks(outputs, chunk, jax.eval_shape(
                       jax.vmap(run.finish), state_spec)).items()}
      ran = True
    except KeyboardInterrupt:
      done = 0  # the chunks finished in order
      while done in outputs:
        done += 1
      outputs = {c: outputs[c] for c in range(done)}
      finished = sum(len(chunks[c]) for c in outputs)
      partial = (tidy(finished, time.perf_counter() - run_start)
                 if finished else None)
      raise Interrupted(partial, finished, g) from None
    finally:
      # Orbax's close waits on its writer threads: a Ctrl-C in there, or
      # anywhere in this wrap-up, would replace the outcome (every member
      # finished, or the ``Interrupted`` above with those that had) by a bare
      # ``KeyboardInterrupt``. It is held until the wrap-up is done.
      with _deferred_interrupt() as pressed:
        progress.close()
        if checkpoints is not None:
          if not ran:
            flush()
          checkpoints.close()
        if ran:
          results = tidy(g, time.perf_counter() - run_start)
  if pressed:  # while a finished run wrapped up: stop after it
    raise Interrupted(results, g, g)
  return results
