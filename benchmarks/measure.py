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


def measure_peak(n: int, reps: int = 5) -> dict[str, float]:
  """Best float32 GFLOP/s of an ``n x n`` matmul with ``jnp.dot`` and ``np.dot``."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  a = rng.standard_normal((n, n), dtype=np.float32)
  b = rng.standard_normal((n, n), dtype=np.float32)
  ja, jb = jax.device_put(a), jax.device_put(b)

  def best(fn):
    fn()  # warm-up (and compile)
    times = []
    for _ in range(reps):
      start = time.perf_counter()
      fn()
      times.append(time.perf_counter() - start)
    return 2 * n**3 / min(times) / 1e9

  out = {'jnp': best(lambda: jnp.dot(ja, jb).block_until_ready()),
         'np': best(lambda: np.dot(a, b))}
  out['peak'] = max(out['jnp'], out['np'])
  return out


# Instructions that only hold others (their time is their contents').
_CONTAINERS = ('while', 'call', 'conditional', 'tuple', 'get-tuple-element',
               'parameter', 'constant', 'bitcast')


def profile_ops(run: Callable[[], Any], hlo_text: str,
                top: int = 10) -> list[dict[str, Any]]:
  """Device time per XLA instruction during ``run()``, from a profiler trace.

  Args:
    run: runs the compiled program once (already compiled and warm).
    hlo_text: the compiled program's HLO (``compiled.as_text()``), which
      names the instructions the trace times.
    top: how many of the costliest instructions to return.

  Returns:
    Records ``{op, opcode, shape, ms, calls, share}``, costliest first;
    ``ms`` sums every device and call, ``share`` is of all instructions' time.
  """
  import gzip  # pylint: disable=g-import-not-at-top
  import glob  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  defs = {}
  for line in hlo_text.splitlines():
    m = re.match(r'\s*(?:ROOT )?%([\w.\-]+) = (\S+) ([\w\-]+)\(', line)
    if m:
      defs.setdefault(m.group(1), (m.group(3), m.group(2)))
  with tempfile.TemporaryDirectory() as tmp:
    jax.profiler.start_trace(tmp, create_perfetto_trace=True)
    try:
      run()
    finally:
      jax.profiler.stop_trace()
    paths = glob.glob(os.path.join(tmp, '**', '*.trace.json.gz'),
                      recursive=True)
    events = []
    for path in paths:
      with gzip.open(path) as f:
        events += json.load(f).get('traceEvents', [])
  total_us, calls = {}, {}
  for e in events:
    name = e.get('name')
    if (e.get('ph') == 'X' and name in defs
        and defs[name][0] not in _CONTAINERS):
      total_us[name] = total_us.get(name, 0.0) + e.get('dur', 0.0)
      calls[name] = calls.get(name, 0) + 1
  everything = sum(total_us.values()) or 1.0
  ranked = sorted(total_us, key=total_us.get, reverse=True)[:top]
  return [{'op': n, 'opcode': defs[n][0], 'shape': defs[n][1],
           'ms': total_us[n] / 1e3, 'calls': calls[n],
           'share': total_us[n] / everything} for n in ranked]


def profile_a(bench: Bench) -> list[dict[str, Any]]:
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
