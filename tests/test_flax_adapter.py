"""Tests of models.from_flax: a user's flax module as a pure Model in a grid."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rahimi_jax as rj
from rahimi_jax import components
from rahimi_jax import models
from rahimi_jax.models import flax_adapter


class UserMlp(nn.Module):
  """A plain flax model: reads no knobs, takes only ``x``."""

  @nn.compact
  def __call__(self, x):
    return nn.Dense(10, name='a_out')(nn.relu(nn.Dense(8, name='z_in')(x)))


class StatefulNet(nn.Module):
  """flax BatchNorm state and Dropout randomness; a pre-activation hook."""
  num_outputs: int

  @nn.compact
  def __call__(self, x, train, preactivation=None):
    h = nn.Dense(6)(x)
    h = nn.BatchNorm(use_running_average=not train, momentum=0.5)(h)
    if preactivation is not None:
      h = preactivation(0, h)
    h = nn.Dropout(0.5, deterministic=not train)(nn.relu(h))
    return nn.Dense(self.num_outputs)(h)


KNOBS = {}  # the loop's knobs; these modules read none


@pytest.fixture(scope='module')
def user_model():
  models.register('test_user_net',
                  lambda hidden, options: models.from_flax(StatefulNet))
  yield 'test_user_net'
  del models.MODELS['test_user_net']


def test_plain_module_joins_a_grid(user_model, tiny_digits):
  """A module that reads no knobs, with flax state and dropout, in a grid."""
  config = rj.TrainConfig(model=user_model, steps=4, log_every=4,
                          batch_size=32)
  assert not models.get_model(user_model)((), {}).choice_axes
  assert 'norm' not in config.reads
  with pytest.raises(ValueError, match="'test_user_net' has no norm"):
    rj.TrainConfig(model=user_model, options=(('norm', ('batch',)),))
  # Init scales it never reads would make copies of each member.
  with pytest.raises(ValueError, match="init_scale: no member reads it: "
                     "model 'test_user_net' has no init axis"):
    rj.run(config, rj.Grid(rj.Values('init_scale', [0.5, 2.0])), tiny_digits)
  grid = rj.Grid(rj.Choice('optimizer', ['sgd', 'adam']),
                 rj.Values('learning_rate', [0.01]), rj.Seeds(2))
  results = rj.run(config, grid, tiny_digits, partition=())
  final = results.final()
  assert len(final) == 4
  losses = np.asarray(final.columns['train_loss'])
  chex.assert_tree_all_finite(losses)
  first = np.asarray(results.where(step=0).columns['train_loss'])
  assert (losses != first).all()
  assert (losses[2:] < first[2:]).all()  # adam's members learn in 4 steps
  # Paired design: members of one seed start from the same parameters.
  chex.assert_trees_all_close(first[0::2], first[0])
  assert first[0] != first[1]


def test_order_state_rngs_and_hooks():
  model = models.from_flax(lambda out: StatefulNet(out))
  assert model.preactivation_hook and not model.matmul_hook
  params, state = model.init(jax.random.key(0), 5, 3, KNOBS)
  assert list(params) == ['Dense_0', 'BatchNorm_0', 'Dense_1']
  assert set(state) == {'batch_stats'}
  params = jax.jit(lambda p: p)(params)  # the order survives JAX's trees
  assert list(params) == ['Dense_0', 'BatchNorm_0', 'Dense_1']
  depth = model.depth(params)
  chex.assert_trees_all_equal_structs(depth, params)
  assert depth['Dense_0'] == {'bias': 0, 'kernel': 0}
  assert depth['Dense_1'] == {'bias': 2, 'kernel': 2}
  x = np.random.default_rng(0).standard_normal((8, 5)).astype(np.float32)
  apply = jax.jit(model.apply, static_argnums=4)
  y1, s1 = apply(params, state, x, KNOBS, True, jax.random.key(1))
  y2, _ = apply(params, state, x, KNOBS, True, jax.random.key(2))
  y3, _ = apply(params, state, x, KNOBS, True, jax.random.key(1))
  chex.assert_shape(y1, (8, 3))
  chex.assert_trees_all_equal(y1, y3)  # dropout draws from the step key
  assert not np.allclose(y1, y2)
  chex.assert_trees_all_equal_structs(s1, state)
  np.testing.assert_allclose(s1['batch_stats']['BatchNorm_0']['mean'],
                             0.5 * np.asarray(x @ params['Dense_0']['kernel']
                                              ).mean(0), rtol=1e-5, atol=1e-6)
  _, s_eval = apply(params, s1, x, KNOBS, False, None)
  chex.assert_trees_all_equal(s_eval, s1)
  seen = []
  y_hooked, _ = model.apply(params, state, x, KNOBS, True, jax.random.key(1),
                            preactivation=lambda i, h: seen.append(
                                (i, h.shape)) or h)
  assert seen == [(0, (8, 6))]
  chex.assert_trees_all_close(y_hooked, y1)


def test_depth_override_and_errors(user_model):
  model = models.from_flax(UserMlp(), depth=lambda p: jax.tree.map(
      lambda _: 7, p))
  params, state = model.init(jax.random.key(0), 4, 10, KNOBS)
  assert list(params) == ['z_in', 'a_out']  # call order, not alphabetical
  assert set(jax.tree.leaves(model.depth(params))) == {7}
  assert not model.preactivation_hook and state == {}
  assert not model.per_sample  # only the module's author can say so
  with pytest.raises(ValueError, match='no preactivation'):
    model.apply(params, state, jnp.ones((2, 4)), KNOBS, True,
                preactivation=lambda i, h: h)
  with pytest.raises(ValueError, match=r'UserMlp maps \[1, 4\].*\[1, 3\]'):
    model.init(jax.random.key(0), 4, 3, KNOBS)
  with pytest.raises(TypeError, match='flax.linen.Module'):
    models.from_flax(42)
  # Two likely slips: the class for an instance, and an nnx module.
  with pytest.raises(TypeError, match=r'UserMlp\(1\) failed .*pass an '
                     r'instance, e\.g\. UserMlp\(\.\.\.\)'):
    models.from_flax(UserMlp)
  from flax import nnx  # pylint: disable=g-import-not-at-top
  with pytest.raises(TypeError, match='flax.nnx module Linear.*to_linen'):
    models.from_flax(nnx.Linear(4, 3, rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match="'mlp' is built in"):
    models.register('mlp', models.cnn)


def test_default_depth_is_the_creation_order():
  params = flax_adapter.collections.OrderedDict(
      [('b', {'w': 1}), ('a', {'w': 2, 'v': {'u': 3}})])
  assert flax_adapter.sequential_depth(params) == {'b': {'w': 0},
                                                   'a': {'w': 1, 'v': {'u': 1}}}


def test_a_module_instance_behind_a_factory_keeps_its_program(monkeypatch):
  """The program cache keys on the user code a factory calls: a module
  instance's first use changed its flax bookkeeping, so the second run of
  the same config built (and compiled) its program again."""
  from rahimi_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  net = UserMlp()
  monkeypatch.setitem(models.MODELS, 'test_instance_net',
                      lambda hidden, options: models.from_flax(net))
  config = rj.TrainConfig(model='test_instance_net', steps=4, log_every=4)
  loop = train_lib.make_loop(config)  # builds the model: uses the module
  assert train_lib.make_loop(config) is loop


class DropoutNet(nn.Module):
  """A module that takes ``deterministic`` (flax's convention), not ``train``."""

  @nn.compact
  def __call__(self, x, deterministic):
    return nn.Dense(3)(nn.Dropout(0.5, deterministic=deterministic)(x))


def test_deterministic_is_not_train():
  """``deterministic=not train``: the model's training apply drops inputs as
  flax's own ``apply(..., deterministic=False)`` with the same stream key,
  and its evaluation is flax's deterministic apply (no dropout)."""
  model = models.from_flax(DropoutNet())
  params, state = model.init(jax.random.key(0), 8, 3, KNOBS)
  x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
  key = jax.random.key(1)
  variables = {'params': params}
  y_eval, _ = model.apply(params, state, x, KNOBS, False, key)
  chex.assert_trees_all_close(y_eval, DropoutNet().apply(
      variables, x, deterministic=True), rtol=1e-6)
  y_train, _ = model.apply(params, state, x, KNOBS, True, key)
  chex.assert_trees_all_close(y_train, DropoutNet().apply(
      variables, x, deterministic=False,
      rngs={'dropout': components.component_key(key, 'dropout')}), rtol=1e-6)
  assert not np.allclose(y_train, y_eval)
