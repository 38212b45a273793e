r"""Linear solvers that scale: kernel ridge systems of growing n.

Plain conjugate gradients vs FALKON-preconditioned CG on the Nyström kernel
ridge system of a procedural regression, rows sharded over the host's cores:
iterations to tolerance, compile and run time, peak memory (XLA's estimate),
test error, and the distance from the float64 solution; exact kernel ridge
(Cholesky) beside them for small n. Default (n = 1000..8000, M = 500 centres,
Gaussian kernel, lam 1e-5, tol 1e-6, at most 1000 iterations):

  python -m experiments.linear_solver --out=/tmp/rahimi_linear_solver

In float64, where both solvers' residuals reach the default tol (float32's
stall, size-dependent, at about 1e-6..1e-3):

  python -m experiments.linear_solver --dtype=float64 --out=/tmp/ls64

Larger systems (no exact solve):

  python -m experiments.linear_solver --sizes=10000,100000 --centres=2000 \
      --exact_max=0
"""

import os

from absl import flags

from rahimi_jax import cli
from rahimi_jax.kernels import kernels

flags.DEFINE_list('sizes', ['1000', '2000', '4000', '8000'],
                  'Training set sizes n, increasing.')
flags.DEFINE_integer('centres', 500, 'Nyström centres M (<= the smallest n).')
flags.DEFINE_string('kernel', 'gaussian',
                    f'Kernel: {" | ".join(kernels.KERNELS)}.')
flags.DEFINE_float('bandwidth', None, 'Kernel bandwidth (default: the median '
                   'pairwise distance of the first size\'s inputs, in the '
                   'kernel\'s norm: Euclidean for gaussian, L1 for '
                   'laplacian).')
flags.DEFINE_float('lam', 1e-5, 'Ridge per sample.')
flags.DEFINE_float('tol', 1e-6, 'Relative residual to stop at.')
flags.DEFINE_integer('maxiter', 1000, 'The most CG iterations.')
flags.DEFINE_integer('exact_max', 4000, 'Exact kernel ridge (Cholesky) for '
                     'sizes up to this (0: never).')
flags.DEFINE_integer('in_dim', 8, 'Input dimension of the procedural data.')
flags.DEFINE_integer('block_size', None, 'Rows per kernel block (default: '
                     'as fill half of a core\'s L2 cache on a CPU, 1024 on an '
                     'accelerator: kernels.default_block_size).')
flags.DEFINE_integer('devices', 0, 'Devices to shard the rows over (0: all).')
flags.DEFINE_enum('dtype', 'float32', ['float32', 'float64'], 'Arithmetic '
                  '(float64: residuals below float32\'s floor, e.g. tol 1e-6).')
flags.DEFINE_string('out', '/tmp/rahimi_linear_solver', 'Directory for '
                    'results.csv, metadata.json and convergence.png '
                    '(replaced whole).')
flags.DEFINE_bool('dry_run', False, 'Check the flags, print the plan, and '
                  'exit without running or writing anything.')
cli.define_precision_flag()  # --matmul_precision (float32 by default)
cli.define_config_flag()  # --config=FILE.py or a results directory

FLAGS = flags.FLAGS


def main(argv):
  cli.start(argv, __name__)
  import jax  # pylint: disable=g-import-not-at-top
  if FLAGS.dtype == 'float64':
    jax.config.update('jax_enable_x64', True)
  from rahimi_jax import storage  # pylint: disable=g-import-not-at-top
  from rahimi_jax.studies import linear_solver  # pylint: disable=g-import-not-at-top

  def build():
    return linear_solver.LinearSolverConfig(
        sizes=cli.parse_numbers('sizes', FLAGS.sizes, int),
        centres=FLAGS.centres, kernel=FLAGS.kernel, bandwidth=FLAGS.bandwidth,
        lam=FLAGS.lam, tol=FLAGS.tol, maxiter=FLAGS.maxiter,
        exact_max=FLAGS.exact_max, in_dim=FLAGS.in_dim,
        block_size=FLAGS.block_size, devices=FLAGS.devices,
        dtype=FLAGS.dtype)

  def describe(config):
    exact = [n for n in config.sizes if n <= config.exact_max]
    return (f'n = {list(config.sizes)}, M = {config.centres}: FALKON-'
            'preconditioned CG and plain CG'
            + (f'; exact kernel ridge for n = {exact}' if exact else ''))

  def write(config, res, directory):
    del config
    storage.write(res, directory)
    linear_solver.plot(res, os.path.join(directory, 'convergence.png'))
    return '\n'.join([linear_solver.report(res), f'wrote {FLAGS.out}/: '
                      f'{storage.CSV}, {storage.METADATA}, convergence.png'])

  return cli.launch(build, describe, linear_solver.run, write, FLAGS.out,
                    dry_run=FLAGS.dry_run, grid=False)


if __name__ == '__main__':
  cli.run_app(main)
