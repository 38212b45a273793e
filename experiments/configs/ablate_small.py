r"""A small ablation: 2 optimizers x 2 norms x 2 learning rates x 3 seeds.

  python -m experiments.ablate --config=experiments/configs/ablate_small.py

A field overridden on the command line (lists as comma strings):

  python -m experiments.ablate --config=experiments/configs/ablate_small.py \
      --config.steps=1000 --config.optimizers=sgd,momentum
"""

from ml_collections import config_dict


def get_config() -> config_dict.ConfigDict:
  """The launcher's flags by name (a list flag: a list or a comma string)."""
  config = config_dict.ConfigDict()
  config.dataset = 'digits'
  config.hidden = [32]
  config.optimizers = ['sgd', 'adam']
  config.norms = 'none,batch'
  config.inits = 'lecun_normal'
  config.learning_rate = (0.1, 0.01)
  config.seeds = 3
  config.steps = 200
  config.out = '/tmp/rahimi_ablate_small'
  return config
