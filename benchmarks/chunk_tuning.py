r"""Does the tuned chunk width hold up against every width picked by hand?

For each workload (the default ablation grid; the grid-throughput benchmark's
deep_linear and mlp32 at G=256 and mlp128 at G=128), run as the default
engine runs it (the ablation in switched groups, on a CPU: widths are then a
group's), in one process run:

  hand-picked  the engine at each chunk width of the grid's ladder
               (``tuning.widths``) from ``--min_width`` to ``--max_width``,
               all compiled first, then run ``--repeats`` times interleaved
               (the fastest run counts);
  rule         the built-in rule's width (``tuning.rule_width``: the engine's
               default before tuning);
  auto         the engine's default (no flags), first with nothing of the
               workload compiled or cached: it times the rule's width and
               tunes if the run is long enough to pay for it
               (``tuning.TUNE_PAYS``), else climbs as far as that keeps
               choosing within ``tuning.FIRST_USE_S``; then
               its runs (reading the cache) timed beside the hand-picked
               widths';
  tune         the tuner forced (``chunk_size='tune'``): the widths it
               measured and the one it chose, then that width on fewer
               devices, whose runs are then timed with the default engine
               reading the cache.

It prints each width's run time, achieved matmul GFLOP/s and fraction of this
machine's float32 matmul peak (the best of its readings before and after each
workload in the same run: ``measure.best_peak``), the default's and the
tuner's choices, their run times against the best hand-picked width (issue
16's target: the default within 10%) and against the rule, and what choosing
cost on first use and after (timing, and compiling the widths the run does
not take: the run reuses its own width's compile):

  python -m benchmarks.chunk_tuning --repeats=3
"""

import atexit
import functools
import os
import shutil
import tempfile

from absl import app
from absl import flags

from benchmarks import measure
from rahimi_jax import cli

flags.DEFINE_list('workloads', ['ablation', 'deep_linear', 'mlp32', 'mlp128'],
                  'Workloads: ablation (the default ablation grid) or the '
                  'grid-throughput workloads.')
flags.DEFINE_integer('repeats', 3, 'Warm runs of each width, interleaved.')
flags.DEFINE_integer('min_width', 2, 'Narrowest hand-picked width.')
flags.DEFINE_integer('max_width', 64, 'Widest hand-picked width.')
cli.define_precision_flag()
flags.DEFINE_integer('peak_n', None, 'Matrix size of the peak measurement '
                     '(default: measure.default_peak_n()).')
flags.DEFINE_float('probe_s', 0.05, 'Seconds each timed stretch of the '
                   'tuner\'s probe lasts at least (tuning.MIN_PROBE_S).')
flags.DEFINE_integer('grid_size', None, 'G of the grid-throughput workloads '
                     '(default: deep_linear and mlp32 256, mlp128 128).')
flags.DEFINE_integer('steps', None, 'Steps of the grid-throughput workloads '
                     '(default: 200, mlp128 300).')

FLAGS = flags.FLAGS

SIZES = {'deep_linear': (256, 200), 'mlp32': (256, 200), 'mlp128': (128, 300)}


def _case(name: str):
  """(train config, grid, data, matmul FLOPs of the whole grid's run)."""
  import jax  # pylint: disable=g-import-not-at-top
  from rahimi_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  from benchmarks import workloads  # pylint: disable=g-import-not-at-top
  if name == 'ablation':
    from rahimi_jax.studies import ablation  # pylint: disable=g-import-not-at-top
    study = ablation.AblationConfig()
    config, grid = study.train_config(), study.grid()
    data = data_lib.get_dataset(study.dataset)()
    config = config.for_grid(grid)
    return config, grid, data, workloads.run_flops(config, grid, data) * len(
        grid)
  g, steps = SIZES[name]
  g, steps = FLAGS.grid_size or g, FLAGS.steps or steps  # checked >= 1
  w = workloads.WORKLOADS[name]
  data = jax.device_put(
      data_lib.get_dataset(w.dataset)(**dict(w.dataset_kwargs)))
  bench = workloads.Bench(name, g, steps, data)
  return bench.config, bench.grid, data, bench.flops_per_member() * g


def _run(config, grid, data, chunk_size=None, mode=None):
  """The default engine's run of the grid (one program; switched groups
  where ``engine.run`` switches); its engine metadata, the first group's
  chunk choice beside all groups' times."""
  from rahimi_jax import engine  # pylint: disable=g-import-not-at-top
  from rahimi_jax import program  # pylint: disable=g-import-not-at-top
  with program.run_options(progress=False, chunk_size=mode):
    info = engine.run(config, grid, data, partition=(),
                      chunk_size=chunk_size).metadata['engine']
  if 'parts' not in info:
    return info
  return {**info['parts'][0], 'compile_s': info['compile_s'],
          'run_s': info['run_s'], 'groups': info['groups']}


def _group_size(config, grid, data) -> tuple[int, int]:
  """(groups, members in the largest) the default engine runs ``grid`` in."""
  from rahimi_jax import engine  # pylint: disable=g-import-not-at-top
  switch = engine.auto_switch(grid, engine.cost_ratios(config, grid, data))
  sizes = [len(g) for g in engine._groups(grid, switch)]  # pylint: disable=protected-access
  return len(sizes), max(sizes)


def _run_s(config, grid, data, chunk_size=None) -> float:
  """A warm run's seconds (``_run``)."""
  return _run(config, grid, data, chunk_size)['run_s']


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  bad = [w for w in FLAGS.workloads if w not in ('ablation', *SIZES)]
  if bad:
    raise app.UsageError(f'Unknown workloads {bad}; accepted: ablation, '
                         f'{", ".join(SIZES)}.')
  for name in ('grid_size', 'steps', 'repeats', 'min_width', 'max_width'):
    value = FLAGS[name].value
    if value is not None and value < 1:
      raise app.UsageError(f'--{name}={value}; accepted: an integer >= 1.')
  if FLAGS.min_width > FLAGS.max_width:
    raise app.UsageError(f'--min_width={FLAGS.min_width} > --max_width='
                         f'{FLAGS.max_width}; accepted: min_width <= '
                         'max_width.')
  if not FLAGS.probe_s > 0:
    raise app.UsageError(f'--probe_s={FLAGS.probe_s}; accepted: > 0 seconds.')
  if 'ablation' in FLAGS.workloads and (FLAGS.grid_size or FLAGS.steps):
    print('note: --grid_size and --steps size the grid-throughput workloads; '
          'the ablation workload runs the default ablation grid.')
  # An empty cache (tuning, compiled programs): first use is what is timed.
  os.environ['RAHIMI_JAX_CACHE'] = cache = tempfile.mkdtemp(
      prefix='chunk_tuning_')
  atexit.register(shutil.rmtree, cache, ignore_errors=True)
  os.environ.pop('RAHIMI_JAX_CHUNK_SIZE', None)  # the default: auto
  from rahimi_jax import program  # pylint: disable=g-import-not-at-top
  program.use_host_cores()
  cli.apply_precision_flag()
  import jax  # pylint: disable=g-import-not-at-top
  from rahimi_jax import tuning  # pylint: disable=g-import-not-at-top
  tuning.MIN_PROBE_S = FLAGS.probe_s
  readings = [measure.measure_peak(FLAGS.peak_n)]
  summary, tables = [], []
  for name in FLAGS.workloads:
    config, grid, data, flops = _case(name)
    groups, g = _group_size(config, grid, data)  # widths are a group's
    hand = [w for w in tuning.widths(g)
            if FLAGS.min_width <= w <= FLAGS.max_width]
    from rahimi_jax import engine  # pylint: disable=g-import-not-at-top
    rule = tuning.rule_width(
        g, step_flops=engine.step_flops(config, grid, data))
    compile_s = {w: _run(config, grid, data, w)['compile_s'] for w in hand}
    # The default's first use: nothing of this workload compiled.
    program.clear_compiled()
    auto = _run(config, grid, data)['chunk_choice']  # does tuning pay?
    # Its later runs read the cache ('auto'), interleaved with the widths'.
    timed = measure.interleaved(
        {**{w: functools.partial(_run_s, config, grid, data, w) for w in hand},
         'auto': functools.partial(_run_s, config, grid, data)}, FLAGS.repeats)
    default_times = timed.pop('auto')
    times = timed
    first = _run(config, grid, data, mode='tune')  # measures, then runs
    again = _run(config, grid, data)  # reads the cache
    auto_times = [again['run_s']]
    for _ in range(FLAGS.repeats - 1):
      auto_times.append(_run(config, grid, data)['run_s'])
    readings.append(measure.measure_peak(FLAGS.peak_n))  # the host drifts
    choice = first['chunk_choice']
    best = min(hand, key=lambda w: min(times[w]))
    tuned_w = again['chunk_size']
    # The default engine's own runs at the tuned width, as many as each
    # hand-picked width's (pooled with that width's, a minimum over more
    # runs favoured it).
    tuned_s = min(auto_times)
    default_s = min(default_times)
    row = (name, auto['width'], tuned_w, best,
           default_s / min(times[best]), tuned_s / min(times[best]),
           tuned_s / min(times[rule]) if rule in times else float('nan'),
           auto['seconds'], choice['seconds'], again['chunk_choice']['seconds'])
    summary.append(row)
    switched = (f' in {groups} switched groups of {g}' if groups > 1
                else '')
    by_devices = ', '.join(f'{us:.1f} on {k}' for k, us in
                           choice['us_by_devices'].items())
    probe = choice['us_per_member_step']
    tables.append((
        f'\n== {name}: G={len(grid)}{switched}, {config.steps} steps; rule '
        f'width {rule} ==',
        [(w, compile_s[w], min(times[w]), flops / min(times[w]) / 1e9,
          probe.get(str(w), float('nan')),
          f'{"  <- best" if w == best else ""}'
          f'{"  <- rule" if w == rule else ""}') for w in hand],
        f'auto on first use: width {auto["width"]} ({auto["source"]}'
        f'{": " + auto["why"] if auto["why"] else ""}; {auto["seconds"]:.1f}'
        f' s), later runs {default_s:.2f} s = {row[4]:.3f}x the best '
        'hand-picked\n'
        f'tune: width {tuned_w} on {again["num_devices"]} device(s) '
        f'(us per member-step by device count: {by_devices or "one only"};'
        f' {choice["source"]}, then '
        f'{again["chunk_choice"]["source"]}), run {tuned_s:.2f} s = '
        f'{row[5]:.3f}x the best hand-picked ({best}), {row[6]:.3f}x the '
        f'rule; tuning took {row[8]:.1f} s, {row[9]:.1f} s after'))
  # The tables divide by the run's best reading: each timing is the fastest
  # of its runs too (``measure.best_peak``).
  measured = measure.best_peak(*readings)
  print(f'{measure.cpu_model()} ({tuning.host()["cpu_flags"]}), '
        f'{jax.local_device_count()} {jax.default_backend()} devices '
        f'({jax.devices()[0].device_kind}), jax {jax.__version__}; '
        f'{measure.peak_line(measured)}')
  for title, rows, choices in tables:
    print(title)
    print(f'{"width":>6}{"compile_s":>10}{"run_s":>8}{"GFLOP/s":>9}'
          f'{"of peak":>9}{"tuner us/member-step":>22}')
    for w, compile_s, run_s, gflops, probe, marks in rows:
      print(f'{w:>6}{compile_s:>10.2f}{run_s:>8.2f}{gflops:>9.1f}'
            f'{gflops / measured["peak"]:>9.1%}{probe:>22.1f}{marks}')
    print(choices)
  print(f'\n{measure.cpu_model()}: the default (auto) and the tuned width vs '
        'the best hand-picked (target for the default: <= 1.10x)')
  print(f'{"workload":<12}{"auto":>6}{"tuned":>6}{"best":>6}{"auto vs":>9}'
        f'{"tuned vs":>9}{"tuned vs":>9}{"auto_s":>8}{"tune_s":>8}{"then":>6}')
  print(f'{"":<30}{"best":>9}{"best":>9}{"rule":>9}')
  for (name, auto_w, tuned_w, best, auto_vs, vs_best, vs_rule, auto_s, tune_s,
       then) in summary:
    print(f'{name:<12}{auto_w:>6}{tuned_w:>6}{best:>6}{auto_vs:>8.3f}x'
          f'{vs_best:>8.3f}x{vs_rule:>8.3f}x{auto_s:>8.1f}{tune_s:>8.1f}'
          f'{then:>6.1f}')
  return 0


if __name__ == '__main__':
  app.run(main)
