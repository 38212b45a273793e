r"""Attribution: discrete Shapley values beside gate-based Aumann–Shapley credits.

Default (digits, MLP 64-64, 500 steps, 4 seeds): batch norm, momentum and an
orthogonal initialization, each switched off -> on:

  python -m experiments.attribute --out=/tmp/rahimi_attribute

  python -m experiments.attribute --gates=norm:none..layer,activation:relu..tanh \
      --metric=train_loss --nodes=8
"""

from absl import flags

from rahimi_jax import cli
from rahimi_jax import data

flags.DEFINE_string('gates', 'norm:none..batch,optimizer:sgd..momentum,'
                    'init:lecun_normal..orthogonal',
                    'Components to attribute: comma list of axis:off..on.')
flags.DEFINE_string('metric', 'test_loss',
                    'Final metric to attribute: test_loss | train_loss.')
flags.DEFINE_string('dataset', 'digits',
                    f'Dataset: {" | ".join(data.DATASETS)}.')
flags.DEFINE_list('hidden', ['64', '64'], 'Hidden widths.')
# --learning_rate, --momentum, ...: one value of each knob for every member.
cli.define_axis_flags(choices=False, grid=False)
flags.DEFINE_integer('seeds', 4, 'Seeds.')
flags.DEFINE_integer('steps', 500, 'Optimizer steps.')
flags.DEFINE_integer('batch_size', 64, 'Minibatch size.')
flags.DEFINE_integer('nodes', 8, 'Quadrature points on the gate path.')
flags.DEFINE_bool('dry_run', False, 'Check the flags, print the grid, and '
                  'exit without running or writing anything.')
flags.DEFINE_string('out', '/tmp/rahimi_attribute', 'Output directory.')
cli.define_precision_flag()  # --matmul_precision (float32 by default)
cli.define_switch_flag()  # the factorial grid's norm and optimizer
cli.define_config_flag()  # --config=FILE.py or a results directory

FLAGS = flags.FLAGS


def main(argv):
  cli.start(argv, __name__)
  from rahimi_jax import storage  # pylint: disable=g-import-not-at-top
  from rahimi_jax.studies import attribute  # pylint: disable=g-import-not-at-top

  def build():
    config = attribute.AttributeConfig(
        gates=FLAGS.gates, metric=FLAGS.metric, dataset=FLAGS.dataset,
        hidden=cli.parse_numbers('hidden', FLAGS.hidden, int, distinct=False),
        values=cli.axis_flag_values(choices=False)[1], seeds=FLAGS.seeds,
        steps=FLAGS.steps, batch_size=FLAGS.batch_size, nodes=FLAGS.nodes)
    cli.check_switch(config.grid())
    return config

  def describe(config):
    return (f'{len(config.grid())} members (2^{len(config.gates)} x '
            f'{config.seeds} seeds) + {config.nodes} gate-path runs per seed')

  def write(config, out, directory):
    storage.write(out['results'], directory)
    info = out['results'].metadata['engine']
    timing = (f'grid: compile {info["compile_s"]:.1f}s run '
              f'{info["run_s"]:.1f}s; gate paths {out.get("gate_s", 0):.1f}s; ')
    files = ', '.join(['results.csv', 'metadata.json'] + (
        ['contributions.csv', 'contributions.png', 'interactions.png']
        + [f'curves_{name}.png' for name in out['names']]
        if 'rows' in out else []))
    return (f'{attribute.report(config, out, directory)}\n{timing}wrote '
            f'{FLAGS.out}/: {files}\n{cli.switch_line(out["results"].metadata)}')

  return cli.launch(build, describe, attribute.run, write, FLAGS.out,
                    dry_run=FLAGS.dry_run)


if __name__ == '__main__':
  cli.run_app(main)
