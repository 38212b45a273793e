"""Tests of rahimi_jax.grid: axes, the product of members, stacked knobs."""

import dataclasses
import itertools
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import numpy as np

from rahimi_jax import grid as grid_lib
from rahimi_jax.grid import Choice
from rahimi_jax.grid import Gate
from rahimi_jax.grid import Grid
from rahimi_jax.grid import Seeds
from rahimi_jax.grid import Values

OPTIMIZERS = ('sgd', 'adam', 'rmsprop')
RATES = (0.1, 0.01)


def _grid():
  return Grid(Choice('optimizer', OPTIMIZERS), Values('learning_rate', RATES),
              Seeds(2))


def _key_data(keys):
  return np.asarray(jax.random.key_data(keys))


class GridTest(parameterized.TestCase):

  def test_size_is_the_product(self):
    self.assertLen(_grid(), 3 * 2 * 2)
    self.assertLen(Grid(Choice('norm', ('none', 'batch')), Seeds(5)), 10)

  def test_order_last_axis_varies_fastest(self):
    grid = _grid()
    expected = list(itertools.product(OPTIMIZERS, RATES, (0, 1)))
    got = [(m.values['optimizer'], m.values['learning_rate'], m.values['seed'])
           for m in grid.members]
    self.assertEqual(got, expected)
    self.assertEqual([m.index for m in grid.members], list(range(len(grid))))
    # Seeds declared last vary fastest: neighbours are the same config.
    self.assertEqual([m.values['seed'] for m in grid.members[:4]], [0, 1, 0, 1])

  def test_order_follows_declaration(self):
    grid = Grid(Seeds(2), Choice('norm', ('none', 'batch')))
    self.assertEqual([m.name for m in grid.members],
                     ['seed=0,norm=none', 'seed=0,norm=batch',
                      'seed=1,norm=none', 'seed=1,norm=batch'])

  def test_member_names(self):
    grid = _grid()
    self.assertEqual(grid.members[0].name,
                     'optimizer=sgd,learning_rate=0.1,seed=0')
    by_name = {m.name: m for m in grid.members}
    member = by_name['optimizer=adam,learning_rate=0.1,seed=0']
    self.assertEqual(member.values,
                     {'optimizer': 'adam', 'learning_rate': 0.1, 'seed': 0})
    self.assertEqual(member.index, 4)
    self.assertIn('optimizer=rmsprop,learning_rate=0.01,seed=1', by_name)
    self.assertLen(by_name, len(grid))  # names are unique

  def test_names_of_small_and_large_values(self):
    grid = Grid(Values('weight_decay', (1e-4, 3e-5, 250.0, 1.0)))
    self.assertEqual([m.name for m in grid.members],
                     ['weight_decay=0.0001,seed=0', 'weight_decay=3e-05,seed=0',
                      'weight_decay=250,seed=0', 'weight_decay=1,seed=0'])

  def test_names_unique_for_a_logspace_sweep(self):
    rates = np.logspace(-5, 0, 16)
    grid = Grid(Values('learning_rate', rates))
    self.assertLen({m.name for m in grid.members}, 16)

  def test_names_that_collide_are_rejected(self):
    # Names print 6 significant digits; values that differ beyond them would
    # give two members one name (one row key in the results).
    with self.assertRaisesRegex(
        ValueError, r'learning_rate: 0\.1 and 0\.1000001 both read 0\.1 in '
        'member names'):
      Grid(Values('learning_rate', (0.1, 0.1000001)))

  def test_knob_shapes_and_dtypes(self):
    grid = _grid()
    knobs = grid.knobs()
    self.assertEqual(set(knobs), {'optimizer', 'learning_rate', 'seed'})
    chex.assert_shape(knobs['optimizer'], (12, 3))
    self.assertEqual(knobs['optimizer'].dtype, np.float32)
    chex.assert_shape(knobs['learning_rate'], (12,))
    self.assertEqual(knobs['learning_rate'].dtype, np.float32)
    chex.assert_shape(knobs['seed'], (12,))
    self.assertTrue(jax.dtypes.issubdtype(knobs['seed'].dtype,
                                          jax.dtypes.prng_key))

  def test_knob_values(self):
    grid = _grid()
    knobs = grid.knobs()
    onehot = knobs['optimizer']
    np.testing.assert_array_equal(onehot.sum(1), np.ones(12))
    np.testing.assert_array_equal(np.sort(onehot, axis=1)[:, :-1], 0.0)
    for m in grid.members:
      np.testing.assert_array_equal(
          onehot[m.index],
          np.eye(3)[OPTIMIZERS.index(m.values['optimizer'])])
      self.assertEqual(knobs['learning_rate'][m.index],
                       np.float32(m.values['learning_rate']))
      np.testing.assert_array_equal(
          _key_data(knobs['seed'][m.index]),
          _key_data(jax.random.key(m.values['seed'])))

  def test_gate_knobs_weigh_off_and_on(self):
    # Gate g is the weight pair (1 - g, g) on (off, on): gate 0 runs the
    # ablated option alone, gate 1 the present one (by hand).
    grid = Grid(Gate('norm', 'none', 'batch', (0.0, 0.3, 1.0)))
    self.assertEqual(grid.choices, {'norm': ('none', 'batch')})
    self.assertEqual([m.name for m in grid.members],
                     ['norm=0,seed=0', 'norm=0.3,seed=0', 'norm=1,seed=0'])
    knobs = grid.knobs()['norm']
    self.assertEqual(knobs.dtype, np.float32)
    chex.assert_trees_all_close(
        knobs, np.asarray([[1.0, 0.0], [0.7, 0.3], [0.0, 1.0]], np.float32))

  def test_seeds_past_2_31_are_their_own_keys(self):
    # Each seed's key is jax.random.key(seed), up to 2**32 - 1: seeds that
    # differ by 2**31 are different runs.
    seeds = (5, 2**31 + 5, 2**32 - 1)
    keys = _key_data(Grid(Seeds(seeds)).knobs()['seed'])
    chex.assert_trees_all_equal(
        keys, np.stack([_key_data(jax.random.key(s)) for s in seeds]))

  def test_subset_keeps_every_option_of_a_kept_axis(self):
    # Member 4 is (adam, 0.1, seed 0): a kept axis keeps its three options,
    # so its knob is the full grid's row; the others keep the labels used.
    grid = _grid()
    sub = grid.subset([4], keep=['optimizer'])
    self.assertEqual(sub.axis('optimizer').options, OPTIMIZERS)
    self.assertEqual(sub.axis('learning_rate').values, (0.1,))
    self.assertEqual(sub.axis('seed').seeds, (0,))
    self.assertEqual([m.name for m in sub.members], [grid.members[4].name])
    chex.assert_trees_all_equal(sub.knobs()['optimizer'],
                                np.asarray([[0.0, 1.0, 0.0]], np.float32))
    chex.assert_trees_all_equal(grid.subset([4]).knobs()['optimizer'],
                                np.asarray([[1.0]], np.float32))

  def test_seed_keys_follow_the_prng_implementation_in_force(self):
    grid = Grid(Seeds((3, 7)))
    assert Seeds(s for s in (3, 7)) == grid.axes[0]  # any iterable of seeds
    previous = jax.config.jax_default_prng_impl
    try:
      for impl in ('rbg', previous):
        jax.config.update('jax_default_prng_impl', impl)
        keys = grid.knobs()['seed']
        for i, seed in enumerate((3, 7)):
          np.testing.assert_array_equal(_key_data(keys[i]),
                                        _key_data(jax.random.key(seed)))
    finally:
      jax.config.update('jax_default_prng_impl', previous)

  def test_members_that_differ_only_in_a_component_share_the_seed_key(self):
    knobs = _grid().knobs()
    keys = _key_data(knobs['seed'])
    np.testing.assert_array_equal(keys[0], keys[2])  # sgd 0.1 vs sgd 0.01
    np.testing.assert_array_equal(keys[0], keys[4])  # sgd vs adam
    self.assertFalse(np.array_equal(keys[0], keys[1]))  # seed 0 vs seed 1

  def test_seeds_added_when_absent(self):
    grid = Grid(Choice('norm', ('none', 'batch')))
    self.assertEqual(grid.axis_names, ('norm', 'seed'))
    self.assertEqual(grid.axis('seed'), Seeds(1))
    self.assertLen(grid, 2)
    self.assertEqual([m.name for m in grid.members],
                     ['norm=none,seed=0', 'norm=batch,seed=0'])
    chex.assert_shape(grid.knobs()['seed'], (2,))

  def test_seeds_not_added_when_present(self):
    grid = Grid(Seeds((3, 7)), Choice('norm', ('none',)))
    self.assertEqual(grid.axis_names, ('seed', 'norm'))
    self.assertEqual([m.values['seed'] for m in grid.members], [3, 7])

  def test_axes_as_a_list(self):
    grid = Grid([Choice('norm', ('none', 'batch')), Seeds(2)])
    self.assertEqual([m.name for m in grid.members],
                     [m.name for m in Grid(Choice('norm', ('none', 'batch')),
                                           Seeds(2)).members])

  def test_knobs_subset(self):
    grid = _grid()
    full = grid.knobs()
    rows = [5, 0, 11]
    sub = grid.knobs(members=rows)
    np.testing.assert_array_equal(sub['optimizer'], full['optimizer'][rows])
    np.testing.assert_array_equal(sub['learning_rate'],
                                  full['learning_rate'][rows])
    np.testing.assert_array_equal(_key_data(sub['seed']),
                                  _key_data(full['seed'])[rows])
    chex.assert_shape(sub['optimizer'], (3, 3))

  def test_axis_lookup(self):
    grid = _grid()
    self.assertEqual(grid.axis('learning_rate'), Values('learning_rate', RATES))
    with self.assertRaisesRegex(ValueError,
                                "'lr'.*optimizer, learning_rate, seed"):
      grid.axis('lr')

  def test_choices_are_the_choice_axes(self):
    grid = Grid(Choice('norm', ('none', 'batch')), Values('momentum', (0.9,)),
                Choice('activation', ('relu',)))
    self.assertEqual(grid.choices,
                     {'norm': ('none', 'batch'), 'activation': ('relu',)})

  def test_repr_mentions_size(self):
    self.assertIn('with 12 members', repr(_grid()))


class UnionTest(parameterized.TestCase):

  def _union(self):
    return Grid.union(
        Grid(Choice('optimizer', ['sgd']),
             Values('learning_rate', [0.1, 0.01])),
        Grid(Choice('optimizer', ['adam']), Values('learning_rate', [1e-3])))

  def test_members_in_order(self):
    grid = self._union()
    self.assertEqual([m.name for m in grid.members],
                     ['optimizer=sgd,learning_rate=0.1,seed=0',
                      'optimizer=sgd,learning_rate=0.01,seed=0',
                      'optimizer=adam,learning_rate=0.001,seed=0'])
    self.assertEqual([m.index for m in grid.members], [0, 1, 2])

  def test_axes_merge_labels(self):
    grid = self._union()
    self.assertEqual(grid.axis('optimizer').options, ('sgd', 'adam'))
    self.assertEqual(grid.axis('learning_rate').values, (0.1, 0.01, 0.001))
    self.assertEqual(grid.choices, {'optimizer': ('sgd', 'adam')})

  def test_knobs(self):
    knobs = self._union().knobs()
    np.testing.assert_array_equal(knobs['optimizer'], [[1, 0], [1, 0], [0, 1]])
    np.testing.assert_array_equal(
        knobs['learning_rate'], np.asarray([0.1, 0.01, 0.001], np.float32))
    chex.assert_shape(knobs['seed'], (3,))

  @parameterized.named_parameters(
      ('empty', lambda: Grid.union(), 'at least one grid'),
      ('different_axes', lambda: Grid.union(
          Grid(Choice('norm', ['none'])), Grid(Choice('activation', ['relu']))),
       r"same axes.*\['norm', 'seed'\].*\['activation', 'seed'\]"),
      ('different_kinds', lambda: Grid.union(
          Grid(Choice('x', ['a'])), Grid(Values('x', [1.0]))),
       r"'x' is of different kinds.*Choice.*Values"),
      ('overlap', lambda: Grid.union(
          Grid(Choice('norm', ['none', 'batch'])),
          Grid(Choice('norm', ['batch']))),
       'listed twice: norm=batch,seed=0'),
      # It kept the first grid's pair: gate 1 of the second ran batch norm.
      ('gate_ends', lambda: Grid.union(
          Grid(Gate('norm', 'none', 'batch', (0.0,))),
          Grid(Gate('norm', 'none', 'layer', (1.0,)))),
       r"Gate 'norm' runs between other options in Grid.union: none..batch, "
       r'none..layer'),
  )
  def test_bad_unions(self, make, pattern):
    with self.assertRaisesRegex(ValueError, pattern):
      make()

  def test_a_union_over_the_member_limit_is_refused(self):
    # Each grid is within the limit, the union is not (both built on the
    # host first, as a product over it would be).
    with mock.patch.object(grid_lib, 'MAX_MEMBERS', 5):
      with self.assertRaisesRegex(ValueError, r'A union of 6 members \(3 \+ 3\) '
                                  r'is over 5'):
        Grid.union(Grid(Seeds(3)), Grid(Seeds((3, 4, 5))))
      self.assertLen(Grid.union(Grid(Seeds(3)), Grid(Seeds((3, 4)))), 5)


class AxisTest(parameterized.TestCase):

  def test_choice_normalizes_options(self):
    self.assertEqual(Choice('norm', ['none', 'batch']).options,
                     ('none', 'batch'))
    self.assertEqual(Choice('norm', 'batch').options, ('batch',))

  def test_values_normalizes(self):
    self.assertEqual(Values('lr', 0.1).values, (0.1,))
    self.assertEqual(Values('lr', np.asarray([1, 2])).values, (1.0, 2.0))
    self.assertIsInstance(Values('lr', [1]).values[0], float)

  def test_seeds_normalizes(self):
    self.assertEqual(Seeds(3).seeds, (0, 1, 2))
    self.assertEqual(Seeds([4, 2]).seeds, (4, 2))
    self.assertEqual(Seeds(np.int64(2)).seeds, (0, 1))
    self.assertEqual(Seeds(1).name, 'seed')

  @parameterized.parameters(
      (lambda: Choice('norm', 'x'), 'options'),
      (lambda: Values('lr', 0.1), 'values'),
      (lambda: Seeds(2), 'seeds'),
  )
  def test_axes_are_frozen(self, make, field):
    with self.assertRaises(dataclasses.FrozenInstanceError):
      setattr(make(), field, ())

  @parameterized.named_parameters(
      ('choice_empty', lambda: Choice('norm', ()),
       'norm: empty list of options; accepted: none, batch'),
      ('choice_twice', lambda: Choice('norm', ('batch', 'none', 'batch')),
       r"norm: options listed twice.*'batch'"),
      ('values_empty', lambda: Values('learning_rate', ()),
       'learning_rate: empty'),
      ('values_twice', lambda: Values('learning_rate', (0.1, 0.1)),
       r'learning_rate: values listed twice.*0\.1'),
      ('values_nan', lambda: Values('learning_rate', (0.1, float('nan'))),
       r'learning_rate: values must be finite.*nan'),
      ('values_inf', lambda: Values('momentum', (np.inf,)),
       r'momentum: values must be finite.*inf'),
      # The knob is float32: 1e-50 would train at 0, 1e39 at infinity.
      ('values_float32_zero', lambda: Values('learning_rate', (1e-50, 0.1)),
       r"learning_rate: 1e-50 is out of float32's range"),
      ('values_float32_inf', lambda: Values('learning_rate', (1e39,)),
       r"learning_rate: 1e\+39 is out of float32's range"),
      ('values_not_numbers', lambda: Values('learning_rate', ('fast',)),
       r"learning_rate: values must be numbers.*'fast'"),
      ('values_bool', lambda: Values('learning_rate', (0.1, True)),
       r'learning_rate: values must be numbers.*True'),
      ('seeds_zero', lambda: Seeds(0), r'seeds must be a count from 1 to .*; got 0'),
      ('seeds_negative_count', lambda: Seeds(-3), r'got -3'),
      ('seeds_negative', lambda: Seeds((1, -2)), r'\[0, 2\*\*32\).*-2'),
      ('seeds_twice', lambda: Seeds((4, 4)), r'distinct.*\[4, 4\]'),
      ('seeds_empty', lambda: Seeds(()), 'empty'),
      ('seeds_not_ints', lambda: Seeds(('a',)), r"integers.*'a'"),
      ('seeds_bool', lambda: Seeds(True), 'True'),
      ('seeds_string', lambda: Seeds('12'), r"integers; got '12'"),
      ('seeds_fractions', lambda: Seeds((1.9, 2.5)), r'integers.*1\.9'),
      ('gates_string', lambda: Gate('norm', 'none', 'batch', '01'),
       r"gates must be numbers; got '01'"),
      # A weight pair (1 - g, g) off the simplex: (-0.5, 1.5).
      ('gates_above_1', lambda: Gate('norm', 'none', 'batch', (0.0, 1.5)),
       r'norm: gates must be a non-empty list in \[0, 1\]; got \[0\.0, 1\.5\]'),
      ('gates_below_0', lambda: Gate('norm', 'none', 'batch', (-0.25,)),
       r'got \[-0\.25\]'),
      ('choice_name_space', lambda: Choice('my norm', ('none',)),
       r"identifier; got 'my norm'"),
      ('values_name_digit', lambda: Values('1lr', (0.1,)),
       r"identifier; got '1lr'"),
      ('choice_name_not_str', lambda: Choice(3, ('none',)), 'identifier; got 3'),
      ('grid_twice', lambda: Grid(Choice('norm', ('none',)),
                                  Values('norm', (1.0,))),
       r'declared twice: norm'),
      ('grid_seeds_twice', lambda: Grid(Seeds(2), Seeds(3)),
       r'declared twice: seed'),
      ('seeds_too_many', lambda: Seeds(10**8),
       r'seeds must be a count from 1 to 1,000,000.*got 100000000'),
      ('grid_too_big', lambda: Grid(Choice('norm', ('none', 'batch')),
                                    Seeds(10**6)),
       r'A grid of 2,000,000 members \(2 norm x 1000000 seed\) is over '
       '1,000,000'),
      ('grid_not_an_axis', lambda: Grid(Choice('norm', ('none',)), 'lr'),
       r"Choice, Gate, Values or Seeds; got 'lr'"),
  )
  def test_bad_input_names_the_bad_value(self, make, pattern):
    with self.assertRaisesRegex(ValueError, pattern):
      make()

  def test_seeds_name_must_be_an_identifier(self):
    with self.assertRaisesRegex(ValueError, 'identifier'):
      Seeds(2, name='my seed')

  def test_seed_too_large_for_a_key(self):
    with self.assertRaisesRegex(ValueError, '4294967296'):
      Grid(Seeds((2**32,))).knobs()


if __name__ == '__main__':
  absltest.main()
