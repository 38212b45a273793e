"""Pure models behind one registry: ``make(hidden, options) -> Model``."""

from collections.abc import Callable, Mapping, Sequence

from rahimi_jax import registry
from rahimi_jax.models.base import Model
from rahimi_jax.models.cnn import cnn
from rahimi_jax.models.deep_linear import deep_linear
from rahimi_jax.models.flax_adapter import from_flax
from rahimi_jax.models.mlp import mlp

MakeModel = Callable[[Sequence[int], Mapping[str, Sequence[str]]], Model]

MODELS: dict[str, MakeModel] = {
    'mlp': mlp,
    'deep_linear': deep_linear,
    'cnn': cnn,
}
BUILT_IN = tuple(MODELS)


def get_model(name: str):
  return registry.get(MODELS, name, 'model')


def make_model(name: str, hidden: Sequence[int],
               options: Mapping[str, Sequence[str]]) -> Model:
  """``MODELS[name](hidden, options)``; a factory that returns no ``Model``
  is an error that names it."""
  model = get_model(name)(hidden, options)
  if not isinstance(model, Model):
    raise TypeError(
        f'model {name!r}: its factory returned a {type(model).__name__}, not '
        'a rahimi_jax.models.Model (a flax module: rj.models.from_flax(...)).')
  return model


def register(name: str, make: MakeModel) -> MakeModel:
  """Adds ``make(hidden, options) -> Model`` to ``MODELS`` as ``name``, so
  that ``TrainConfig(model=name)`` trains it (e.g. ``from_flax`` of your
  own module). Registering a name again replaces its model (a notebook
  cell run again; its programs are built anew); a built-in name is an
  error."""
  if not isinstance(name, str) or not name:
    raise ValueError(f'A model name must be a non-empty string; got {name!r}.')
  if not callable(make):
    raise TypeError(f'register({name!r}, ...) needs make(hidden, options) -> '
                    f'Model; got {type(make).__name__}.')
  if name in BUILT_IN and MODELS[name] is not make:
    raise ValueError(f'Model {name!r} is built in; accepted names are any '
                     f'but: {", ".join(BUILT_IN)}.')
  MODELS[name] = make
  return make
