"""grid_throughput's records and what it prints of them.

One JSON record per (workload, G, method) (``make_record``), its table row
(``format_row``), a workload's scaling table, (a)'s profile, and the JSON file.
"""

import json
from typing import Any

import numpy as np

from benchmarks import methods
from benchmarks.measure import maxrss_mb
from benchmarks.workloads import Bench
from benchmarks.workloads import Timing


def make_record(bench: Bench, method: str, t: Timing, peak: dict[str, float],
                a_record: dict[str, Any] | None, a_loss: np.ndarray | None,
                device: str, *, regime: str,
                tolerance: float) -> dict[str, Any]:
  """The JSON record of one method's ``t`` on ``bench``, compared with (a)'s.

  Args:
    bench: the workload at one grid size that ``t`` was measured on.
    method: a key of ``METHODS``.
    t: what the method measured on its members (loop methods: a subset, whose
      run time is extrapolated linearly to the whole grid).
    peak: ``measure.measure_peak``'s GFLOP/s (or ``measure.best_peak``'s).
    a_record: (a)'s record on ``bench``, for the speedups; None for (a) itself.
    a_loss: (a)'s final train losses [G], for the agreement check.
    device: what JAX runs on (the torch methods run on the CPU).
    regime: the benchmark's regime, recorded.
    tolerance: largest accepted |(a) - (b, c)| (torch: ``TORCH_TOLERANCE``).
  """
  g = len(bench)
  k = len(t.members)
  run_s = t.run_s * g / k  # linear extrapolation for loop methods
  flops = bench.flops_per_member()
  gflops = flops * g / run_s / 1e9
  rec = {
      'regime': regime, 'workload': bench.name, 'G': g, 'method': method,
      'method_name': methods.METHODS[method], 'steps': bench.steps,
      'batch_size': bench.batch, 'compile_s': float(t.compile_s),
      'run_s': float(run_s), 'run_s_measured': float(t.run_s),
      'members_timed': k, 'extrapolated': k < g,
      'ms_per_member': 1e3 * run_s / g, 'runs_per_s': g / run_s,
      'flops_per_member': flops, 'gflops': gflops,
      'matmul_precision': peak['precision'],
      'program_bytes': t.program_bytes, 'maxrss_mb': maxrss_mb(),
      'member_indices': [int(i) for i in t.members],
      'final_train_loss': [float(v) for v in t.final_train_loss],
      'device': 'cpu (torch)' if method in methods.TORCH_METHODS else device,
      'cpu': peak['cpu'],
      'note': t.note,
      'chunk_choice': t.chunk,
  }
  rec = with_peak(rec, peak)
  if method in methods.TORCH_METHODS:
    import torch  # pylint: disable=g-import-not-at-top
    rec['torch_threads'] = torch.get_num_threads()
  if a_record is not None:
    rec['speedup_a'] = rec['run_s'] / a_record['run_s']
    rec['speedup_a_total'] = ((rec['compile_s'] + rec['run_s']) /
                              (a_record['compile_s'] + a_record['run_s']))
  if a_loss is not None:
    diff = np.abs(np.asarray(t.final_train_loss) - a_loss[t.members])
    rec['max_abs_diff_vs_a'] = float(np.max(diff)) if len(diff) else 0.0
    rec['agrees_with_a'] = bool(
        np.all(diff <= methods.tolerance(method, tolerance)))
  return rec


def with_peak(rec: dict[str, Any], peak: dict[str, Any]) -> dict[str, Any]:
  """``rec`` with its peak and share of it from ``peak`` (``measure.best_peak``
  of the run's readings so far)."""
  return {**rec, 'peak_gflops': peak['peak'], 'peak_gflops_jnp': peak['jnp'],
          'peak_gflops_np': peak['np'],
          'peak_readings': peak.get('readings', [peak['peak']]),
          'pct_peak': 100 * rec['gflops'] / peak['peak']}


HEADER = (f'{"G":>5} {"method":<29}{"compile_s":>10}{"run_s":>9}'
          f'{"ms/member":>11}{"runs/s":>9}{"GFLOP/s":>9}{"%peak":>7}'
          f'{"a_x_run":>9}{"a_x_total":>10}  note')


def format_row(rec: dict[str, Any]) -> str:
  note = []
  if rec['extrapolated']:
    note.append(f'extrapolated from {rec["members_timed"]}/{rec["G"]} members')
  if 'max_abs_diff_vs_a' in rec and rec['method'] != 'a':
    flag = '' if rec['agrees_with_a'] else ' FLAG'
    note.append(f'|dloss vs a|={rec["max_abs_diff_vs_a"]:.1e}{flag}')
  if rec['note']:
    note.append(rec['note'])
  speed = (f'{rec["speedup_a"]:>9.2f}{rec["speedup_a_total"]:>10.2f}'
           if 'speedup_a' in rec else f'{"-":>9}{"-":>10}')
  label = f'{rec["method"]} {rec["method_name"]}'
  return (f'{rec["G"]:>5} {label:<29}{rec["compile_s"]:>10.2f}'
          f'{rec["run_s"]:>9.3f}{rec["ms_per_member"]:>11.3f}'
          f'{rec["runs_per_s"]:>9.1f}{rec["gflops"]:>9.2f}'
          f'{rec["pct_peak"]:>7.2f}{speed}  {"; ".join(note)}')


def scaling_table(records: list[dict[str, Any]], workload: str) -> str:
  rows = [r for r in records if r['workload'] == workload]
  lines = [HEADER, '-' * len(HEADER)]
  last_g = None
  for r in sorted(rows, key=lambda r: (r['G'], r['method'])):
    if last_g is not None and r['G'] != last_g:
      lines.append('')
    last_g = r['G']
    lines.append(format_row(r))
  a = sorted((r for r in rows if r['method'] == 'a'), key=lambda r: r['G'])
  if a:
    lines.append('')
    lines.append('(a) over G: ms/member ' + ' -> '.join(
        f'{r["ms_per_member"]:.3g} (G={r["G"]})' for r in a))
    lines.append('(a) over G: compile_s ' + ' -> '.join(
        f'{r["compile_s"]:.2f} (G={r["G"]})' for r in a))
    if any(r.get('chunk_choice') for r in a):
      lines.append('(a) over G: chunk width, devices (how chosen, seconds) '
                   + ' -> '.join(
                       f'{c["width"]}, {c.get("devices") or "all"} '
                       f'({c["source"]}, {c["seconds"]:.1f} s; G={r["G"]})'
                       for r in a if (c := r.get('chunk_choice'))))
    if any(r['program_bytes'] for r in a):
      lines.append('(a) over G: program MB ' + ' -> '.join(
          f'{(r["program_bytes"] or 0) / 2**20:.2f} (G={r["G"]})' for r in a))
  return '\n'.join(lines)


def write_json(path: str, records: list[dict[str, Any]]):
  """Writes ``records`` to ``path`` as a JSON list, atomically."""
  from rahimi_jax import storage  # pylint: disable=g-import-not-at-top
  storage.write_text(path, json.dumps(records, indent=1) + '\n')


def format_profile(profile: dict[str, Any]) -> str:
  """``measure.profile_ops``'s record as a table, busy and wall time first."""
  def rate(o, key):
    return f'{o[key]:>7.1f}' if key in o else f'{"":>7}'

  torch = any('torch_gflops' in o for o in profile['ops'])
  n = profile.get('devices', 1)
  busy, wall = profile['busy_ms'], profile['wall_ms']
  lines = [(f'device busy {busy:.1f} ms of the run\'s {wall:.1f} ms wall'
            if n == 1 else
            f'devices busy {busy:.1f} ms, summed over {n} devices, of the '
            f'run\'s {wall:.1f} ms wall ({busy / (n * wall):.0%} of their '
            'time)')
           + '; GFLOP/s: an instruction\'s matmul FLOPs over its time'
           + ('; torch: the same products as torch.einsum, one thread'
              if torch else ''),
           f'{"share":>6} {"ms":>9} {"calls":>6}  {"GFLOP/s":>7} '
           + (f'{"torch":>7} ' if torch else '')
           + f'{"opcode":<12} {"shape":<28} op']
  for o in profile['ops']:
    lines.append(f'{100 * o["share"]:>5.1f}% {o["ms"]:>9.1f} {o["calls"]:>6}  '
                 f'{rate(o, "gflops")} '
                 + (f'{rate(o, "torch_gflops")} ' if torch else '')
                 + f'{o["opcode"]:<12} {o["shape"][:28]:<28} {o["op"][:60]}')
  hidden = sum(o['share'] for o in profile['ops'] if o['opcode'] == 'kernel'
               and o['op'].startswith('command_buffer'))
  if hidden > 0.5:
    lines.append(f'{100 * hidden:.0f}% of the time is in CUDA graphs, which '
                 'hide their kernels: re-run with XLA_FLAGS='
                 '--xla_gpu_enable_command_buffer= for the time per '
                 'instruction.')
  return '\n'.join(lines)
