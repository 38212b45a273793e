r"""Simple experiment 3: does batch norm help by reducing covariate shift?

No norm vs batch norm vs noisy batch norm (shift added on purpose) vs layer
norm, per model one grid over learning rates and seeds (paired), every member
logging Santurkar et al.'s probes: internal covariate shift per layer,
pre-activation drift, and the loss landscape along the gradient (loss range,
gradient change, effective beta-smoothness). Prints accuracy and each probe
per arm with intervals over seeds and, per learning rate, what the noisy arm
says about covariate shift vs smoothness. Default (MNIST-1D; a CNN, an 8-layer
MLP and an 8-layer deep linear net; SGD at three learning rates; 5 seeds):

  python -m experiments.batchnorm --out=/tmp/rahimi_batchnorm

A 25-layer deep linear net, as in Santurkar et al.:

  python -m experiments.batchnorm --models=deep_linear --depth=25 \
      --out=/tmp/rahimi_batchnorm_deep
"""

import os

from absl import flags

from rahimi_jax import cli
from rahimi_jax import data
from rahimi_jax import models
from rahimi_jax import registry
from rahimi_jax.components import norms
from rahimi_jax.studies import batchnorm

flags.DEFINE_string('dataset', 'mnist1d',
                    f'Dataset: {" | ".join(data.DATASETS)}.')
flags.DEFINE_list('models', ['cnn', 'mlp', 'deep_linear'],
                  f'Models, one grid each: {", ".join(models.MODELS)}.')
flags.DEFINE_integer('width', 64, 'Hidden width of the MLP and deep linear '
                     'net, 1 to 64.')
flags.DEFINE_integer('depth', 8, 'Hidden layers of the MLP and deep linear '
                     'net (each reads the norm axis), 1 to 64.')
flags.DEFINE_list('channels', ['25', '25', '25'], "The CNN's channels per "
                  "convolution (MNIST-1D's ConvBase).")
flags.DEFINE_list('norms', ['none', 'batch', 'noisy_batch', 'layer'],
                  f'Norms compared (with none and batch): '
                  f'{", ".join(norms.NORMS)}.')
flags.DEFINE_string('optimizer', 'sgd', 'A first-order optimizer.')
flags.DEFINE_list('learning_rates', ['0.01', '0.05', '0.2'],
                  'At least three learning rates.')
for _knob in batchnorm.NOISE_KNOBS:
  _default = dict(batchnorm.DEFAULT_NOISE).get(_knob,
                                               registry.knobs()[_knob].default)
  flags.DEFINE_float(_knob, None, registry.knobs()[_knob].help.rstrip('.')
                     + f' (default: {_default:g}).')
# --momentum, --weight_decay, --init_scale: one value for every member.
cli.define_axis_flags(choices=False, grid=False, knobs=batchnorm.VALUE_KNOBS)
flags.DEFINE_integer('seeds', 5, 'Number of seeds (paired across arms).')
flags.DEFINE_integer('steps', 1000, 'Optimizer steps.')
flags.DEFINE_integer('batch_size', 100, 'Minibatch size.')
flags.DEFINE_integer('log_every', None, 'Steps between evaluations and probes '
                     '(default: 100, or --steps when fewer).')
flags.DEFINE_string('out', '/tmp/rahimi_batchnorm', 'Directory for the '
                    'per-member summary (results.csv, metadata.json), one '
                    'subdirectory of full logs per model, and the PNG curves '
                    '(replaced whole).')
cli.define_switch_flag()  # the norms: a group per norm
flags.DEFINE_bool('dry_run', False, 'Check the flags, print the grids, and '
                  'exit without running or writing anything.')
cli.define_precision_flag()  # --matmul_precision (float32 by default)
cli.define_config_flag()  # --config=FILE.py or a results directory

FLAGS = flags.FLAGS


def main(argv):
  cli.start(argv, __name__)
  from rahimi_jax import storage  # pylint: disable=g-import-not-at-top

  def build():
    noise = dict(batchnorm.DEFAULT_NOISE) | {
        k: getattr(FLAGS, k) for k in batchnorm.NOISE_KNOBS
        if getattr(FLAGS, k) is not None}
    config = batchnorm.BatchNormConfig(
        dataset=FLAGS.dataset, models=tuple(FLAGS.models), width=FLAGS.width,
        depth=FLAGS.depth,
        channels=cli.parse_numbers('channels', FLAGS.channels, int,
                                   distinct=False),
        norms=tuple(FLAGS.norms), optimizer=FLAGS.optimizer,
        learning_rates=cli.parse_numbers('learning_rates',
                                         FLAGS.learning_rates),
        noise=tuple(noise.items()),
        values=cli.axis_flag_values(choices=False,
                                    knobs=batchnorm.VALUE_KNOBS)[1],
        seeds=FLAGS.seeds, steps=FLAGS.steps,
        batch_size=FLAGS.batch_size, log_every=FLAGS.log_every)
    cli.check_switch(config.grid())
    return config

  def describe(config):
    members = len(config.grid())
    return (f'{len(config.models)} grid(s) ({", ".join(config.models)}), '
            f'each one program of {members} members: {len(config.norms)} '
            f'norms x {len(config.learning_rates)} learning rates x '
            f'{config.seeds} seeds, {config.steps} steps, probes every '
            f'{config.train_config(config.models[0]).log_every}')

  def write(config, out, directory):
    from rahimi_jax import plots  # pylint: disable=g-import-not-at-top
    summary = batchnorm.summary(out)
    storage.write(summary, directory)
    files = [storage.CSV, storage.METADATA]
    top = max(config.learning_rates)
    for model, res in out.items():
      os.mkdir(os.path.join(directory, model))
      storage.write(res, os.path.join(directory, model))
      files.append(f'{model}/')
      at = res.where(learning_rate=top)
      for metric, log_y in (('test_accuracy', False), ('ics_l2', True),
                            ('preact_mean_drift', True),
                            ('beta_smoothness', True)):
        files.append(f'{metric}_{model}.png')
        plots.curves(at, metric, os.path.join(directory, files[-1]),
                     by='norm', log_y=log_y,
                     title=f'{model}, lr {top:g}: {metric}, '
                     + plots.mean_words(log_y))
    info = [r.metadata['engine'] for r in out.values()]
    return '\n'.join([
        f'compile {sum(i["compile_s"] for i in info):.1f}s, run '
        f'{sum(i["run_s"] for i in info):.1f}s on {info[0]["num_devices"]} '
        'device(s)',
        *(f'{model}: {cli.switch_line(r.metadata)}' for model, r in out.items()),
        batchnorm.report(out),
        f'wrote {FLAGS.out}/: {", ".join(files)}'])

  return cli.launch(build, describe, batchnorm.run, write, FLAGS.out,
                    dry_run=FLAGS.dry_run)


if __name__ == '__main__':
  cli.run_app(main)
