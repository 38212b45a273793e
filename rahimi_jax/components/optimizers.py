"""Optimizers on optax, one signature: ``make(hp) -> GradientTransformation``.

``update`` may receive ``residual_fn=`` (passed for least-squares losses), which
the Gauss–Newton and Levenberg–Marquardt options need and the others ignore.

``hp`` maps the optimizer axis's value knobs (``AXIS.knobs``: learning rate,
momentum, weight decay) and the optimizers' ``CONSTANTS`` to traced scalars, captured when the transformation is
built inside the traced training function, so one compiled program serves
every learning rate, momentum and weight decay of a grid.
"""

from collections.abc import Callable, Mapping, Sequence

import jax
import optax

from rahimi_jax import registry
from rahimi_jax import solvers
from rahimi_jax.components import relaxed

Hyperparams = Mapping[str, jax.typing.ArrayLike]

# The optimizers' own constants (optax's defaults), passed through ``hp`` so
# that the ``constants`` placement can round them like the knobs: Adam's and
# AdamW's b1, b2 and eps; RMSProp's decay and eps.
CONSTANTS = {'b1': 0.9, 'b2': 0.999, 'eps': 1e-8, 'decay': 0.9}

OPTIMIZERS: dict[str, Callable[[Hyperparams], optax.GradientTransformation]]
OPTIMIZERS = registry.Options('optimizer', {
    'sgd': lambda hp: optax.sgd(hp['learning_rate']),
    'momentum': lambda hp: optax.sgd(hp['learning_rate'],
                                     momentum=hp['momentum']),
    'nesterov': lambda hp: optax.sgd(
        hp['learning_rate'], momentum=hp['momentum'], nesterov=True),
    'adam': lambda hp: optax.adam(hp['learning_rate'], b1=hp['b1'],
                                  b2=hp['b2'], eps=hp['eps']),
    'adamw': lambda hp: optax.adamw(
        hp['learning_rate'], b1=hp['b1'], b2=hp['b2'], eps=hp['eps'],
        weight_decay=hp['weight_decay']),
    'rmsprop': lambda hp: optax.rmsprop(hp['learning_rate'],
                                        decay=hp['decay'], eps=hp['eps']),
    # Least squares only (they need residual_fn); the learning rate is unused.
    'gauss_newton': lambda hp: solvers.gauss_newton(),
    'levenberg_marquardt': lambda hp: solvers.levenberg_marquardt(),
}, registry.Signature('make(hp) -> optax.GradientTransformation', (None,)))
# Optimizers that step from the residual function, not the gradient.
LEAST_SQUARES = ('gauss_newton', 'levenberg_marquardt')

AXIS = registry.register(registry.Axis(
    name='optimizer', options=OPTIMIZERS, default='sgd', flag='optimizers',
    help='Optimizers (gauss_newton, levenberg_marquardt: regression only).',
    study=('sgd', 'momentum', 'adam'), loop=True,
    switchable=True, open_knobs=True,  # each option's factory gets all of hp
    knobs=(registry.Knob('learning_rate', 0.01, 'Learning rate.',
                         ignored_by=LEAST_SQUARES),
           registry.Knob('momentum', 0.9, "Momentum (Adam's b1 stays 0.9).",
                         inclusive=True, maximum=1.0,  # 1: no decay at all
                         read_by=('momentum', 'nesterov')),
           registry.Knob('weight_decay', 1e-4, 'Decoupled weight decay.',
                         inclusive=True, read_by=('adamw',)))))


class _Knobs(dict):
  """An option's ``hp``: reading a knob it does not hold names the option
  and the knobs it holds. A pytree as a dict is (``jax.tree.map`` over it
  keeps it one)."""

  def __init__(self, option: str, hp: Hyperparams):
    super().__init__(hp)
    self.option = option

  def __missing__(self, name):
    raise KeyError(f'optimizer {self.option!r} reads hp[{name!r}], which '
                   f'is no knob; hp holds: {", ".join(sorted(self))}')


jax.tree_util.register_pytree_with_keys(
    _Knobs,
    lambda k: ([(jax.tree_util.DictKey(n), k[n]) for n in sorted(k)],
               (k.option, tuple(sorted(k)))),
    lambda aux, leaves: _Knobs(aux[0], dict(zip(aux[1], leaves))))


def _build(name: str, hp: Hyperparams) -> optax.GradientTransformation:
  """Option ``name``'s transformation from ``hp``; a clear error if it is
  not one."""
  tx = OPTIMIZERS[name](_Knobs(name, hp))
  if not (callable(getattr(tx, 'init', None))
          and callable(getattr(tx, 'update', None))):
    raise TypeError(f'optimizer {name!r} returned {tx!r}; accepted: an '
                    'optax.GradientTransformation (init, update).')
  return tx


def relaxed_optimizer(names: Sequence[str], weights: jax.Array,
                      hp: Hyperparams) -> optax.GradientTransformation:
  """The mixture of optimizers ``names``: updates ``sum_i weights[i] * u_i``.

  Every option keeps its own state and sees the same gradients; the parameters
  move along the weighted sum of the options' updates. Each option reads the
  hyperparameters, gradients, its state, the parameters and the extra
  arguments (``residual_fn``) through ``relaxed.guard``, so one of weight 0
  poisons no value or gradient.
  """
  names = AXIS.check(names)
  hp = {**CONSTANTS, **hp}  # constants the caller did not round
  txs = [_build(n, relaxed.guard(weights[i], hp)) for i, n in enumerate(names)]
  txs = [optax.with_extra_args_support(tx) for tx in txs]

  def init(params):
    return tuple(tx.init(params) for tx in txs)

  def update(grads, state, params=None, **extra_args):
    if relaxed.switched(AXIS.name):  # only the member's own optimizer
      def branch(i, tx):
        def run():
          u, s = tx.update(grads, state[i], params, **extra_args)
          return u, state[:i] + (s,) + state[i + 1:]
        return run
      return relaxed.choose(weights, [branch(i, tx)
                                      for i, tx in enumerate(txs)])
    outs = []
    for i, (tx, s) in enumerate(zip(txs, state)):
      g, s, p, extra = relaxed.guard(weights[i], (grads, s, params, extra_args))
      outs.append(tx.update(g, s, p, **extra))
    updates = relaxed.mix(weights, [u for u, _ in outs])
    return updates, tuple(s for _, s in outs)

  return optax.GradientTransformationExtraArgs(init, update)
