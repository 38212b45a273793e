"""An axis is one declaration: a throwaway axis reaches every layer from it."""

import copy
import pickle
import re

from absl import flags
import jax
import numpy as np
import optax
import pytest

from rahimi_jax import cli
from rahimi_jax import components
from rahimi_jax import engine
from rahimi_jax import models
from rahimi_jax import registry
from rahimi_jax import train as train_lib
from rahimi_jax.components import relaxed
from rahimi_jax.studies import ablation

# Declared as a new component module would declare its axis: the options, a
# default, the options an ablation varies, a value knob, a flag and its help.
OUTPUTS = {'identity': lambda y: y, 'zero': lambda y: 0.0 * y}
AXIS = registry.Axis(
    name='output', options=OUTPUTS, default='identity', flag='outputs',
    help='What the readout emits.', study=('identity', 'zero'),
    knobs=(registry.Knob('gain', 1.0, 'Gain of the readout.', inclusive=True),))


def _gained_linear(hidden, options):
  """The one place the axis acts: a linear model whose readout it chooses."""
  del hidden
  emit = relaxed.relax([OUTPUTS[n] for n in options['output']])

  def init(key, in_dim, out_dim, knobs):
    del knobs
    return {'w': jax.random.normal(key, (in_dim, out_dim)) / in_dim**0.5}, {}

  def apply(params, state, x, knobs, train, key=None):
    del train, key
    return emit(knobs['output'], knobs['gain'] * (x @ params['w'])), state

  return models.Model(init, apply, choice_axes=('output',))


@pytest.fixture
def throwaway(monkeypatch):
  monkeypatch.setattr(registry, 'AXES', dict(registry.AXES))
  monkeypatch.setitem(models.MODELS, 'gained_linear', _gained_linear)
  return registry.register(AXIS)


def test_throwaway_axis_from_flags_to_results(throwaway, tiny_synthetic):
  del throwaway
  flag_values = flags.FlagValues()
  cli.define_axis_flags(flag_values)
  help_text = flag_values['outputs'].help
  assert 'identity, zero' in help_text and 'Default: identity,zero' in help_text
  flag_values(['prog', '--gain=0,1', '--optimizers=sgd'])
  options, values = cli.axis_flag_values(flag_values)
  assert options == {'optimizer': ['sgd']} and values == {'gain': ['0', '1']}
  config = ablation.AblationConfig(
      dataset='synthetic', model='gained_linear', hidden=(), options=options,
      values=values, seeds=1, steps=1, batch_size=0)
  # The model reads the new axis: the ablation varies its study options.
  assert dict(config.options)['output'] == ('identity', 'zero')
  grid = config.grid()
  assert grid.axis_names == ('optimizer', 'output', 'learning_rate', 'gain',
                             'seed')
  res = engine.run(config.train_config(), grid, tiny_synthetic)
  first = res.where(step=0)
  loss = dict(zip(zip(first.columns['output'], first.columns['gain']),
                  first.columns['train_loss']))
  # Prediction 0 (the zero option, or a gain of 0): the loss of predicting
  # nothing, 0.5 * mean ||y||^2, computed here from the data.
  silent = 0.5 * np.mean(np.sum(np.square(tiny_synthetic.y_train), -1))
  np.testing.assert_allclose(
      [loss[('zero', 0.0)], loss[('zero', 1.0)], loss[('identity', 0.0)]],
      [silent] * 3, rtol=1e-5)
  assert abs(loss[('identity', 1.0)] - silent) > 1e-3 * silent
  assert 'output' in res.summary_table('test_loss')


def test_throwaway_axis_unknown_to_other_models(throwaway):
  del throwaway
  with pytest.raises(ValueError, match="outputs: model 'mlp' has no output"):
    ablation.AblationConfig(options={'output': ('zero',)})
  # Not varied, it stays at its default and the MLP's configs are unchanged.
  assert 'output' not in dict(ablation.AblationConfig().options)
  assert train_lib.TrainConfig().option_dict()['output'] == ('identity',)


def test_register_refuses_taken_names(throwaway):
  with pytest.raises(ValueError, match="axis 'output'.*already registered"):
    registry.register(throwaway)
  with pytest.raises(ValueError, match="knob 'momentum'.*already declared"):
    registry.register(registry.Axis(
        name='other', options=OUTPUTS, default='zero', flag='others', help='',
        knobs=(registry.Knob('momentum', 0.5, ''),)))
  with pytest.raises(ValueError, match="Unknown output 'bogus'; accepted: "
                     'identity, zero'):
    registry.Axis(name='output', options=OUTPUTS, default='bogus', flag='x',
                  help='')



def test_a_string_or_two_names_of_one_option_are_refused():
  """A bare string is not split into letters; two spellings of one number
  format or placement would be identical members under two labels."""
  from rahimi_jax.components import placement, precision  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="got the string 'float32'"):
    precision.AXIS.check('float32')
  for axis, names in ((precision.AXIS, ('bfloat16', 'e8m7')),
                      (precision.AXIS, ('float32', 'e8m23')),
                      (placement.AXIS, ('storage+gradients',
                                        'gradients+storage'))):
    with pytest.raises(ValueError, match=re.escape(
        f"'{names[0]}' and '{names[1]}' are one option")):
      axis.check(names)
  assert precision.AXIS.check(('bfloat16', 'e8m3')) == ('bfloat16', 'e8m3')
  with pytest.raises(ValueError, match=r'accepted: .*e<E>m<M>'):
    precision.AXIS.check(())


def test_options_keep_their_built_ins_and_check_what_is_added(monkeypatch):
  optimizers = components.OPTIMIZERS
  sgd = lambda hp: optax.sgd(hp['learning_rate'])
  # A built-in name given to another option: its results would say 'adam'
  # for SGD's (they did: two equal rows, one labelled adam).
  built_in = re.escape("optimizer 'adam' is built in: its results would "
                       'carry its name for another option. Register yours '
                       'under a new name (built in: sgd, momentum,')
  for change in (lambda: optimizers.__setitem__('adam', sgd),
                 lambda: optimizers.update(adam=sgd),
                 lambda: optimizers.__delitem__('adam'),
                 lambda: optimizers.pop('adam')):
    with pytest.raises(ValueError, match=built_in):
      change()
  adam = optimizers['adam']
  optimizers['adam'] = adam  # the same object: nothing changes
  assert optimizers['adam'] is adam
  # A user's name may be registered again (a cell run again), and removed.
  monkeypatch.setitem(optimizers, 'user_sgd', sgd)
  optimizers['user_sgd'] = again = lambda hp: sgd(hp)
  assert optimizers['user_sgd'] is again
  # Copies keep which ones are built in.
  for other in (copy.copy(optimizers), copy.deepcopy(optimizers),
                pickle.loads(pickle.dumps(registry.Options('output', {
                    'abs': abs, 'len': len})))):
    assert isinstance(other, registry.Options)
    with pytest.raises(ValueError, match='is built in'):
      other[other.builtin[0]] = None
  # What is added is checked when assigned, with the accepted form named.
  for options, value, label, accepted in (
      (optimizers, 3, "optimizer 'bad': got 3", '; accepted: a function '
       'make(hp) -> optax.GradientTransformation.'),
      (components.ACTIVATIONS, lambda x: x, "activation 'bad': ",
       '<lambda> cannot be called as act(x, key=None) -> y (got an '
       "unexpected keyword argument 'key')."),
      (components.INITS, lambda key, shape: key, "init 'bad': ",
       '<lambda> cannot be called as init(key, shape, dtype) -> array'),
      (components.NORMS, lambda x: x, "norm 'bad': got ",
       '<lambda>; accepted: a components.norms.Norm (init, apply).')):
    with pytest.raises(TypeError,
                       match=re.escape(label) + '.*' + re.escape(accepted)):
      options['bad'] = value
    assert 'bad' not in options
  with pytest.raises(TypeError, match="option name 3; accepted: a non-empty"):
    optimizers[3] = sgd
  # An update that holds a refused entry adds none of its entries.
  with pytest.raises(ValueError, match="'adam' is built in"):
    optimizers.update({'user_other': sgd, 'adam': sgd})
  assert 'user_other' not in optimizers


@pytest.mark.parametrize('value, ok', [
    (-1, False), (0, True), (2**32 - 1, True), (2**32, False),
    (np.int64(7), True), (True, False), (1.0, False)])
def test_check_int_is_the_half_open_interval_it_names(value, ok):
  """``check_int(name, value, 0, 2**32)`` accepts exactly the integers of
  [0, 2**32) its message names (the upper end excluded: a uint32 seed)."""
  if ok:
    assert registry.check_int('seed', value, 0, 2**32) == int(value)
  else:
    with pytest.raises(ValueError, match=re.escape(
        f'seed must be an integer in [0, 2**32); got {value!r}.')):
      registry.check_int('seed', value, 0, 2**32)


def test_a_knob_no_option_reads_is_refused_naming_its_readers():
  """momentum is read by the momentum and nesterov optimizers only: a grid
  of sgd and adam that sets it would hold identical copies."""
  registry.check_knob_read('momentum', ('sgd', 'nesterov'))
  with pytest.raises(ValueError, match='momentum: no member reads it: the '
                     'optimizer options here are sgd, adam, and it is read by '
                     'momentum, nesterov'):
    registry.check_knob_read('momentum', ('sgd', 'adam'))
