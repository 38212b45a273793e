"""The ablatable parts: one registry per axis, each with its relaxed mixture."""

from rahimi_jax.components.activations import ACTIVATIONS
from rahimi_jax.components.activations import get_activation
from rahimi_jax.components.activations import relaxed_activation
from rahimi_jax.components.inits import get_init
from rahimi_jax.components.inits import INITS
from rahimi_jax.components.inits import relaxed_init
from rahimi_jax.components.norms import get_norm
from rahimi_jax.components.norms import Norm
from rahimi_jax.components.norms import NORMS
from rahimi_jax.components.norms import relaxed_norm
from rahimi_jax.components.optimizers import get_optimizer
from rahimi_jax.components.optimizers import Hyperparams
from rahimi_jax.components.optimizers import LEAST_SQUARES
from rahimi_jax.components.optimizers import OPTIMIZERS
from rahimi_jax.components.optimizers import relaxed_optimizer
from rahimi_jax.components.relaxed import component_key
from rahimi_jax.components.relaxed import mix
