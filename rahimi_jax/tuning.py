"""The member chunk a grid runs in, chosen by measuring on the running host.

A device runs a grid's members a chunk at a time, each chunk one ``vmap`` of
the member's training step. The best width of that ``vmap`` depends on the
host (cache sizes, vector width: for the same 64-128-10 MLP, chunks of 16 were
best on a 2-core AMD EPYC and chunks of 4 on a 2-core Intel Xeon, 1.5x
faster than 16 there) and on the program. So ``choose_chunk`` times the run
at the rule's width (``rule_width``) and, when the run is long enough for
tuning to pay (``TUNE_PAYS``), at the widths around it while they get faster
(``climb``), keeps the fastest, then times it on fewer of the devices (half,
a quarter, ... while that is faster: where the devices outnumber the cores
the run really gets, or its operations are big enough to use several cores
from one device); a shorter run, the same climb as far as it keeps
choosing within ``FIRST_USE_S``. It caches the choice per
(host, program) in ``cache_path()``: later runs of the program on this host
pay nothing and run the same chunks, hence the same bits (a ``vmap`` of
another width may round differently in the last bit; the device count
changes no bit). The width holds for every device count: a run on another
one takes it and measures only how many of its devices to use (cached per
device count).

What is timed (``Measure``; ``program._Probe``) is the run's own compiled
programs, whole passes of real members on every local device at once, as a
round of the run has them. It does not see what a run does between rounds
(a finish, transfers, the host's bookkeeping: overlapped with the next
round, dispatched ahead, but on a 2-core CPU the host's work takes its
share of the cores), which favours wider chunks in short runs.
"""

import dataclasses
import fcntl
import functools
import hashlib
import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from absl import logging
import jax
import numpy as np

from rahimi_jax import provenance

# Members per chunk of the built-in rule (``rule_width``), the default of a
# run too short for tuning to pay. On a CPU it depends on the member's size,
# its step's matmul FLOPs (``engine.step_flops``). Measured on two host kinds
# (WORKSPACE.md, "Chunk tuning"): members of 2.9-5.2 MFLOP a step (the
# default ablation, the 64-128-10 MLP) ran best in chunks of 7-16 on a 2-core
# AMD EPYC and 2-4 on a 2-core Intel Xeon, 7-8 within 1.08x of the best on
# both, 14-16 up to 1.16x; members of 0.24-0.32 MFLOP (the deep linear net,
# the 64-32-10 MLP) in chunks of 16-32 on the Xeon (32 up to 1.3x slower
# than 16 for the deep linear net there) and 32-64 on the EPYC (16 up to
# 1.17x slower): no width is within 10% on both, 16 stays (a short run that
# compiles quickly climbs from it, 32 first: ``FIRST_USE_S``). An accelerator
# wants wide vmaps: on an H200 at G=4096, one chunk of 4096 ran the 64-128-10
# MLP 1.14x and the deep linear net 1.5x faster than four of 1024 (the
# 64-32-10 MLP alike); a program that needs more than the memory budget gets
# narrower chunks anyway (``program.execute``).
CPU_CHUNK = 16
CPU_CHUNK_BIG = 8  # members of BIG_STEP_FLOPS or more
BIG_STEP_FLOPS = 1e6
ACCELERATOR_CHUNK = 4096

# How a grid picks its chunk when not told (``RunOptions.chunk_size``):
AUTO = 'auto'  # the width measured fastest on this host, when that pays
TUNE = 'tune'  # the width measured fastest on this host, measured now
RULE = 'rule'  # ``rule_width``, measuring nothing
MODES = (AUTO, TUNE, RULE)
TUNE_PAYS = 10  # 'auto' tunes a run estimated to take this x tuning or more
# A shorter run: 'auto' climbs from the rule's width (over
# ``ROUND_PROBE_ROUNDS`` stretches a width) as far as each next width is
# estimated to keep what choosing costs the run's first use within this many
# seconds (issue 16's budget: each new width compiled as the last was), and
# the run keeps the fastest. Programs that compile in about a second time a
# neighbour or two: the benchmark's deep linear net (G=256, a 0.2-s run),
# whose best width is host-specific (the rule's 16 ran 1.21-1.375x slower
# than 64 on a 2-core AMD EPYC; 64 ran 1.26x slower than 16 on a 2-core Intel
# Xeon), not the MLPs (~2 s a width).
FIRST_USE_S = 2.0
TIE = 0.03  # widths timed this close (relative) count as equal: the wider wins
MODE_ENV = 'RAHIMI_JAX_CHUNK_SIZE'  # the default mode, or a width

MIN_PROBE_S = 0.05  # a width's timed stretch of passes lasts at least this
PROBE_ROUNDS = 5  # timed stretches per width (fewer when a pass is longer)
ROUND_PROBE_ROUNDS = 2  # those of 'auto's first timing and a short run's climb
CACHE_FILE = 'chunk_tuning.json'


def widths(members: int) -> list[int]:
  """The chunk widths a grid of ``members`` may run in, ascending: those of a
  power of two of equal chunks (``ceil(members / 2**k)``), so that 1, 2, 4 or
  8 devices share the chunks without padding beyond one member per chunk."""
  if members < 1:
    raise ValueError(f'members must be >= 1; got {members}.')
  out, k = set(), 0
  while True:
    out.add(math.ceil(members / 2**k))
    if 2**k >= members:
      return sorted(out)
    k += 1


def rule_width(members: int, backend: str | None = None,
               step_flops: float | None = None) -> int:
  """The built-in rule: the widest of ``widths(members)`` of at most
  ``CPU_CHUNK`` members, ``CPU_CHUNK_BIG`` of a member whose step does
  ``step_flops >= BIG_STEP_FLOPS`` matmul FLOPs (``ACCELERATOR_CHUNK`` off
  the CPU). It depends on the grid's size, the member's and the backend,
  never on the device count."""
  if (backend or jax.default_backend()) != 'cpu':
    most = ACCELERATOR_CHUNK
  elif step_flops is not None and step_flops >= BIG_STEP_FLOPS:
    most = CPU_CHUNK_BIG
  else:
    most = CPU_CHUNK
  return max(w for w in widths(members) if w <= most)


def cheapest(costs: dict[int, float], tie: float = 0.0) -> int:
  """The widest width whose cost is within ``tie`` (relative) of the least:
  a wider chunk means fewer rounds of chunks, whose start and bookkeeping
  the probe does not time. None fits (every cost ``inf``): the narrowest,
  so that a climb goes on toward narrower widths."""
  least = min(costs.values())
  if math.isinf(least):
    return min(costs)
  return max(w for w, c in costs.items() if c <= least * (1 + tie))


def climb(ladder: Sequence[int], start: int,
          cost: Callable[[list[int]], dict[int, float]], tie: float = 0.0,
          affords: Callable[[list[int]], bool] = lambda widths: True
          ) -> dict[int, float]:
  """Searches ``ladder`` (ascending widths) outward from ``start`` for the
  cheapest width (``cheapest(costs, tie)``), one new width at a time.

  ``cost(widths) -> {width: cost}`` measures widths side by side: first
  ``start`` and its wider neighbour (at the ladder's end, its narrower),
  then one width further past whichever end of those measured is cheapest
  (the wider end first), with the cheapest so far measured again beside it
  (a host's speed drifts), until the cheapest is interior or at the
  ladder's end, or ``affords(widths)`` says measuring the next ones would
  not fit a budget. Exact for a cost that falls then rises along the
  ladder; a width beyond a worse one is not tried. (A new width at a time:
  two compiled side by side gained little, 1.03-1.35 s against 1.07-1.53 s
  one after the other for the deep linear net's ``advance`` on a 2-core AMD
  EPYC, and the budget can stop between them. The wider first: a
  narrower chunk pays more rounds' start and bookkeeping, which the probe
  does not time.)

  Returns:
    The cost of every width measured (none: the first did not fit).
  """
  ladder = list(ladder)
  i = ladder.index(start)
  first = ladder[i:i + 2] if i + 1 < len(ladder) else ladder[max(0, i - 1):]
  if not affords(first):
    return {}
  costs = dict(cost(first))
  while True:
    measured = [j for j, w in enumerate(ladder) if w in costs]
    best = ladder.index(cheapest(costs, tie))
    if best == measured[-1] and best < len(ladder) - 1:
      nxt = best + 1
    elif best == measured[0] and best > 0:
      nxt = best - 1
    else:
      return costs
    batch = [ladder[nxt], ladder[best]]
    if not affords(batch):
      return costs
    costs.update(cost(batch))


@functools.cache  # read for every run's cache key (~0.1 ms a read)
def cpu_model() -> str:
  """The host CPU's model name (``/proc/cpuinfo``, else ``platform``)."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or 'unknown CPU'


@functools.cache
def _cpu_flags() -> str:
  """The widest vector extensions the CPU reports (AVX-512 hosts and AVX2
  hosts of one model name differ)."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('flags'):
          have = set(line.split(':', 1)[1].split())
          return ','.join(x for x in ('avx512f', 'avx2', 'fma', 'amx_tile')
                          if x in have)
  except OSError:
    pass
  return platform.machine()


def _cgroup_cpus(root: str) -> float | None:
  """The CPUs' worth of time a cgroup quota under ``root`` grants this
  process (v2 ``cpu.max``, v1 ``cpu/cpu.cfs_quota_us`` over its period), or
  ``None``: no quota."""
  try:
    with open(os.path.join(root, 'cpu.max')) as f:
      quota, period = f.read().split()[:2]
    return None if quota == 'max' else int(quota) / int(period)
  except (OSError, ValueError):
    pass
  try:
    with open(os.path.join(root, 'cpu', 'cpu.cfs_quota_us')) as f:
      quota = int(f.read())
    with open(os.path.join(root, 'cpu', 'cpu.cfs_period_us')) as f:
      period = int(f.read())
    return quota / period if quota > 0 and period > 0 else None
  except (OSError, ValueError):
    return None


def usable_cores(cgroup_root: str = '/sys/fs/cgroup') -> int:
  """The cores this process can keep busy: those it may run on
  (``sched_getaffinity``), fewer under a container's CPU quota (a pod
  limited to 2 CPUs on a 64-core machine sees 64 and gets 2: one device per
  core there would time-slice 64 devices on 2 CPUs)."""
  cores = (len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity')
           else os.cpu_count() or 1)
  quota = _cgroup_cpus(cgroup_root)
  return max(1, min(cores, math.ceil(quota))) if quota else cores


def host() -> dict[str, Any]:
  """What a measured chunk holds for: the CPU, the devices, JAX's version."""
  devices = jax.local_devices()
  cores = usable_cores()
  return {'cpu': cpu_model(), 'cpu_flags': _cpu_flags(), 'cores': cores,
          'backend': jax.default_backend(),
          'device_kind': devices[0].device_kind, 'devices': len(devices),
          'jax': jax.__version__}


def signature(config: Any, data: Any) -> str:
  """SHA-256 of what the member's step computes: its train config (but the
  steps and the log interval, which change how long it runs, not its step),
  the data's shapes and dtypes, the float32 matmul precision it is traced at
  (``jax_default_matmul_precision``), the user code it runs (a model or
  option defined in a notebook: ``provenance.user_code_sha256``) and the
  host, but its device count: a width holds for every device count (the same
  chunks, the same bits)."""
  fields = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else {
      'config': config}
  components = getattr(config, 'components', None)
  fields['user code'] = provenance.user_code_sha256(
      components() if components else [config])
  for name in ('steps', 'log_every'):
    fields.pop(name, None)
  spec = [(tuple(np.shape(a)), str(np.asarray(a).dtype) if not hasattr(
      a, 'dtype') else str(a.dtype)) for a in jax.tree.leaves(data)]
  machine = {k: v for k, v in host().items() if k != 'devices'}
  text = repr((sorted(fields.items()), str(jax.tree.structure(data)), spec,
               jax.config.jax_default_matmul_precision, sorted(machine.items())))
  return hashlib.sha256(text.encode()).hexdigest()


def cache_path() -> str:
  """``<cache>/chunk_tuning.json``, ``<cache>`` as for generated datasets
  (``$RAHIMI_JAX_CACHE``, else ``~/.cache/rahimi_jax``)."""
  from rahimi_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  return os.path.join(data_lib.cache_dir(), CACHE_FILE)


def _read_cache() -> dict[str, Any]:
  try:
    with open(cache_path()) as f:
      cache = json.load(f)
    return cache if isinstance(cache, dict) else {}
  except (OSError, ValueError):  # absent or corrupt: measure afresh
    return {}


_UNWRITABLE: list[str] = []  # warned once per process


def _update_cache(key: str, update: Callable[[dict[str, Any]], dict[str, Any]]
                  ) -> None:
  """Replaces the cache's entry ``key`` with ``update(entry)`` of the entry
  read now, holding the cache's lock (``flock``) so that a concurrent run's
  write is merged, not lost; written atomically."""
  from rahimi_jax import storage  # pylint: disable=g-import-not-at-top
  path = cache_path()
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + '.lock', 'a') as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      cache = _read_cache()
      cache[key] = update(_entry(cache, key))
      storage.write_text(path, json.dumps(cache, indent=1))
  except OSError as e:  # a read-only home: the choice holds for this run
    if path not in _UNWRITABLE:
      _UNWRITABLE.append(path)
      logging.warning('Cannot write the chunk tuning cache %s (%s): a later '
                      'run measures again and may choose another width.',
                      path, e.strerror or e)


def _entry(cache: dict[str, Any], key: str) -> dict[str, Any]:
  """``cache[key]`` if its fields are what ``choose_chunk`` wrote (numbers
  as JSON numbers, widths and device counts as integers >= 1), else ``{}``:
  an entry written by hand or by other code is measured again."""

  def number(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
      raise TypeError(v)

  def count(v):
    if type(v) is not int or v < 1:  # pylint: disable=unidiomatic-typecheck
      raise TypeError(v)

  entry = cache.get(key, {})
  try:
    if not isinstance(entry, dict):
      raise TypeError(entry)
    timed = entry.get('us_per_member_step', {})
    for k, v in timed.items():
      count(int(k))
      number(v)
    if timed and 'width' not in entry:  # a short run's probe
      number(entry['probe_s'])
      number(entry.get('time_s', 0.0))
    for k in ('width', 'short_width'):
      if k in entry:
        count(entry[k])
    runs = entry.get('short_runs', {})
    for w in runs.values() if isinstance(runs, dict) else []:
      count(w)
    if not isinstance(runs, (dict, list)):
      raise TypeError(runs)
    for here in entry.get('by_devices', {}).values():
      if here['devices'] is not None:
        count(here['devices'])
      for k, v in here['us_by_devices'].items():
        count(int(k))
        number(v)
  except (KeyError, TypeError, ValueError, AttributeError):
    return {}
  return entry


@dataclasses.dataclass(frozen=True)
class Choice:
  """A grid's chunk width, its device count, and where they came from.

  Attributes:
    width: members per chunk.
    source: ``'tuned'`` (measured now), ``'cached'`` (measured by an earlier
      run on this host), ``'rule'`` (``rule_width``) or ``'given'``.
    seconds: what choosing added to the run: timing, and compiling the
      widths the run does not take.
    us_per_member_step: the run's time per member and step at each width
      measured, estimated from its timed passes (for ``'cached'``, when it
      was measured).
    why: why this width, where tuning did not run whole (a short run's
      climb, or the rule's width when choosing would not have paid).
    devices: how many of the run's devices to run chunks on (``None``: all
      of them).
    us_by_devices: for a tuned choice, the run's time per member and step at
      ``width`` on each device count measured.
  """
  width: int
  source: str
  seconds: float = 0.0
  us_per_member_step: dict[int, float] = dataclasses.field(
      default_factory=dict)
  why: str = ''
  devices: int | None = None
  us_by_devices: dict[int, float] = dataclasses.field(default_factory=dict)

  def record(self) -> dict[str, Any]:
    """For the results' metadata."""
    return {'width': self.width, 'source': self.source,
            'seconds': self.seconds, 'why': self.why, 'devices': self.devices,
            'us_per_member_step': {str(k): v for k, v in
                                   self.us_per_member_step.items()},
            'us_by_devices': {str(k): v for k, v in
                              self.us_by_devices.items()}}


class Measure(Protocol):
  """Times a run at chunk widths (``program._Probe``)."""

  compile_s: dict[int, float]  # per width: what compiling its programs took
  # per width: what they took when built, now or earlier in this process
  # (loaded from the compilation cache: the compiling that spared)
  cost_s: dict[int, float]
  next_compile_s: float  # what compiling another width should take

  def __call__(self, widths: Sequence[int], devices: int | None = None,
               rounds: int = ...) -> dict[int, float]:
    """Seconds per member-step of the whole run at each of ``widths`` on the
    first ``devices`` of its devices (``None``: all), timed over ``rounds``
    interleaved stretches (default ``PROBE_ROUNDS``); a width whose programs
    do not fit is left out."""


def member_step_flops(config, data, count: Callable[[], float]) -> float:
  """``count()``, a member's step's matmul FLOPs (traced: ~0.6 s for the
  default ablation's relaxed step), remembered per program (``signature``)
  and code (``remembered``)."""
  return remembered(f'step_flops {signature(config, data)}',
                    lambda: float(count()))


_REMEMBERED: dict[str, Any] = {}


def remembered(key: str, compute: Callable[[], Any]) -> Any:
  """``compute()`` (JSON-able), remembered under ``key`` in this process and
  in ``cache_path()``, for the code that computed it (``provenance.code_sha256``)."""
  key = f'{key} code {provenance.code_sha256()}'
  if key not in _REMEMBERED:
    entry = _read_cache().get(key)
    if not isinstance(entry, dict) or 'value' not in entry:
      entry = {'value': compute()}
      _update_cache(key, lambda _: entry)
    _REMEMBERED[key] = entry['value']
  return _REMEMBERED[key]


def check_mode(mode: str | int) -> str | int:
  """``mode`` if it is one of ``MODES`` or a width >= 1; else
  ``ValueError`` naming the accepted ones."""
  if mode in MODES or (isinstance(mode, (int, np.integer)) and
                       not isinstance(mode, bool) and mode >= 1):
    return mode
  raise ValueError(f'chunk size {mode!r}: accepted are {", ".join(MODES)} '
                   'or an integer >= 1.')


def _run_key(config, members: int) -> str:
  return f'{members} members x {config.steps} steps'


def _nearest(ladder: Sequence[int], width: int) -> int:
  """The width of ``ladder`` nearest ``width`` (by ratio; the narrower of
  two as near): a width measured for another grid size."""
  return min(ladder, key=lambda w: (abs(math.log(w / width)), w))


def _short_runs(entry: dict[str, Any], rule: int) -> dict[str, int]:
  """The cached short runs of a program and the width each ran in (a list
  of runs: a cache written before short runs were timed, each at the
  rule's width)."""
  runs = entry.get('short_runs', {})
  if isinstance(runs, list):
    return {run: rule for run in runs}
  return {run: int(w) for run, w in runs.items()}


def _finite_us(costs: dict[int, float]) -> dict[int, float]:
  """Seconds per member-step as microseconds, for the cache and the
  results' metadata; a width that did not fit (``inf``) left out."""
  return {w: round(c * 1e6, 3) for w, c in sorted(costs.items())
          if math.isfinite(c)}


def fewer_devices(width: int, most: int, cost_all: float,
                  measure: Measure, tie: float = TIE) -> dict[int, float]:
  """The run's cost at ``width`` on ``most`` devices (``cost_all``, measured
  already) and on half as many, a quarter, ... measured while each is the
  cheapest so far (``cheapest(costs, tie)``: more devices win a tie).

  Returns:
    The cost of every device count measured.
  """
  costs, k = {most: cost_all}, most
  while k > 1 and cheapest(costs, tie) == k:
    k //= 2
    costs[k] = measure([width], k).get(width, math.inf)
  return costs


def choose_chunk(config, grid, data, *, mode: str | int = AUTO,
                 most: int | None = None,
                 measure: Measure | None = None, devices: int = 1,
                 step_flops: float | None = None,
                 groups: Sequence[int] | None = None) -> Choice:
  """The chunk width (and device count) a grid of ``config`` runs in on
  this host.

  ``'auto'``: the width tuned earlier for this (host, program), from the
  cache; else, when the run is long enough that tuning costs at most
  ``1 / TUNE_PAYS`` of it (estimated from the rule's width, timed now or
  earlier), the fastest width measured now (``climb`` from the rule's
  width), and the fewest devices no slower at that width
  (``fewer_devices``), cached for every later run of the program; else the
  fastest of the widths that climb measures while each next one is
  estimated to keep choosing within ``FIRST_USE_S`` (cached for the
  program: its other short runs take it too, at the nearest width of their
  grid), else (none fits) the rule's width, on every device, either
  cached for this run's grid size and steps (so the same command runs the
  same chunks again, also after a longer run of the program tuned it; a
  ``'tune'`` resets that).
  ``'tune'``: measure now, whatever the run's length. ``'rule'``:
  ``rule_width``. An integer: that width.

  Args:
    config: the ``train.TrainConfig`` of the run (``None``: not a
      ``make_train`` run; the rule).
    grid: its grid.
    data: its data.
    mode: ``'auto'``, ``'tune'``, ``'rule'`` or a width >= 1.
    most: the widest chunk allowed (a member batch cap).
    measure: ``measure(widths) -> {width: seconds per member-step}`` of the
      run at each width (one that does not fit left out), with
      ``compile_s``, ``{width: seconds}`` of what it compiled
      (``program._Probe``: the run's own programs, so the chosen width's
      compile is the run's). ``None``: the rule.
    devices: the run's device count (``fewer_devices`` tries fewer).
    step_flops: a member's step's matmul FLOPs, for ``rule_width``
      (``member_step_flops``; ``None``: unknown).
    groups: the sizes of the run's groups of members, each chunked like
      ``grid`` and run in the same rounds (default ``[len(grid)]``): the
      run's length and chunks (``measure`` times the whole run's rounds).

  Returns:
    The ``Choice``; its ``seconds`` leave out compiling the chosen width,
    which the run needs anyway.
  """
  g = len(grid)
  check_mode(mode)
  if not isinstance(mode, str):
    return Choice(min(int(mode), g), 'given')
  if mode == RULE or config is None or measure is None:
    return Choice(min(rule_width(g, step_flops=step_flops), most or g), RULE)
  ladder = [w for w in widths(g) if w <= (most or g)]
  rule = max(w for w in ladder if w <= rule_width(g, step_flops=step_flops))
  if len(ladder) == 1:
    return Choice(rule, RULE)
  groups = list(groups or [g])
  total = sum(groups)
  key, run = signature(config, data), _run_key(config, total)
  entry = _entry(_read_cache(), key)
  timed = {int(k): v for k, v in entry.get('us_per_member_step', {}).items()}
  short_runs = _short_runs(entry, rule)
  # A run too short to tune keeps its width when run again, even after a
  # longer run of the program tuned it: its chunks, hence its bits.
  if mode == AUTO and run in short_runs:
    width = _nearest(ladder, short_runs[run])  # within ``most``
    climbed = 'short_width' in entry and _nearest(
        ladder, int(entry['short_width'])) == width
    if width == rule and not climbed:
      return Choice(rule, RULE, 0.0, timed, 'cached: too short to tune')
    return Choice(width, 'cached', 0.0, timed, 'cached: a short run\'s climb')
  start = time.perf_counter()

  def spent(width):  # what choosing added to the run
    return max(0.0, time.perf_counter() - start -
               measure.compile_s.get(width, 0.0))

  def on_devices(width, cost_all=None):
    """The fewest devices no slower at ``width`` (``None``: all) and the
    cost on each device count measured; cached per device count."""
    # No device runs padding only.
    usable = min(devices, sum(math.ceil(n / width) for n in groups))
    if usable < 2:
      return None, {}
    if cost_all is None:
      cost_all = measure([width]).get(width, math.inf)
    costs = fewer_devices(width, usable, cost_all, measure)
    count = cheapest(costs, TIE)
    return (None if count == usable else count,
            _finite_us(costs))

  by_devices = entry.get('by_devices', {})
  if mode == AUTO and 'width' in entry:  # tuned for this program and host
    width = _nearest(ladder, int(entry['width']))
    seconds = 0.0
    if str(devices) not in by_devices:  # tuned on another device count
      count, costs = on_devices(width)
      by_devices = {**by_devices, str(devices): {'devices': count,
                                                 'us_by_devices': costs}}
      _update_cache(key, lambda fresh: {**fresh, 'by_devices': {
          **fresh.get('by_devices', {}), str(devices): by_devices[
              str(devices)]}})
      seconds = spent(width)
    here = by_devices[str(devices)]
    return Choice(width, 'cached', seconds, timed,
                  devices=here['devices'],
                  us_by_devices={int(k): v for k, v in
                                 here['us_by_devices'].items()})

  def measured(widths, rounds=PROBE_ROUNDS):  # one that does not fit: inf
    return {w: math.inf for w in widths} | measure(widths, rounds=rounds)

  if mode == AUTO:  # does tuning pay?
    if timed:  # timed by an earlier process
      probe_s = entry['probe_s']
      time_s = entry.get('time_s', 0.0)  # 0: a cache of older code
    else:
      # Only the run's length hangs on it: two stretches, as a round's.
      timed = {w: s * 1e6 for w, s in measure(
          [rule], rounds=ROUND_PROBE_ROUNDS).items()}
      time_s = spent(rule)  # timing a width, its chunks started
      # As if compiled now: the other widths are not in the compilation
      # cache, nor compiled in this process.
      probe_s = time_s + measure.cost_s.get(rule, 0.0)
    # The climb compiles and times ~3 more widths, one after another.
    tune_s = probe_s * 3
    # The rule's width does not fit (left out): the run's length is
    # unknown, and the climb must find a narrower width that fits.
    run_s = (min(timed.values()) * 1e-6 * total * config.steps if timed
             else math.inf)
    if run_s < TUNE_PAYS * tune_s:

      def affords(widths):
        """Whether measuring ``widths`` keeps what choosing costs the run
        (``spent``) within ``FIRST_USE_S``: each new one compiled as the
        last (``next_compile_s``; where this process compiled none, as the
        earlier process's whole probe of the rule's width), each timed as
        the rule's width was, less the compile of the width the run then
        takes (the least of them)."""
        new = [w for w in widths if w not in measure.compile_s]
        each = (measure.next_compile_s if measure.compile_s else
                probe_s - time_s)  # an earlier process's compile of the rule
        least = min([*measure.compile_s.values()] + [each] * bool(new))
        return (time.perf_counter() - start + len(new) * each +
                len(widths) * time_s - least) <= FIRST_USE_S

      why = f'run ~{run_s:.3g} s < {TUNE_PAYS} x tuning ~{tune_s:.2g} s'
      width, source, found = rule, RULE, {}
      if 'short_width' in entry:  # another short run's climb found it
        width, source = _nearest(ladder, int(entry['short_width'])), 'cached'
        why = f'a short run ({why}): the width an earlier climb measured'
      elif costs := climb(ladder, rule, functools.partial(
          measured, rounds=ROUND_PROBE_ROUNDS), TIE, affords):
        width, source = cheapest(costs, TIE), 'tuned'
        timed = _finite_us(costs)
        found = {'short_width': width}
        why = (f'a short run ({why}): {len(costs)} widths timed, choosing '
               f'within {FIRST_USE_S:g} s')
      else:
        why = (f'too short to tune: {why}; timing another width would take '
               f'choosing past {FIRST_USE_S:g} s')
      _update_cache(key, lambda fresh: {
          **fresh, 'us_per_member_step': timed, 'probe_s': probe_s,
          'time_s': time_s, 'host': host(), **found,
          'short_runs': {**_short_runs(fresh, rule), run: width}})
      return Choice(width, source, spent(width), timed, why)
  costs = climb(ladder, rule, measured, TIE)
  width = cheapest(costs, TIE)
  timed = _finite_us(costs)
  count, us_by_devices = (on_devices(width, costs[width])
                          if math.isfinite(costs[width]) else (None, {}))
  seconds = spent(width)
  # Tuned by 'auto' (a long run): earlier short runs keep their chunks.
  # Asked for ('tune'): every later 'auto' run takes the new width, on every
  # device count (their device choices were for the width before).
  _update_cache(key, lambda fresh: {
      'short_runs': _short_runs(fresh, rule) if mode == AUTO else {},
      'width': width, 'members': g, 'us_per_member_step': timed,
      'by_devices': {str(devices): {'devices': count,
                                    'us_by_devices': us_by_devices}},
      'seconds': seconds, 'host': host(),
      'when': time.strftime('%Y-%m-%dT%H:%M:%S')})
  return Choice(width, 'tuned', seconds, timed, devices=count,
                us_by_devices=us_by_devices)
