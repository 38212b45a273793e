"""Executing a grid as one compiled XLA program.

``execute(train_fn, grid, data)`` stacks the grid's knobs, compiles
``jit(vmap(train_fn, in_axes=(0, None)))`` once, and runs it. Members are
sharded over a one-axis ``Mesh`` of all local devices (a no-op on one device).
When the program for the whole grid would exceed the memory budget, the grid
runs in member-batches of one size through the same compiled program (the last
batch padded with copies of a real member, whose outputs are dropped).
"""

import collections
from collections.abc import Callable
import dataclasses
import functools
import math
import os
import threading
import time
from typing import Any

from absl import logging
import jax
import numpy as np

from rahimi_jax import grid as grid_lib
from rahimi_jax import provenance
from rahimi_jax import results as results_lib

MEMBER_AXIS = 'members'
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
    num: CPU devices wanted (default: one per core this process may use).
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
    num = (len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity')
           else os.cpu_count() or 1)
  jax.config.update('jax_num_cpu_devices', num)
  _weak_default = default
  return num


# Members per chunk when each CPU core is a device (use_host_cores). Measured
# on 2 cores at G=128-256: chunks of 8-32 beat whole-device vmaps by 1.0-1.3x
# (deep linear, MLPs 32 and 128 wide; WORKSPACE.md).
CPU_CHUNK = 16


def default_chunk_size(per_device: int, num_devices: int) -> int:
  """Members per chunk ``execute`` uses unless told (0: no chunks).

  On CPU with one device per core, chunks of about ``CPU_CHUNK`` members (as
  many equal chunks as needed, so padding stays under one member per chunk).
  Otherwise none: one CPU device spreads a whole-grid vmap's large matmuls
  over its cores (chunks made a deep linear grid 2.2x slower there), and an
  accelerator wants the widest vmap.
  """
  if (jax.default_backend() != 'cpu' or num_devices < 2
      or per_device <= CPU_CHUNK):
    return 0
  return math.ceil(per_device / math.ceil(per_device / CPU_CHUNK))


def _chunked(train_fn: Callable[..., Any], chunk: int | None):
  """``vmap(train_fn)``, or a ``lax.map`` over vmapped chunks of ``chunk``."""
  vmapped = jax.vmap(train_fn, in_axes=(0, None))
  if chunk is None:
    return vmapped

  def run_chunks(knobs, data):
    stacked = jax.tree.map(lambda a: a.reshape((-1, chunk) + a.shape[1:]), knobs)
    out = jax.lax.map(lambda k: vmapped(k, data), stacked)
    return jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), out)

  return run_chunks


# Compiled programs kept for reuse (a grid re-run, the benchmark's warm call):
# each holds its executable's memory, so a long session of many grids keeps
# only the most recent ones.
CACHE_SIZE = 32


@functools.lru_cache(maxsize=CACHE_SIZE)
def _program(train_fn: Callable[..., Any], num_devices: int,
             chunk: int | None):
  body = _chunked(train_fn, chunk)
  if num_devices == 1:
    return jax.jit(body)
  mesh = jax.sharding.Mesh(np.asarray(jax.local_devices()[:num_devices]),
                           (MEMBER_AXIS,))
  spec = jax.sharding.PartitionSpec(MEMBER_AXIS)
  # Each device runs its own members (no communication between members).
  return jax.jit(jax.shard_map(body, mesh=mesh,
                               in_specs=(spec, jax.sharding.PartitionSpec()),
                               out_specs=spec, check_vma=False))


def _spec(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)


def _key(tree):
  leaves, treedef = jax.tree.flatten(_spec(tree))
  return treedef, tuple((l.shape, str(l.dtype)) for l in leaves)


_COMPILED: collections.OrderedDict[Any, Any] = collections.OrderedDict()


def compile_program(train_fn, knobs, data, num_devices: int,
                    chunk: int | None = None):
  """The compiled grid program for these shapes (cached), and compile seconds."""
  key = (train_fn, num_devices, chunk, _key(knobs), _key(data))
  if key in _COMPILED:
    _COMPILED.move_to_end(key)
    return _COMPILED[key], 0.0
  start = time.perf_counter()
  compiled = _program(train_fn, num_devices, chunk).lower(knobs, data).compile()
  _COMPILED[key] = compiled
  while len(_COMPILED) > CACHE_SIZE:
    _COMPILED.popitem(last=False)
  return compiled, time.perf_counter() - start


def compiled_programs(train_fn) -> list[Any]:
  """The compiled grid programs of ``train_fn`` in the cache, least recently used first."""
  return [c for key, c in _COMPILED.items() if key[0] is train_fn]


def program_bytes(compiled) -> int | None:
  """Peak bytes of a compiled program (arguments, outputs and temporaries)."""
  stats = compiled.memory_analysis()
  if stats is None:
    return None
  return (stats.argument_size_in_bytes + stats.output_size_in_bytes +
          stats.temp_size_in_bytes - stats.alias_size_in_bytes)


def _batch_indices(n: int, batch: int) -> list[np.ndarray]:
  out = []
  for start in range(0, n, batch):
    idx = np.arange(start, min(start + batch, n))
    out.append(np.concatenate([idx, np.full(batch - len(idx), idx[-1])]))
  return out


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


def wait(outputs):
  """Blocks until ``outputs`` are computed, answering Ctrl-C at once.

  A blocking ``device_get`` holds Python's signal handling until the whole
  program has run. Here a helper thread blocks instead, and the main thread
  waits on an event, which a signal interrupts: ``KeyboardInterrupt`` gets
  through at once, and a finished program is noticed at once too (the
  computation itself goes on in the background until the process exits).
  """
  done = threading.Event()

  def block():
    try:
      jax.block_until_ready(outputs)
    finally:  # an error surfaces below, from device_get
      done.set()

  threading.Thread(target=block, daemon=True).start()
  while not done.wait(0.1):
    pass
  return jax.device_get(outputs)


def train_config_of(train_fn) -> dict[str, Any] | None:
  """The static config ``train.make_train`` closed over, as a dict, if any."""
  config = getattr(train_fn, 'config', None)
  return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else None


def execute(train_fn: Callable[..., Any], grid: grid_lib.Grid, data: Any, *,
            member_batch_size: int | None = None,
            memory_budget_bytes: int | None = None,
            num_devices: int | None = None,
            chunk_size: int | None = None,
            metadata: dict[str, Any] | None = None) -> results_lib.Results:
  """Trains every member of ``grid`` with one compiled program.

  Args:
    train_fn: pure ``train(knobs, data) -> outputs``; outputs are arrays of
      shape ``[L]`` (one per logged step, with a ``step`` entry) or ``[]``.
    grid: the grid of members.
    data: the dataset pytree, shared by all members.
    member_batch_size: members per program call (default: the whole grid, or
      fewer when the memory budget requires).
    memory_budget_bytes: the most memory one call may use (default: half a
      device's memory).
    num_devices: local devices to shard members over (default: all; never
      more than there are members).
    chunk_size: members vmapped together on a device; a device's members run
      as a ``lax.map`` over such chunks, so that one chunk's training state
      stays in cache. 0: all of a device's members at once. Default
      (``None``): ``default_chunk_size``.
    metadata: extra provenance to store with the results (beside the
      library's own: versions, devices, git state, the train config).

  Returns:
    Tidy ``Results``: one row per (member, logged step).

  Raises:
    Interrupted: on Ctrl-C, with the results of the member-batches that had
      finished.
  """
  start = time.perf_counter()
  g = len(grid)
  # No more devices than members: a device padded with a copy of a member
  # costs time (a grid of one on 2 CPU devices ran 1.5x slower than on one).
  num_devices = min(num_devices or jax.local_device_count(), g)
  if member_batch_size is not None and member_batch_size < 1:
    raise ValueError(f'member_batch_size must be >= 1; got {member_batch_size}.')
  if chunk_size is not None and chunk_size < 0:
    raise ValueError(f'chunk_size must be >= 0 (0: no chunks); got {chunk_size}.')
  budget = memory_budget_bytes or int(
      DEFAULT_MEMORY_FRACTION * device_memory_bytes())
  per_device = math.ceil(g / num_devices)
  if chunk_size is None:
    chunk_size = default_chunk_size(per_device, num_devices)
  chunk = chunk_size if chunk_size and chunk_size < per_device else None
  unit = num_devices * (chunk or 1)

  def round_up(b):
    return min(math.ceil(b / unit) * unit, math.ceil(g / unit) * unit)

  batch = round_up(member_batch_size or g)
  compiled, compile_s = compile_program(
      train_fn, grid.knobs(_batch_indices(g, batch)[0]), data, num_devices,
      chunk)
  need = program_bytes(compiled)
  if member_batch_size is None and need is not None and need > budget:
    per_member = need / batch
    batch = max(unit, round_up(int(budget // per_member)))
    logging.info('Grid of %d needs %.1f MB > budget %.1f MB; member-batches of %d.',
                 g, need / 2**20, budget / 2**20, batch)
    compiled, more = compile_program(
        train_fn, grid.knobs(_batch_indices(g, batch)[0]), data, num_devices,
        chunk)
    compile_s += more

  meta = {**provenance.provenance(), 'train_config': train_config_of(train_fn),
          **(metadata or {})}
  run_start = time.perf_counter()
  chunks = []
  batches = _batch_indices(g, batch)

  def info(run_s):
    return {
        'members': g,
        'member_batch_size': batch,
        'member_batches': len(batches),
        'num_devices': num_devices,
        'chunk_size': chunk,
        'program_bytes': need,
        'compile_s': compile_s,
        'run_s': run_s,
        'wall_s': time.perf_counter() - start,
    }

  def tidy(done, run_s):
    outputs = jax.tree.map(lambda *xs: np.concatenate(xs)[:done], *chunks)
    sub = grid if done == g else grid.subset(range(done))
    return results_lib.from_outputs(
        sub, outputs, metadata={**meta, 'engine': info(run_s)})

  try:
    for i, idx in enumerate(batches):
      chunks.append(wait(compiled(grid.knobs(idx), data)))
      logging.info('member-batch %d/%d done (%.1fs)', i + 1, len(batches),
                   time.perf_counter() - run_start)
  except KeyboardInterrupt:
    done = min(len(chunks) * batch, g)
    partial = tidy(done, time.perf_counter() - run_start) if done else None
    raise Interrupted(partial, done, g) from None
  return tidy(g, time.perf_counter() - run_start)
