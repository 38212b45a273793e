r"""Random features for large-scale kernel machines (Rahimi & Recht, 2007).

Kernel approximation error vs number of random Fourier (and Nyström)
features, with the fitted log-log slope (Monte Carlo rate -1/2); test
accuracy (or error) vs features against exact kernel ridge regression; the
same against scikit-learn's RBFSampler / Nystroem + Ridge and KernelRidge,
timed, in one run. Default (digits, Gaussian kernel, median-distance
bandwidth, 16..1024 features, 3 seeds):

  python -m experiments.random_features --out=/tmp/rahimi_random_features

The Laplacian kernel (Cauchy frequencies) on MNIST-1D:

  python -m experiments.random_features --dataset=mnist1d --kernel=laplacian
"""


from absl import flags

from rahimi_jax import cli
from rahimi_jax import data
from rahimi_jax.kernels import kernels

flags.DEFINE_string('dataset', 'digits',
                    f'Dataset: {" | ".join(data.DATASETS)}.')
flags.DEFINE_string('kernel', 'gaussian',
                    f'Kernel: {" | ".join(kernels.KERNELS)}.')
flags.DEFINE_list('features', ['16', '32', '64', '128', '256', '512', '1024'],
                  'Numbers of random features (and Nyström centres).')
flags.DEFINE_float('bandwidth', None, 'Kernel bandwidth (default: the median '
                   'pairwise distance of the training inputs, in the '
                   'kernel\'s norm: Euclidean for gaussian, L1 for '
                   'laplacian).')
flags.DEFINE_float('lam', 1e-4, "Ridge per sample (scikit-learn's alpha = "
                   'n * lam).')
flags.DEFINE_integer('seeds', 3, 'Feature draws per number of features.')
flags.DEFINE_integer('approx_points', 500, 'Training rows on which the '
                     'kernel approximation error is measured.')
flags.DEFINE_integer('train_size', 0, 'Keep this many training rows (0: '
                     'all).')
flags.DEFINE_bool('peers', True, "Also run scikit-learn's estimators.")
flags.DEFINE_string('out', '/tmp/rahimi_random_features', 'Directory for '
                    'results.csv, metadata.json and the PNG plots (replaced '
                    'whole).')
flags.DEFINE_bool('dry_run', False, 'Check the flags and data sizes, print '
                  'the plan, and exit without running or writing anything.')
cli.define_precision_flag()  # --matmul_precision (float32 by default)
cli.define_config_flag()  # --config=FILE.py or a results directory

FLAGS = flags.FLAGS


def main(argv):
  cli.start(argv, __name__)
  from rahimi_jax import storage  # pylint: disable=g-import-not-at-top
  from rahimi_jax.studies import random_features  # pylint: disable=g-import-not-at-top

  def build():
    config = random_features.RandomFeaturesConfig(
        dataset=FLAGS.dataset, kernel=FLAGS.kernel,
        features=cli.parse_numbers('features', FLAGS.features, int),
        bandwidth=FLAGS.bandwidth, lam=FLAGS.lam, seeds=FLAGS.seeds,
        approx_points=FLAGS.approx_points, train_size=FLAGS.train_size,
        peers=FLAGS.peers)
    return config, config.data()

  def describe(built):
    config, d = built
    return (f'{config.dataset}: n={len(d.x)} train, {len(d.x_test)} test; '
            f'{config.kernel} kernel; features {list(config.features)} x '
            f'{config.seeds} seeds (one program per size, vmapped over '
            'seeds); exact kernel ridge'
            + ('; scikit-learn peers' if config.peers else ''))

  def run(built):
    return random_features.run(built[0])

  def write(built, res, directory):
    del built
    storage.write(res, directory)
    files = [storage.CSV, storage.METADATA,
             *random_features.plot(res, directory)]
    return '\n'.join([random_features.report(res),
                      f'wrote {FLAGS.out}/: {", ".join(files)}'])

  return cli.launch(build, describe, run, write, FLAGS.out,
                    dry_run=FLAGS.dry_run, grid=False)


if __name__ == '__main__':
  cli.run_app(main)
