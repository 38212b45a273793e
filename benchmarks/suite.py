"""The grid-throughput benchmark as a library: its options and its run.

``make_bench_config`` validates the options into a ``BenchConfig``;
``run_benchmark`` times every (workload, G, method) of it, prints the rows and
tables as it goes, and returns (and optionally writes) the records. The
launcher, ``python -m benchmarks.grid_throughput``, is flags around these two.
"""

import os
from typing import Any, NamedTuple

import numpy as np

from benchmarks import measure
from benchmarks import methods as methods_lib
from benchmarks import report
from benchmarks import torch_methods
from benchmarks import workloads as workloads_lib


class BenchConfig(NamedTuple):
  regime: str
  workloads: tuple[str, ...]
  grid_sizes: tuple[int, ...]
  methods: tuple[str, ...]
  steps: int
  loop_members_cap: int
  peak_n: int | None  # None: measure.default_peak_n()
  tolerance: float
  json_out: str | None
  torch_threads: int = 0
  chunk_size: int | str | None = None  # a width, 0, or a tuning mode
  profile: bool = False
  repeats: int = 1  # runs of each method; the fastest counts
  profile_dir: str | None = None  # keeps each workload's trace and HLO


def make_bench_config(*, regime: str, grid_sizes, methods, steps=None,
                      workloads=None, loop_members_cap=16, peak_n=None,
                      tolerance=1e-5, json_out=None,
                      torch_threads=0, chunk_size=None,
                      profile=False, repeats=1,
                      profile_dir=None) -> BenchConfig:
  """Validates the options; raises ``ValueError`` naming the bad value."""
  if regime not in workloads_lib.REGIMES:
    raise ValueError(f'Unknown regime {regime!r}; accepted: '
                     f'{", ".join(workloads_lib.REGIMES)}.')
  regime_workloads, default_steps = workloads_lib.REGIMES[regime]
  workloads = tuple(workloads or regime_workloads)
  for w in workloads:
    if w not in regime_workloads:
      raise ValueError(f'Unknown workload {w!r} for regime {regime!r}; '
                       f'accepted: {", ".join(regime_workloads)}.')
  sizes = []
  for g in grid_sizes:
    try:
      sizes.append(int(g))
    except ValueError:
      raise ValueError(f'grid_sizes: {g!r} is not an integer.') from None
  if not sizes or min(sizes) < 1 or len(set(sizes)) != len(sizes):
    raise ValueError(f'grid_sizes must be distinct integers >= 1; got {sizes}.')
  methods = tuple(methods)
  bad = [m for m in methods if m not in methods_lib.METHODS]
  if bad or not methods:
    raise ValueError(f'Unknown methods {bad}; accepted: '
                     f'{", ".join(methods_lib.METHODS)}.')
  if len(set(methods)) != len(methods):
    raise ValueError(f'methods listed twice: {list(methods)}.')
  steps = default_steps if steps is None else steps
  for name, value in (('steps', steps), ('loop_members_cap', loop_members_cap),
                      ('peak_n', peak_n), ('repeats', repeats)):
    if name == 'peak_n' and value is None:  # measure.default_peak_n()
      continue
    if not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f'{name} must be a positive integer; got {value!r}.')
  if not isinstance(torch_threads, (int, np.integer)) or torch_threads < 0:
    raise ValueError(f'torch_threads must be an integer >= 0; got {torch_threads!r}.')
  if isinstance(chunk_size, str) and chunk_size.isdigit():
    chunk_size = int(chunk_size)
  if chunk_size is not None and chunk_size not in ('auto', 'tune', 'rule') and (
      not isinstance(chunk_size, (int, np.integer)) or chunk_size < 0):
    raise ValueError(f'chunk_size must be auto, tune, rule or an integer >= 0;'
                     f' got {chunk_size!r}.')
  if not tolerance > 0:
    raise ValueError(f'tolerance must be > 0; got {tolerance}.')
  if profile_dir and not profile:
    raise ValueError(f'profile_dir={profile_dir!r} keeps the traces of '
                     '--profile, which is off: add --profile or drop it.')
  if json_out is not None:
    directory = os.path.dirname(os.path.abspath(json_out))
    if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
      raise ValueError(f'json_out: directory {directory!r} is not writable.')
  # Methods in canonical order, (a) first: the others are compared with it.
  methods = tuple(m for m in methods_lib.METHODS if m in methods)
  return BenchConfig(regime, workloads, tuple(sorted(sizes)), methods,
                     int(steps), int(loop_members_cap),
                     None if peak_n is None else int(peak_n),
                     float(tolerance), json_out, int(torch_threads),
                     chunk_size if chunk_size is None or isinstance(
                         chunk_size, str) else int(chunk_size),
                     bool(profile), int(repeats), profile_dir or None)


def fastest_of(runner, repeats: int):
  """``runner`` run ``repeats`` times, its fastest run's seconds kept: a
  host's speed drifts within a benchmark run, and every method, the
  engine's and the usual ways', gets the same chances. The rest is the
  first run's: its compile (later runs may find their programs compiled:
  the engine keeps them) and its chunk choice."""
  def run(bench, members):
    first, *more = [runner(bench, members) for _ in range(repeats)]
    return first._replace(run_s=min(t.run_s for t in (first, *more)))
  return run


def _torch_at_better_threads(torch, runner, bench, members):
  """``runner(bench, members)`` at torch's default threads and at one, the
  faster kept, with torch left at its thread count (its record names it):
  on a shared host the default's OpenMP threads can stall on tiny ops (up to
  80x here), on a quiet one they may help a wide member."""
  default = torch.get_num_threads()
  runs = []
  for threads in sorted({default, 1}, reverse=True):
    torch.set_num_threads(threads)
    runs.append((runner(bench, members), threads))
  timing, threads = min(runs, key=lambda r: r[0].run_s)
  torch.set_num_threads(threads)
  other = ', '.join(f'{n} threads: {t.run_s:.3g} s' for t, n in runs
                    if n != threads)
  return timing._replace(note='; '.join(filter(None, [
      timing.note, other and f'faster than {other}'])))


def run_benchmark(cfg: BenchConfig, out=print) -> list[dict[str, Any]]:
  """Runs every (workload, G, method) of ``cfg``; returns the records."""
  import jax  # pylint: disable=g-import-not-at-top
  from rahimi_jax import data as data_lib  # pylint: disable=g-import-not-at-top

  device = f'{jax.devices()[0].device_kind} x{jax.local_device_count()}'
  out(f'grid_throughput: regime={cfg.regime} workloads={",".join(cfg.workloads)}'
      f' G={",".join(map(str, cfg.grid_sizes))} methods={",".join(cfg.methods)}'
      f' steps={cfg.steps}; each method\'s fastest of {cfg.repeats} run(s)')
  out(f'device: {device}; host CPUs: {os.cpu_count()} ({measure.cpu_model()}); '
      f'jax {jax.__version__}')
  methods = list(cfg.methods)
  torch_wanted = [m for m in methods if m in methods_lib.TORCH_METHODS]
  if torch_wanted:
    torch, why = torch_methods.import_torch()
    if torch is None:
      out(f'SKIPPING methods {",".join(torch_wanted)} (PyTorch): torch is not '
          f'importable ({why}). Install it with: pip install -r '
          'requirements-bench.txt')
      methods = [m for m in methods if m not in methods_lib.TORCH_METHODS]
    else:
      default_threads = torch.get_num_threads()
      if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
      where = ('' if jax.default_backend() == 'cpu' else
               f'; torch runs on the CPU, rahimi_jax on {jax.default_backend()}')
      out(f'torch {torch.__version__}, ' + (
          f'{cfg.torch_threads} threads' if cfg.torch_threads else
          f'each row at the faster of its default {default_threads} threads '
          'and 1 (the row names it)') + where)
  peak = measure.measure_peak(cfg.peak_n)
  out(measure.peak_line(peak))
  out('rows print as they run, their %peak against the readings so far; '
      'each workload\'s scaling table divides by the best reading of the run '
      'up to it (the host drifts)')
  loop_methods = [m for m in methods_lib.LOOP_METHODS if m in methods]
  if loop_methods and max(cfg.grid_sizes) > cfg.loop_members_cap:
    out(f'Loop methods ({",".join(loop_methods)}) '
        f'time at most {cfg.loop_members_cap} evenly spaced members and '
        'extrapolate run time linearly to G; (e) runs all members in one vmap.')

  records: list[dict[str, Any]] = []
  for name in cfg.workloads:
    w = workloads_lib.WORKLOADS[name]
    dataset = data_lib.get_dataset(w.dataset)(**dict(w.dataset_kwargs))
    dataset = jax.device_put(dataset)  # once, so no method pays transfers
    out(f'\n== {name}: {w.about}; {cfg.steps} steps, sgd, lr geomspace'
        f'{w.lr_range}, Seeds((0,)) ==')
    for g in cfg.grid_sizes:
      bench = workloads_lib.Bench(name, g, cfg.steps, dataset, cfg.chunk_size)
      out(f'-- G={g}: {bench.flops_per_member() / 1e6:.2f} MFLOP per run '
          f'(batch {bench.batch}) --')
      a_record, a_loss = None, None
      for method in methods:
        members = methods_lib.members_to_time(method, g, cfg.loop_members_cap)
        both = method in methods_lib.TORCH_METHODS and not cfg.torch_threads
        runner = fastest_of(methods_lib.RUNNERS[method], cfg.repeats)
        t = (_torch_at_better_threads(torch, runner, bench, members) if both
             else runner(bench, members))
        rec = report.make_record(bench, method, t, peak, a_record, a_loss,
                                 device, regime=cfg.regime,
                                 tolerance=cfg.tolerance)
        if both:  # the record named the kept setting; the next row starts over
          torch.set_num_threads(default_threads)
        if method == 'a':
          a_record, a_loss = rec, np.asarray(t.final_train_loss)
        records.append(rec)
        out(report.format_row(rec))
        if rec.get('agrees_with_a') is False:
          out(f'FLAG: (a) and ({method}) final train_loss differ by '
              f'{rec["max_abs_diff_vs_a"]:.3g} > '
              f'{methods_lib.tolerance(method, cfg.tolerance):g}')
      if cfg.profile and g == max(cfg.grid_sizes) and a_record is not None:
        a_record['profile'] = measure.profile_a(
            bench, cfg.profile_dir and os.path.join(cfg.profile_dir, name))
        if (jax.default_backend() == 'cpu' and
            any(m in methods_lib.TORCH_METHODS for m in methods)):
          measure.torch_product_rates(a_record['profile'])  # torch imported
        out(f'\n(a) at G={g}: device time per XLA instruction (all devices '
            f'and calls; top {len(a_record["profile"]["ops"])}):')
        out(report.format_profile(a_record['profile']))
      if cfg.json_out:
        report.write_json(cfg.json_out, records)
    # Read again after each workload; its table and records divide by the
    # run's best reading (the host drifts: ``measure.best_peak``).
    peak = measure.best_peak(peak, measure.measure_peak(cfg.peak_n))
    records = [report.with_peak(r, peak) if r['workload'] == name else r
               for r in records]
    out(f'\nread again: {measure.peak_line(peak)}; the table below divides '
        'by it')
    if cfg.json_out:
      report.write_json(cfg.json_out, records)
    out(f'\n== scaling table: {name} on {measure.cpu_model()}, {device} '
        f'(regime {cfg.regime}, {cfg.steps} steps; '
        'a_x_run = run_s(method) / run_s(a), a_x_total with compile_s: '
        'the first call\'s setup, compile and warm-up) ==')
    out(report.scaling_table(records, name))
  for method in methods[1:]:
    recs = [r for r in records
            if r['method'] == method and 'max_abs_diff_vs_a' in r]
    if recs:
      tol = methods_lib.tolerance(method, cfg.tolerance)
      bad = any(not r['agrees_with_a'] for r in recs)
      out(f'(a) vs ({method}) final train_loss: max |diff| = '
          f'{max(r["max_abs_diff_vs_a"] for r in recs):.3g} '
          f'({"FLAG: above" if bad else "within"} {tol:g})')
  out(f'peak RSS (process): {measure.maxrss_mb():.0f} MB')
  if cfg.json_out:
    out(f'wrote {len(records)} records to {cfg.json_out}')
  return records
