"""rahimi_jax: simple experiments in deep learning, one XLA program per grid."""

from rahimi_jax import program as _program

# Python users get the launchers' devices: one XLA CPU device per core
# (unless XLA_FLAGS or jax_num_cpu_devices chose, or JAX already started).
_program.use_host_cores(default=True)

from rahimi_jax import components  # pylint: disable=g-import-not-at-top,wrong-import-position
from rahimi_jax import data
from rahimi_jax import models
from rahimi_jax.studies.ablation import AblationConfig
from rahimi_jax.studies.ablation import run as run_ablation
from rahimi_jax.components import mix
from rahimi_jax.data import Dataset
from rahimi_jax.engine import run
from rahimi_jax.grid import Choice
from rahimi_jax.grid import Gate
from rahimi_jax.grid import Grid
from rahimi_jax.grid import Seeds
from rahimi_jax.grid import Values
from rahimi_jax.storage import load
from rahimi_jax.results import Results
from rahimi_jax.storage import save
from rahimi_jax.stats import mean_ci
from rahimi_jax.train import make_train
from rahimi_jax.train import TrainConfig

__version__ = '0.1.0'
