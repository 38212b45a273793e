"""Pure models behind one registry: ``make(hidden, options) -> Model``."""

from rahimi_jax import registry
from rahimi_jax.models.base import Model
from rahimi_jax.models.deep_linear import deep_linear
from rahimi_jax.models.mlp import mlp

MODELS = {
    'mlp': mlp,
    'deep_linear': deep_linear,
}


def get_model(name: str):
  return registry.get(MODELS, name, 'model')
