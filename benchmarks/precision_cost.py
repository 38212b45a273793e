r"""What the precision axis costs: a mixed-precision grid against float32 alone.

Times, in one process run, two grids of the same G members (default MLP on
digits, same steps and batch order), each one program through ``rj.run``:

  fp32   G seeds, float32 (the precision axes not varied);
  mixed  float32 + bfloat16 x {nearest-even, toward zero, stochastic} x
         {storage, gradients}: 7 cells of G / 7 seeds each (the parameters
         after every update, or the gradients before it, rounded; one
         ``quantize`` per array and place whatever the member's cell), as
         ``TrainConfig`` runs it by default, and again with the rounding
         events counted at every step (``rounding_events=True``: the
         rounding study's evidence); ``--switch`` as the launchers'
         (default ``auto``: the placements in switched groups on a CPU).

It prints each grid's warm run time per member-step (the fastest of
``--repeats`` interleaved runs), mixed / fp32 (issue 12's
target: <= 1.5x on CPU), and the achieved matmul FLOP/s of each against this
machine's float32 matmul peak measured in the same run:

  python -m benchmarks.precision_cost --members=70 --steps=500
"""


import functools

from absl import app
from absl import flags

from benchmarks import measure
from benchmarks import workloads
from rahimi_jax import cli

flags.DEFINE_integer('members', 70, 'Members per grid (a multiple of 7).')
flags.DEFINE_integer('steps', 500, 'Optimizer steps.')
cli.define_precision_flag()
flags.DEFINE_integer('peak_n', None, 'Matrix size of the peak measurement '
                     '(default: measure.default_peak_n()).')
flags.DEFINE_integer('repeats', 3, 'Warm runs of each grid, interleaved; the '
                     'fastest counts.')
cli.define_switch_flag()

FLAGS = flags.FLAGS
CELLS = 7  # float32 + 3 modes x 2 placements



def _run_s(config, grid, data, switch) -> float:
  """One warm run's seconds (``engine.run``, one program)."""
  from rahimi_jax import engine  # pylint: disable=g-import-not-at-top
  return engine.run(config, grid, data, partition=(),
                    switch=switch).metadata['engine']['run_s']


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if FLAGS.members < CELLS or FLAGS.members % CELLS:
    raise app.UsageError(f'--members must be a positive multiple of {CELLS}; '
                         f'got {FLAGS.members}.')
  from rahimi_jax import program  # pylint: disable=g-import-not-at-top
  program.use_host_cores()
  cli.apply_precision_flag()
  import rahimi_jax as rj  # pylint: disable=g-import-not-at-top
  from rahimi_jax import engine  # pylint: disable=g-import-not-at-top

  # Two evaluations a run (step 0 and the last): the per-step times below are
  # the run's over G x steps, evaluations included, so keep them few.
  config = rj.TrainConfig(steps=FLAGS.steps, log_every=FLAGS.steps)
  counting = rj.TrainConfig(steps=FLAGS.steps, log_every=FLAGS.steps,
                            rounding_events=True)
  data = rj.data.digits()
  g = FLAGS.members
  mixed = rj.Grid.union(
      rj.Grid(rj.Choice('precision', ('float32',)),
              rj.Choice('rounding', ('nearest_even',)),
              rj.Choice('placement', ('storage',)), rj.Seeds(g // CELLS)),
      rj.Grid(rj.Choice('precision', ('bfloat16',)),
              rj.Choice('rounding', ('nearest_even', 'toward_zero',
                                     'stochastic')),
              rj.Choice('placement', ('storage', 'gradients')),
              rj.Seeds(g // CELLS)))
  runs = {'fp32': (config, rj.Grid(rj.Seeds(g))), 'mixed': (config, mixed),
          'mixed + events': (counting, mixed)}
  try:  # the mixed grids' axes; fp32 has none to switch
    switched = {name: engine.check_switch(grid, cli.switch_value())
                if grid is mixed else () for name, (_, grid) in runs.items()}
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  measured = measure.measure_peak(FLAGS.peak_n)
  lines = {}
  for name, (cfg, grid) in runs.items():  # compile, first call
    res = engine.run(cfg, grid, data, partition=(), switch=switched[name])
    lines[name] = cli.switch_line(res.metadata)
  # Warm runs, interleaved (the fastest of each counts).
  times = measure.interleaved({
      name: functools.partial(_run_s, cfg, grid, data, switched[name])
      for name, (cfg, grid) in runs.items()}, FLAGS.repeats)
  # Read again after the runs; divide by the best reading (the host drifts).
  measured = measure.best_peak(measured, measure.measure_peak(FLAGS.peak_n))
  peak = measured['peak']
  rows = {}
  for name, (cfg, grid) in runs.items():
    run_s = min(times[name])
    flops = workloads.run_flops(cfg, grid, data) * g  # steps and evaluations
    rows[name] = (run_s, flops / run_s / 1e9)
  print(f'{measure.cpu_model()}; G={g}, {FLAGS.steps} steps, MLP of hidden '
        f'widths {"-".join(map(str, config.hidden))} on digits, batch '
        f'{config.batch_size}; {measure.peak_line(measured)}')
  print(f'{"grid":<17}{"run_s":>8}{"us/member-step":>16}{"GFLOP/s":>9}'
        f'{"of peak":>9}')
  for name, (run_s, gflops) in rows.items():
    print(f'{name:<17}{run_s:>8.2f}{run_s / g / FLAGS.steps * 1e6:>16.2f}'
          f'{gflops:>9.2f}{gflops / peak:>9.1%}')
  for name in ('mixed', 'mixed + events'):
    print(f'{name} / fp32 time per member-step: '
          f'{rows[name][0] / rows["fp32"][0]:.2f}x (target <= 1.5x)')
  print(f'mixed: {lines["mixed"]}')
  print('us/member-step: run time over G x steps, its 2 evaluations included; '
        'GFLOP/s: steps and evaluations')
  return 0


if __name__ == '__main__':
  app.run(main)
