"""What grid_throughput measures besides each method's own timing.

The machine's float32 matmul peak (``measure_peak``), the process's peak memory
(``maxrss_mb``), and where a compiled program's device time goes per XLA
instruction (``profile_ops``, ``profile_a``).
"""

import json
import os
import resource
import sys
import time
from typing import Any, Callable

import numpy as np

from benchmarks.workloads import Bench


def maxrss_mb() -> float:
  """This process's peak resident memory so far (MB)."""
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return rss / 2**20 if sys.platform == 'darwin' else rss / 2**10


def default_peak_n() -> int:
  """The side of the peak's matmul: 2048 on a CPU; 8192 on an accelerator,
  where a 2048 product is too short to reach the card's rate."""
  import jax  # pylint: disable=g-import-not-at-top
  return 2048 if jax.default_backend() == 'cpu' else 8192


def measure_peak(n: int | None = None, reps: int = 5) -> dict[str, Any]:
  """Best GFLOP/s of an ``n x n`` float32 matmul (default ``default_peak_n``).

  ``jnp``: ``jnp.dot`` on the default device at the precision in effect
  (``provenance.matmul_precision``, recorded as ``precision``: the grid
  programs trace with the same); ``np``: ``np.dot`` on the host CPU.
  ``peak`` is the device's: the larger of the two on a CPU, ``jnp`` on an
  accelerator (the host's BLAS is another machine's rate).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  n = n or default_peak_n()
  rng = np.random.default_rng(0)
  a = rng.standard_normal((n, n), dtype=np.float32)
  b = rng.standard_normal((n, n), dtype=np.float32)
  ja, jb = jax.device_put(a), jax.device_put(b)
  dot = jax.jit(jnp.dot)

  def best(fn):
    fn()  # warm-up (and compile)
    times = []
    for _ in range(reps):
      start = time.perf_counter()
      fn()
      times.append(time.perf_counter() - start)
    return 2 * n**3 / min(times) / 1e9

  from rahimi_jax import provenance  # pylint: disable=g-import-not-at-top
  out = {'n': n, 'precision': provenance.matmul_precision(),
         'jnp': best(lambda: dot(ja, jb).block_until_ready()),
         'np': best(lambda: np.dot(a, b))}
  out['peak'] = (max(out['jnp'], out['np']) if jax.default_backend() == 'cpu'
                 else out['jnp'])
  return out


def peak_line(peak: dict[str, Any]) -> str:
  """One line naming what ``measure_peak`` measured."""
  return (f'float32 matmul peak ({peak["n"]}x{peak["n"]}, matmul precision '
          f'{peak["precision"]}, best of 5 after warm-up): jnp.dot '
          f'{peak["jnp"]:.1f} GFLOP/s, np.dot {peak["np"]:.1f} GFLOP/s (host) '
          f'-> peak {peak["peak"]:.1f} GFLOP/s')


# Instructions that only hold others (their time is their contents').
_CONTAINERS = ('while', 'call', 'conditional', 'tuple', 'get-tuple-element',
               'parameter', 'constant', 'bitcast')


def profile_ops(run: Callable[[], Any], hlo_text: str,
                top: int = 12) -> dict[str, Any]:
  """Device time per XLA instruction during ``run()``, from a profiler trace.

  Args:
    run: runs the compiled program once (already compiled and warm).
    hlo_text: the compiled program's HLO (``compiled.as_text()``), which
      names the instructions the trace times.
    top: how many of the costliest instructions to return.

  Returns:
    ``device_time``'s record of the trace, with ``wall_ms`` the run's wall
    time (busy well below it: the device waited).
  """
  import gzip  # pylint: disable=g-import-not-at-top
  import glob  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as tmp:
    jax.profiler.start_trace(tmp, create_perfetto_trace=True)
    try:
      start = time.perf_counter()
      run()
      wall_ms = 1e3 * (time.perf_counter() - start)
    finally:
      jax.profiler.stop_trace()
    paths = glob.glob(os.path.join(tmp, '**', '*.trace.json.gz'),
                      recursive=True)
    events = []
    for path in paths:
      with gzip.open(path) as f:
        events += json.load(f).get('traceEvents', [])
  return device_time(events, hlo_text, top) | {'wall_ms': wall_ms}


def device_time(events: list[dict[str, Any]], hlo_text: str,
                top: int = 12) -> dict[str, Any]:
  """Time per XLA instruction in a trace's events (Chrome trace format).

  A complete event (``ph == 'X'``) counts for the instruction its
  ``hlo_op`` argument names (a GPU kernel's), else the one its name is (a
  CPU thunk's); instructions that only hold others (``while``, ``call``,
  ...) do not count. A kernel on an accelerator (a process named
  ``/device:GPU...`` or ``/device:TPU...``) that names no instruction of
  ``hlo_text`` (a library's, a CUDA graph's, another program's) counts under
  its own name, opcode ``kernel``.

  Returns:
    ``{'ops': records, 'busy_ms'}``: records ``{op, opcode, shape, ms,
    calls, share}``, costliest first (``ms`` sums every device and call,
    ``share`` is of all counted time); ``busy_ms`` that total.
  """
  import re  # pylint: disable=g-import-not-at-top
  defs = {}
  for line in hlo_text.splitlines():
    m = re.match(r'\s*(?:ROOT )?%([\w.\-]+) = (\S+) ([\w\-]+)\(', line)
    if m:
      defs.setdefault(m.group(1), (m.group(3), m.group(2)))
  accelerator = {e.get('pid') for e in events
                 if e.get('ph') == 'M' and e.get('name') == 'process_name'
                 and re.search(r'/device:(GPU|TPU)', str(
                     (e.get('args') or {}).get('name', '')))}
  total_us, calls = {}, {}
  for e in events:
    if e.get('ph') != 'X':
      continue
    op = (e.get('args') or {}).get('hlo_op') or e.get('name')
    if op in defs:
      if defs[op][0] in _CONTAINERS:
        continue
    elif e.get('pid') in accelerator:
      defs.setdefault(op, ('kernel', ''))
    else:
      continue
    total_us[op] = total_us.get(op, 0.0) + e.get('dur', 0.0)
    calls[op] = calls.get(op, 0) + 1
  everything = sum(total_us.values()) or 1.0
  ranked = sorted(total_us, key=total_us.get, reverse=True)[:top]
  return {'ops': [{'op': n, 'opcode': defs[n][0], 'shape': defs[n][1],
                   'ms': total_us[n] / 1e3, 'calls': calls[n],
                   'share': total_us[n] / everything} for n in ranked],
          'busy_ms': sum(total_us.values()) / 1e3}


def profile_a(bench: Bench) -> dict[str, Any]:
  """``profile_ops`` of (a)'s program on ``bench`` (compiled by ``run_a``)."""
  from rahimi_jax import program  # pylint: disable=g-import-not-at-top
  from rahimi_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  bench.run_grid()  # compiled (cached) and warm
  compiled = program.compiled_programs(train_lib.make_train(bench.config))[-1]
  return profile_ops(bench.run_grid, compiled.as_text())


def cpu_model() -> str:
  """The host CPU's model name (named beside every number a benchmark prints)."""
  from rahimi_jax import tuning  # pylint: disable=g-import-not-at-top
  return tuning.cpu_model()
