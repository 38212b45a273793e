r"""Simple experiment 1: gradient descent stalls on a two-layer linear network.

The talk's demonstration (x in R^6, hidden 6, y in R^10, 1000 samples, target
condition number 1e5, float64): gradient descent over several step sizes and
Adam for 1e5 steps, Levenberg–Marquardt and Gauss–Newton for 30, on the same
problem and seeds, side by side per seed; then the curvature where gradient
descent stalls, with the network's symmetry quotiented out.

  python -m experiments.deep_linear --out=/tmp/rahimi_deep_linear

Saxe et al.'s plateaus of small initialization across depths, and each mode's
half-rise time from a balanced, aligned small init against the theory:

  python -m experiments.deep_linear --methods=gd --gd_lrs=0.05 \
      --init=gaussian --init_scales=0.03,0.3 --depths=1,2,3 --steps=4000 \
      --saxe --out=/tmp/rahimi_saxe
"""

from absl import flags

from rahimi_jax import cli

flags.DEFINE_float('condition_number', 1e5, 'Condition number of the target.')
flags.DEFINE_float('noise', 0.0, 'Target noise std (0: none; the target is '
                   'then realizable when --width >= min(--in_dim, '
                   '--out_dim)).')
flags.DEFINE_integer('n_train', 1000, 'Samples (full batch).')
flags.DEFINE_integer('in_dim', 6, 'Input width.')
flags.DEFINE_integer('out_dim', 10, 'Output width.')
flags.DEFINE_integer('width', 6, 'Hidden width.')
flags.DEFINE_list('depths', ['1'], 'Hidden-layer counts (1: two-layer net).')
flags.DEFINE_list('methods', ['gd', 'adam', 'lm', 'gn'],
                  'Of gd, adam, lm, gn.')
flags.DEFINE_list('gd_lrs', ['0.01', '0.03', '0.1', '0.3'],
                  'Gradient-descent step sizes.')
flags.DEFINE_list('adam_lrs', ['0.01'], 'Adam learning rates.')
flags.DEFINE_string('init', 'orthogonal', 'Initializer name.')
flags.DEFINE_list('init_scales', ['1.0'], 'Initializer multipliers.')
flags.DEFINE_integer('seeds', 4, 'Initialization seeds.')
flags.DEFINE_integer('steps', 100_000, 'Iterations of gd and adam.')
flags.DEFINE_integer('solver_steps', 30, 'Iterations of lm and gn (each '
                     'logged).')
flags.DEFINE_integer('log_every', None, 'Steps between logged metrics of gd and '
                     'adam (default: steps // 100).')
flags.DEFINE_enum('dtype', 'float64', ['float32', 'float64'], 'Precision.')
flags.DEFINE_bool('saxe', False, 'Also measure each mode\'s half-rise time '
                  'from a balanced, aligned init of each --init_scales '
                  '(two-layer net, each --gd_lrs) against the theory.')
flags.DEFINE_bool('dry_run', False, 'Check the flags, print the grid, and '
                  'exit without running or writing anything.')
flags.DEFINE_string('out', '/tmp/rahimi_deep_linear', 'Output directory.')
cli.define_precision_flag()  # --matmul_precision (float32 by default)
cli.define_switch_flag()  # LM beside GN: a group per solver
cli.define_config_flag()  # --config=FILE.py or a results directory

FLAGS = flags.FLAGS


def main(argv):
  cli.start(argv, __name__)  # --config; host cores before JAX's first op
  import jax  # pylint: disable=g-import-not-at-top
  if FLAGS.dtype == 'float64':
    jax.config.update('jax_enable_x64', True)
  from rahimi_jax import storage  # pylint: disable=g-import-not-at-top
  from rahimi_jax.studies import deep_linear  # pylint: disable=g-import-not-at-top

  def build():
    config = deep_linear.DeepLinearConfig(
        condition_number=FLAGS.condition_number, noise=FLAGS.noise,
        n_train=FLAGS.n_train, in_dim=FLAGS.in_dim, out_dim=FLAGS.out_dim,
        width=FLAGS.width,
        depths=cli.parse_numbers('depths', FLAGS.depths, int),
        methods=tuple(FLAGS.methods),
        gd_lrs=cli.parse_numbers('gd_lrs', FLAGS.gd_lrs),
        adam_lrs=cli.parse_numbers('adam_lrs', FLAGS.adam_lrs),
        init=FLAGS.init,
        init_scales=cli.parse_numbers('init_scales', FLAGS.init_scales),
        seeds=FLAGS.seeds, steps=FLAGS.steps,
        solver_steps=FLAGS.solver_steps, log_every=FLAGS.log_every,
        dtype=FLAGS.dtype, saxe=FLAGS.saxe)
    cli.check_switch(*config.grids().values())
    return config

  def describe(config):
    return (f'{len(config.grid())} members per depth, depths '
            f'{list(config.depths)}')

  def write(config, res, directory):
    storage.write(res, directory)
    wall = sum(e['wall_s'] for e in res.metadata['engine'])
    grids = [('least-squares' if least_squares else 'first-order')
             + (f' (depth {d})' if len(config.depths) > 1 else '')
             for d in config.depths for least_squares in config.grids()]
    switched = [f'{grid} grid: ' + cli.switch_line({'partition': p,
                                                    'engine': e})
                for grid, p, e in zip(grids, res.metadata['partition'],
                                      res.metadata['engine'])]
    return '\n'.join([deep_linear.report(config, res, directory), *switched,
                      f'grid wall time {wall:.1f}s; wrote {FLAGS.out}/'
                      'results.csv, metadata.json and PNG plots'])

  return cli.launch(build, describe, deep_linear.run, write, FLAGS.out,
                    dry_run=FLAGS.dry_run)


if __name__ == '__main__':
  cli.run_app(main)
