"""The ablatable parts: one module per choice axis, each declaring its axis.

Each module holds a registry of options, the relaxed mixture of a list of
them, and its ``registry.Axis`` (registered on import, in this order: the
launchers list the axes and grids order them so).
"""

from rahimi_jax.components import optimizers  # pylint: disable=g-bad-import-order
from rahimi_jax.components import norms  # pylint: disable=g-bad-import-order
from rahimi_jax.components import inits  # pylint: disable=g-bad-import-order
from rahimi_jax.components import activations  # pylint: disable=g-bad-import-order
from rahimi_jax.components import precision  # pylint: disable=g-bad-import-order
from rahimi_jax.components import placement  # pylint: disable=g-bad-import-order
from rahimi_jax.components.activations import ACTIVATIONS
from rahimi_jax.components.activations import relaxed_activation
from rahimi_jax.components.inits import INITS
from rahimi_jax.components.inits import relaxed_init
from rahimi_jax.components.inits import scaled_init
from rahimi_jax.components.norms import Norm
from rahimi_jax.components.norms import NORMS
from rahimi_jax.components.norms import relaxed_norm
from rahimi_jax.components.optimizers import LEAST_SQUARES
from rahimi_jax.components.optimizers import OPTIMIZERS
from rahimi_jax.components.optimizers import relaxed_optimizer
from rahimi_jax.components.relaxed import component_key
from rahimi_jax.components.relaxed import layer_key
from rahimi_jax.components.relaxed import LayerKeys
from rahimi_jax.components.relaxed import mix
