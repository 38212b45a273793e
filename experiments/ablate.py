r"""Ablation grid: every combination of components trained in one XLA program.

Default (digits, MLP, 3 optimizers x 3 norms x 3 inits x 4 seeds):

  python -m experiments.ablate --out=/tmp/rahimi_ablate

A two-member check that a grid member is the same run as that config alone:

  python -m experiments.ablate --optimizers=sgd,adam --norms=none \
      --inits=lecun_normal --seeds=1 --steps=200
"""

import math
import os

from absl import flags

from rahimi_jax import cli
from rahimi_jax import data
from rahimi_jax import models

flags.DEFINE_string('dataset', 'digits',
                    f'Dataset: {" | ".join(data.DATASETS)}.')
flags.DEFINE_string('model', 'mlp', f'Model: {" | ".join(models.MODELS)}.')
flags.DEFINE_list('hidden', ['64', '64'], 'Hidden widths (comma list; for '
                  'cnn the conv layers\' channels); none: no hidden layer '
                  '(a linear model).')
# --optimizers, --norms, ...; --learning_rate, --momentum, ... (one flag per
# registered choice axis and value knob; --help lists the options).
cli.define_axis_flags()
flags.DEFINE_alias('lrs', 'learning_rate')
flags.DEFINE_integer('seeds', 4, 'Number of seeds.')
flags.DEFINE_integer('steps', 500, 'Optimizer steps.')
flags.DEFINE_integer('batch_size', 64, 'Minibatch size (0: full batch).')
flags.DEFINE_integer('log_every', None, 'Steps between evaluations (default: '
                     '50, or --steps when fewer).')
flags.DEFINE_string('out', '/tmp/rahimi_ablate', 'Directory for results.csv, '
                    'metadata.json and the PNG plots (replaced whole).')
flags.DEFINE_list('partition', ['auto'], 'Choice axes to split the grid by '
                  '(one program per option) instead of one relaxed program '
                  'that computes every option, e.g. optimizer; "none": one '
                  'program; "auto": the axes whose options differ in matmul '
                  'cost (engine.auto_partition).')
cli.define_switch_flag()
flags.DEFINE_bool('dry_run', False, 'Check the flags, print the grid, and '
                  'exit without running or writing anything.')
flags.DEFINE_float('memory_budget_mb', None, 'Most memory one program call may '
                   'use; the grid runs in member-batches beyond it.')
cli.define_precision_flag()  # --matmul_precision (float32 by default)
cli.define_config_flag()  # --config=FILE.py or a results directory

FLAGS = flags.FLAGS


def partition_line(choice) -> str:
  """How the grid was split into programs, and why (for ``'auto'``)."""
  axes = ','.join(choice['axes']) or 'none (one relaxed program)'
  if choice['mode'] != 'auto':
    return f'partition: {axes}'
  ratios = ', '.join(f'{a} {r:.2f}x' for a, r in choice['ratios'].items())
  return (f'partition: auto -> {axes}; relaxed step FLOPs over the members\' '
          f'own, per axis: {ratios or "no axis with several options"} '
          f'(split at >= {choice["threshold"]:g}x)')


def main(argv):
  cli.start(argv, __name__)
  from rahimi_jax import engine  # pylint: disable=g-import-not-at-top
  from rahimi_jax import stats  # pylint: disable=g-import-not-at-top
  from rahimi_jax import storage  # pylint: disable=g-import-not-at-top
  from rahimi_jax.studies import ablation  # pylint: disable=g-import-not-at-top

  def build():
    options, values = cli.axis_flag_values()
    config = ablation.AblationConfig(
        dataset=FLAGS.dataset, model=FLAGS.model,
        hidden=(() if FLAGS.hidden == ['none'] else cli.parse_numbers(
            'hidden', FLAGS.hidden, int, distinct=False)),
        options=options, values=values, seeds=FLAGS.seeds, steps=FLAGS.steps,
        batch_size=FLAGS.batch_size, log_every=FLAGS.log_every)
    grid = config.grid()
    budget = None
    if FLAGS.memory_budget_mb is not None:
      if not 0 < FLAGS.memory_budget_mb < math.inf:
        raise ValueError(f'memory_budget_mb must be finite and > 0; got '
                         f'{FLAGS.memory_budget_mb}.')
      budget = int(FLAGS.memory_budget_mb * 2**20)
    partition = engine.check_partition(grid, cli.partition_value())
    cli.check_switch(grid)
    return config, budget, partition

  def describe(built):
    grid = built[0].grid()
    return f'{len(grid)} members: ' + ' x '.join(
        f'{len(a.labels)} {a.name}' for a in grid.axes)

  def run(built):
    config, budget, partition = built
    return ablation.run(config, memory_budget_bytes=budget,
                        partition=partition)

  def write(built, res, directory):
    from rahimi_jax import plots  # pylint: disable=g-import-not-at-top
    del built
    storage.write(res, directory)
    info = res.metadata['engine']
    metric = ablation.headline_metric(res)
    files = [storage.CSV, storage.METADATA]
    varied = res.varied_axes
    for axis in varied:
      files.append(f'curves_{axis}.png')
      plots.curves(res, metric, os.path.join(directory, files[-1]), by=axis,
                   log_y=not stats.higher_is_better(metric))
    if varied:
      files.append('effects.png')
      plots.effects(res, metric, os.path.join(directory, files[-1]))
    return '\n'.join([
        f'compile {info["compile_s"]:.1f}s, run {info["run_s"]:.1f}s, '
        f'{info.get("programs", 1)} program(s), {info["member_batches"]} '
        f'member batch(es) of up to {info["member_batch_size"]} members on '
        f'{info["num_devices"]} device(s)',
        partition_line(res.metadata['partition']), cli.switch_line(res.metadata),
        res.summary_table(metric), res.effects_table(metric),
        *ablation.rounding_lines(res),
        f'wrote {FLAGS.out}/: {", ".join(files)}'])

  return cli.launch(build, describe, run, write, FLAGS.out,
                    dry_run=FLAGS.dry_run)


if __name__ == '__main__':
  cli.run_app(main)
