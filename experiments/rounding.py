r"""Simple experiment 2: the rounding-mode collapse, and what low precision costs.

The same model, data and seeds under float32 and under every (format, rounding
mode, placement) cell, in one grid program; per cell the final accuracy with
an interval over seeds and the paired effect against float32, collapses with
the step they happened, the mechanism of every collapse and gap (updates
rounded away, overflows and underflows per placement, the rounded optimizer
constants, the loss scale), and Shapley / ANOVA attribution over format x mode
x placement. Default (digits, MLP 64-64, SGD at 0.01 and Adam at 0.001,
bfloat16 and float16 x 3 modes x 6 placements, 5 seeds):

  python -m experiments.rounding --out=/tmp/rahimi_rounding

Loss scaling for float16 gradients:

  python -m experiments.rounding --optimizers=adam --learning_rates=0.001 \
      --precisions=float16 --placements=gradients \
      --loss_scalings=none,static,dynamic --loss_scale=65536
"""

import os

from absl import flags

from rahimi_jax import cli
from rahimi_jax import data
from rahimi_jax.components import placement
from rahimi_jax.components import precision
from rahimi_jax.studies import rounding

flags.DEFINE_string('dataset', 'digits',
                    f'Dataset: {" | ".join(data.DATASETS)}.')
flags.DEFINE_list('hidden', ['64', '64'], 'Hidden widths of the MLP.')
flags.DEFINE_list('optimizers', ['sgd', 'adam'], 'Optimizers, each at the '
                  'learning rate of the same position in --learning_rates.')
flags.DEFINE_list('learning_rates', ['0.01', '0.001'], 'One per optimizer.')
flags.DEFINE_list('precisions', ['bfloat16', 'float16'],
                  'Formats compared with float32 (always run): '
                  f'{precision.AXIS.options.accepted}.')
flags.DEFINE_list('roundings', list(precision.MODES),
                  f'Rounding modes: {", ".join(precision.MODES)}.')
flags.DEFINE_list('placements', list(placement.PLACES),
                  f'Where to round: {placement.AXIS.options.accepted}.')
flags.DEFINE_list('loss_scalings', ['none'], 'Loss scalings for the '
                  'placements with gradients: none, static, dynamic.')
flags.DEFINE_float('loss_scale', 2.0**15, 'Static loss scale; the dynamic '
                   "one's start.")
# --momentum, --weight_decay, --init_scale: one value for every cell.
cli.define_axis_flags(choices=False, grid=False, knobs=rounding.VALUE_KNOBS)
flags.DEFINE_integer('seeds', 5, 'Number of seeds (paired across cells; '
                     'a collapse is called the mode\'s doing from 5).')
flags.DEFINE_integer('steps', 500, 'Optimizer steps.')
flags.DEFINE_integer('batch_size', 64, 'Minibatch size (0: full batch).')
flags.DEFINE_integer('log_every', None, 'Steps between evaluations (default: '
                     '50, or --steps when fewer).')
flags.DEFINE_float('gap', 0.02, 'Explain every effect vs float32 whose mean '
                   'is at least this large (metric units).')
flags.DEFINE_string('out', '/tmp/rahimi_rounding', 'Directory for '
                    'results.csv, metadata.json and the PNG curves (replaced '
                    'whole).')
flags.DEFINE_bool('dry_run', False, 'Check the flags, print the grid, and '
                  'exit without running or writing anything.')
cli.define_precision_flag()  # --matmul_precision (float32 by default)
cli.define_switch_flag()  # the optimizers: a group per optimizer
cli.define_config_flag()  # --config=FILE.py or a results directory

FLAGS = flags.FLAGS


def main(argv):
  cli.start(argv, __name__)
  from rahimi_jax import storage  # pylint: disable=g-import-not-at-top

  def build():
    config = rounding.RoundingConfig(
        dataset=FLAGS.dataset,
        hidden=cli.parse_numbers('hidden', FLAGS.hidden, int, distinct=False),
        optimizers=tuple(FLAGS.optimizers),
        learning_rates=cli.parse_numbers('learning_rates',
                                         FLAGS.learning_rates,
                                         distinct=False),
        precisions=tuple(FLAGS.precisions), roundings=tuple(FLAGS.roundings),
        placements=tuple(FLAGS.placements),
        loss_scalings=tuple(FLAGS.loss_scalings), loss_scale=FLAGS.loss_scale,
        values=cli.axis_flag_values(choices=False,
                                    knobs=rounding.VALUE_KNOBS)[1],
        seeds=FLAGS.seeds, steps=FLAGS.steps, batch_size=FLAGS.batch_size,
        log_every=FLAGS.log_every, gap=FLAGS.gap)
    cli.check_switch(config.grid())
    return config

  def describe(config):
    grid = config.grid()
    cells = len(grid) // config.seeds
    return (f'{len(grid)} members in one program: {cells} cells '
            f'({len(config.optimizers)} optimizer(s) x [float32 + '
            f'{len(config.precisions)} precisions x {len(config.roundings)} '
            f'roundings x {len(config.placements)} placements'
            + (f' + loss scalings {",".join(config.loss_scalings[1:])} on '
               'the gradient placements' if len(config.loss_scalings) > 1
               else '') + f']) x {config.seeds} seeds')

  def write(config, res, directory):
    from rahimi_jax import plots  # pylint: disable=g-import-not-at-top
    storage.write(res, directory)
    metric = rounding.headline_metric(res)
    files = [storage.CSV, storage.METADATA]
    reference = res.columns['precision'] == 'float32'
    for opt in config.optimizers:
      for place in config.placements:
        mask = (res.columns['optimizer'] == opt) & (
            reference | (res.columns['placement'] == place))
        files.append(f'curves_{opt}_{place}.png')
        plots.curves(res.subset(mask), metric,
                     os.path.join(directory, files[-1]), log_y=False,
                     title=f'{opt}, rounding at {place}: {metric}, '
                     + plots.mean_words(False),
                     label_of=lambda c: ('float32 (reference)'
                                         if c['precision'] == 'float32'
                                         else None))
    info = res.metadata['engine']
    return '\n'.join([
        f'compile {info["compile_s"]:.1f}s, run {info["run_s"]:.1f}s on '
        f'{info["num_devices"]} device(s); ' + cli.switch_line(res.metadata),
        rounding.report(res, config.gap),
        f'wrote {FLAGS.out}/: {", ".join(files)}'])

  return cli.launch(build, describe, rounding.run, write, FLAGS.out,
                    dry_run=FLAGS.dry_run)


if __name__ == '__main__':
  cli.run_app(main)
