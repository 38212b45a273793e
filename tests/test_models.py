"""Tests of rahimi_jax.models: every registry entry's (init, apply) pair.

Knobs are built as ``train._resolve_knobs`` builds them: one weight vector per
choice axis (one weight per option) and a float32 ``init_scale``.
"""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import chex
import flax.linen as nn
import jax
from jax import test_util as jtu
import jax.numpy as jnp
import numpy as np
import optax

from rahimi_jax import components
from rahimi_jax import models
from rahimi_jax.models.cnn import Conv
from rahimi_jax.models.cnn import kernel_size
from rahimi_jax.models.cnn import PADDING
from rahimi_jax.models.cnn import STRIDE

MODEL_NAMES = sorted(models.MODELS)
IN_DIM, OUT_DIM, BATCH = 5, 3, 4
HIDDEN = ((), (4,), (4, 4))

# One option per axis: the plain model.
PLAIN = {'init': ('gaussian',), 'norm': ('none',), 'activation': ('relu',)}
# Every option of every axis: the fully relaxed model. (Each initializer
# compiles a program per weight shape, so the tests that use every
# initializer keep to the shapes of hidden=(4,).)
ALL = {'init': tuple(sorted(components.INITS)),
       'norm': tuple(sorted(components.NORMS)),
       'activation': tuple(sorted(components.ACTIVATIONS))}
# Every norm and activation, one initializer.
MIXED = ALL | {'init': ('gaussian',)}


def _knobs(options, init_scale=1.0, dtype=np.float32, **vertex):
  """Uniform weights per axis, or one-hot at ``vertex[axis]`` where given."""
  knobs = {}
  for axis, names in options.items():
    if axis in vertex:
      knobs[axis] = np.asarray([n == vertex[axis] for n in names], dtype)
    else:
      knobs[axis] = np.full(len(names), 1 / len(names), dtype)
  knobs['init_scale'] = np.asarray(init_scale, dtype)
  return knobs


def _x(seed=0, dtype=np.float32):
  return np.random.default_rng(seed).standard_normal((BATCH, IN_DIM)).astype(
      dtype)


def _weight_matrices(params):
  """Dense weight matrices and conv kernels, input to output."""
  return [l for l in jax.tree.leaves(params) if np.ndim(l) >= 2]


def _np(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _vertices(name):
  """(axis, option) for every option of every choice axis ``name`` reads."""
  model = models.get_model(name)((), PLAIN)
  return [(f'{name}_{axis}_{option}', name, axis, option)
          for axis in model.choice_axes for option in ALL[axis]]


class ModelTest(parameterized.TestCase):

  @parameterized.product(name=MODEL_NAMES, hidden=HIDDEN)
  def test_shapes(self, name, hidden):
    model = models.get_model(name)(hidden, MIXED)
    knobs = _knobs(MIXED)
    # The flax CNN runs op by op slowly (every mixture option of every
    # layer): one program each instead.
    init, apply = model.init, model.apply
    if name == 'cnn':
      init = jax.jit(init, static_argnums=(1, 2))
      apply = jax.jit(apply, static_argnums=4)
    params, state = init(jax.random.key(0), IN_DIM, OUT_DIM, knobs)
    mats = _weight_matrices(params)
    widths = (IN_DIM,) + hidden + (OUT_DIM,)
    shapes = list(zip(widths[:-1], widths[1:]))
    if name == 'mlp':  # the readout is stored [out, in]
      shapes[-1] = shapes[-1][::-1]
    if name == 'cnn':  # kernels [window, in channels, out]; flattened readout
      length, channels, shapes = IN_DIM, 1, []
      for i, features in enumerate(hidden):
        k = kernel_size(i)
        shapes.append((k, channels, features))
        length = (length + 2 * PADDING - k) // STRIDE + 1
        channels = features
      shapes.append((length * channels, OUT_DIM))
    self.assertEqual([m.shape for m in mats], shapes)
    for train in (True, False):
      y, new_state = apply(params, state, _x(), knobs, train)
      chex.assert_shape(y, (BATCH, OUT_DIM))
      chex.assert_tree_all_finite(y)
      chex.assert_trees_all_equal_structs(new_state, state)
      chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)

  @parameterized.parameters(MODEL_NAMES)
  def test_per_sample_models_evaluate_each_row_alone(self, name):
    """``Model.per_sample``: in evaluation a row's output is the output of
    that row alone (every norm mixed in, batch norm's running statistics
    moved off their initial values by a training call)."""
    model = models.get_model(name)((4,), MIXED)
    self.assertTrue(model.per_sample)
    knobs = _knobs(MIXED)
    apply = jax.jit(model.apply, static_argnums=4)
    params, state = jax.jit(model.init, static_argnums=(1, 2))(
        jax.random.key(0), IN_DIM, OUT_DIM, knobs)
    _, state = apply(params, state, _x(1) * 3 + 1, knobs, True)
    x = _x()
    rows = np.concatenate([apply(params, state, x[i:i + 1], knobs, False)[0]
                           for i in range(BATCH)])
    chex.assert_trees_all_close(apply(params, state, x, knobs, False)[0],
                                rows, rtol=1e-5, atol=1e-6)
    # Training mode uses the batch's statistics: not per row.
    self.assertFalse(np.allclose(apply(params, state, x, knobs, True)[0], [
        apply(params, state, x[i:i + 1], knobs, True)[0][0]
        for i in range(BATCH)], atol=1e-3))

  @parameterized.parameters(MODEL_NAMES)
  def test_choice_axes_are_knobs(self, name):
    model = models.get_model(name)((4,), ALL)
    self.assertNotEmpty(model.choice_axes)
    self.assertContainsSubset(model.choice_axes, set(ALL))
    self.assertIn('init', model.choice_axes)

  @parameterized.parameters(MODEL_NAMES)
  def test_init_scale_scales_every_weight_matrix(self, name):
    model = models.get_model(name)((4,), ALL)
    key = jax.random.key(1)
    init = jax.jit(model.init, static_argnums=(1, 2))  # one program, 3 calls
    p1, s1 = init(key, IN_DIM, OUT_DIM, _knobs(ALL, 1.0))
    p2, s2 = init(key, IN_DIM, OUT_DIM, _knobs(ALL, 2.5))
    p0, _ = init(key, IN_DIM, OUT_DIM, _knobs(ALL, 0.0))
    self.assertLen(_weight_matrices(p1), 2)
    for a, b, z in zip(jax.tree.leaves(p1), jax.tree.leaves(p2),
                       jax.tree.leaves(p0)):
      if np.ndim(a) >= 2:  # a weight matrix or kernel: scaled linearly
        self.assertGreater(np.abs(a).max(), 0.1)
        np.testing.assert_allclose(b, 2.5 * np.asarray(a), rtol=1e-6)
        np.testing.assert_array_equal(z, 0.0)
      else:  # biases and norm parameters: untouched
        chex.assert_trees_all_equal(a, b)
        chex.assert_trees_all_equal(a, z)
    chex.assert_trees_all_equal(s1, s2)

  @parameterized.parameters(MODEL_NAMES)
  def test_init_scale_is_traced(self, name):
    model = models.get_model(name)((), PLAIN)
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def init(key, knobs):
      return model.init(key, IN_DIM, OUT_DIM, knobs)[0]

    a = init(jax.random.key(0), _knobs(PLAIN, 1.0))
    b = init(jax.random.key(0), _knobs(PLAIN, 0.5))
    for wa, wb in zip(_weight_matrices(a), _weight_matrices(b)):
      np.testing.assert_allclose(wb, 0.5 * np.asarray(wa), rtol=1e-6)

  @parameterized.parameters(MODEL_NAMES)
  def test_key_determines_params(self, name):
    model = models.get_model(name)((4,), PLAIN)
    knobs = _knobs(PLAIN)
    a, _ = model.init(jax.random.key(0), IN_DIM, OUT_DIM, knobs)
    chex.assert_trees_all_equal(
        a, model.init(jax.random.key(0), IN_DIM, OUT_DIM, knobs)[0])
    b, _ = model.init(jax.random.key(1), IN_DIM, OUT_DIM, knobs)
    mats_a, mats_b = _weight_matrices(a), _weight_matrices(b)
    self.assertFalse(np.allclose(mats_a[0], mats_b[0]))
    # Layers draw from different keys.
    self.assertFalse(np.allclose(np.ravel(mats_a[0])[:6], np.ravel(mats_a[1])[:6]))

  @parameterized.parameters(MODEL_NAMES)
  def test_layers_of_one_shape_draw_independent_weights(self, name):
    """Hidden layers of one shape (8 -> 8 twice) draw from their own keys:
    their weights are uncorrelated (|r| < 0.45, 3.5 standard errors of r
    over >= 64 pairs; one key for both gives r = 1)."""
    model = models.get_model(name)((8, 8, 8), PLAIN)
    params, _ = jax.jit(model.init, static_argnums=(1, 2))(
        jax.random.key(0), 8, OUT_DIM, _knobs(PLAIN))
    second, third = _weight_matrices(_np(params))[1:3]
    chex.assert_equal_shape((second, third))
    self.assertLess(abs(np.corrcoef(second.ravel(), third.ravel())[0, 1]),
                    0.45)

  @parameterized.named_parameters(
      *[v for name in MODEL_NAMES for v in _vertices(name)])
  def test_vertex_of_relaxed_model_is_exactly_the_plain_model(
      self, name, axis, option):
    """A grid point of the relaxed model is the model with that one option."""
    make = models.get_model(name)
    relaxed = make((4,), ALL)
    alone_options = {a: (option,) if a == axis else ALL[a][:1] for a in ALL}
    alone = make((4,), alone_options)
    vertex = {a: names[0] for a, names in alone_options.items()}
    knobs_r = _knobs(ALL, 1.3, **vertex)
    knobs_a = _knobs(alone_options, 1.3)
    key = jax.random.key(2)
    params_r, state_r = relaxed.init(key, IN_DIM, OUT_DIM, knobs_r)
    params_a, state_a = alone.init(key, IN_DIM, OUT_DIM, knobs_a)
    chex.assert_trees_all_equal(_weight_matrices(params_r),
                                _weight_matrices(params_a))
    y_r, _ = relaxed.apply(params_r, state_r, _x(), knobs_r, True)
    y_a, _ = alone.apply(params_a, state_a, _x(), knobs_a, True)
    if name == 'deep_linear' and alone_options['norm'] == ('none',):
      # Without norms the product is associated in its cheapest order
      # (the fast path); a relaxed model with norms multiplies layer by layer.
      chex.assert_trees_all_close(y_r, y_a, rtol=1e-6, atol=1e-6)
    else:
      chex.assert_trees_all_equal(y_r, y_a)

  @parameterized.parameters(MODEL_NAMES)
  def test_lecun_normal_weights_have_variance_one_over_fan_in(self, name):
    """At ``init_scale`` 1 every weight matrix and kernel drawn by
    lecun_normal has variance 1/fan_in, fan_in the inputs one output unit
    reads (LeCun et al. 1998): the layer's input width; the window times the
    input channels for a conv kernel; the flattened map for the CNN's readout
    (40 -> 19 -> 10 positions of 16 channels); the MLP's readout, stored
    [out, in], reads its 128 hidden units. 5 standard errors of each
    variance (>= 640 draws: < 0.3) refuse a fan off by 2x or more."""
    options = PLAIN | {'init': ('lecun_normal',)}
    model = models.get_model(name)((128,) if name != 'cnn' else (128, 16),
                                   options)
    params, _ = jax.jit(model.init, static_argnums=(1, 2))(
        jax.random.key(0), 64 if name != 'cnn' else 40, 16, _knobs(options))
    fan_in = {'mlp': [64, 128], 'deep_linear': [64, 128],
              'cnn': [5 * 1, 3 * 128, 10 * 16]}[name]
    mats = _weight_matrices(_np(params))
    self.assertLen(mats, len(fan_in))
    for w, fan in zip(mats, fan_in):
      self.assertGreaterEqual(w.size, 640)
      np.testing.assert_allclose(np.mean(w**2) * fan, 1.0,
                                 rtol=5 * np.sqrt(2 / w.size))

  def test_unknown_model(self):
    with self.assertRaisesRegex(ValueError, r"'resnet'.*deep_linear.*mlp"):
      models.get_model('resnet')

  @parameterized.parameters(MODEL_NAMES)
  def test_unknown_option(self, name):
    with self.assertRaisesRegex(ValueError, "'bogus'"):
      models.get_model(name)((4,), ALL | {'init': ('bogus',)})


class DeepLinearTest(parameterized.TestCase):

  @parameterized.parameters([((6,),), ((3, 20, 5),)])
  def test_chain_and_its_derivatives_against_numpy(self, hidden):
    """The fast path's chain of products (unrolled where every dimension is
    at most 16; a dot where one is larger: the 40-sample batch, the 20-wide
    layer), against NumPy's product, and its derivatives in both modes (the
    least-squares solvers take forward-mode ones)."""
    model = models.get_model('deep_linear')(hidden, PLAIN)
    params, _ = model.init(jax.random.key(3), IN_DIM, OUT_DIM, _knobs(PLAIN))
    params = _np(params)
    x = np.random.default_rng(4).standard_normal((40, IN_DIM))
    expected = x
    for w in params['w']:
      expected = expected @ w
    with jax.enable_x64(True):
      knobs = _knobs(PLAIN, dtype=np.float64)

      def f(params):
        return model.apply(params, {}, x, knobs, True)[0]

      np.testing.assert_allclose(jax.jit(f)(params), expected, rtol=1e-12,
                                 atol=1e-12)
      jtu.check_grads(jax.jit(f), (params,), order=2, modes=('fwd', 'rev'))

  @parameterized.parameters([(h,) for h in HIDDEN])
  def test_output_is_the_product(self, hidden):
    model = models.get_model('deep_linear')(hidden, PLAIN)
    knobs = _knobs(PLAIN)
    params, state = model.init(jax.random.key(0), IN_DIM, OUT_DIM, knobs)
    self.assertEqual(list(params), ['w'])
    self.assertLen(params['w'], len(hidden) + 1)
    x = _x()
    expected = x.astype(np.float64)
    for w in _np(params)['w']:
      expected = expected @ w
    for train in (True, False):
      y, new_state = model.apply(params, state, x, knobs, train)
      np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
      self.assertEqual(new_state, state)

  def test_two_layer(self):
    model = models.get_model('deep_linear')((4,), PLAIN)
    w1 = np.arange(20.0, dtype=np.float32).reshape(5, 4) / 20
    w2 = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)
    y, _ = model.apply({'w': [w1, w2]}, {}, _x(), _knobs(PLAIN), True)
    np.testing.assert_allclose(y, _x() @ w1 @ w2, rtol=1e-5, atol=1e-6)


class MlpTest(parameterized.TestCase):

  def test_output_by_hand(self):
    options = {'init': ('gaussian',), 'norm': ('layer',),
               'activation': ('tanh',)}
    model = models.get_model('mlp')((4,), options)
    knobs = _knobs(options)
    params, state = model.init(jax.random.key(0), IN_DIM, OUT_DIM, knobs)
    # Non-trivial biases and norm scale.
    params = jax.tree.map(lambda p: p + 0.1 * np.arange(p.shape[-1]), params)
    y, _ = model.apply(params, state, _x(), knobs, True)
    p = _np(params)
    h = _x().astype(np.float64) @ p['dense'][0]['w']
    h = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True)
                                                  + 1e-5)
    h = np.tanh(h * p['norm'][0]['layer']['scale'] + p['dense'][0]['b'])
    chex.assert_shape(p['readout']['w'], (OUT_DIM, 4))  # stored [out, in]
    expected = h @ p['readout']['w'].T + p['readout']['b']
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)

  def test_linear_when_no_hidden_layers(self):
    model = models.get_model('mlp')((), MIXED)
    knobs = _knobs(MIXED)
    params, state = model.init(jax.random.key(0), IN_DIM, OUT_DIM, knobs)
    params = jax.tree.map(lambda p: p + 0.5, params)
    y, new_state = model.apply(params, state, _x(), knobs, True)
    layer = _np(params)['readout']
    self.assertEqual(_np(params)['dense'], [])
    np.testing.assert_allclose(y, _x() @ layer['w'].T + layer['b'], rtol=1e-5,
                               atol=1e-6)
    self.assertEqual(new_state, {'norm': []})

  @parameterized.parameters(
      ({'norm': ('batch',)}, {}),
      (ALL, {'norm': 'batch'}),  # the batch-norm vertex of the relaxed model
  )
  def test_batch_norm_state(self, options, vertex):
    options = PLAIN | options
    model = models.get_model('mlp')((4, 4), options)
    knobs = _knobs(options, **vertex)
    params, state = model.init(jax.random.key(0), IN_DIM, OUT_DIM, knobs)
    x = _x() + 3.0
    _, train_state = model.apply(params, state, x, knobs, True)
    y_eval, eval_state = model.apply(params, state, x, knobs, False)
    chex.assert_trees_all_equal(eval_state, state)
    chex.assert_trees_all_equal_structs(train_state, state)
    for old, new in zip(state['norm'], train_state['norm']):
      for key in ('mean', 'var'):
        self.assertFalse(np.allclose(new['batch'][key], old['batch'][key]),
                         f'running {key} not updated')
    # Eval mode uses the running statistics, so they change its output.
    y_eval2, _ = model.apply(params, train_state, x, knobs, False)
    self.assertFalse(np.allclose(y_eval, y_eval2))

  def test_stateless_norms_keep_state(self):
    model = models.get_model('mlp')((4,), PLAIN | {'norm': ('layer', 'rms')})
    knobs = _knobs(PLAIN | {'norm': ('layer', 'rms')})
    params, state = model.init(jax.random.key(0), IN_DIM, OUT_DIM, knobs)
    _, new_state = model.apply(params, state, _x(), knobs, True)
    chex.assert_trees_all_equal(new_state, state)


class GradTest(parameterized.TestCase):

  @parameterized.parameters(MODEL_NAMES)
  def test_apply_is_differentiable_wrt_params(self, name, train=True):
    # Every option of every axis, at a point strictly inside the simplex.
    model = models.get_model(name)((4,), ALL)
    params, state = model.init(jax.random.key(0), IN_DIM, OUT_DIM, _knobs(ALL))
    # Shifted, so that no pre-activation sits on relu's kink.
    params = jax.tree.map(lambda p: np.asarray(p, np.float64) + 0.05, params)
    state = _np(state)
    with jax.enable_x64(True):
      knobs = _knobs(ALL, dtype=np.float64)
      x = _x(dtype=np.float64)

      @jax.jit
      def f(params):
        return model.apply(params, state, x, knobs, train)[0]

      jtu.check_grads(f, (params,), order=1, modes=('rev',))
      grads = jax.grad(lambda p: jnp.sum(f(p) ** 2))(params)
      chex.assert_tree_all_finite(grads)
      # Every weight matrix receives a gradient.
      for g in _weight_matrices(grads):
        self.assertGreater(np.abs(g).max(), 0.0)


def _conv1d_reference(x, kernel):
  """NumPy: ``out[b, t, o] = sum_{k, c} xpad[b, 2 t + k, c] w[k, c, o]``."""
  width = kernel.shape[0]
  xpad = np.pad(x, ((0, 0), (PADDING, PADDING), (0, 0)))
  length = (xpad.shape[1] - width) // STRIDE + 1
  return np.stack([np.einsum('bkc,kco->bo',
                             xpad[:, STRIDE * t:STRIDE * t + width], kernel)
                   for t in range(length)], axis=1)


class CnnTest(parameterized.TestCase):

  def test_plain_cnn_is_the_numpy_forward_pass(self):
    options = PLAIN  # norm none, relu, gaussian init
    model = models.get_model('cnn')((3, 2), options)
    knobs = _knobs(options)
    params, state = jax.jit(model.init, static_argnums=(1, 2))(
        jax.random.key(0), 12, OUT_DIM, knobs)
    params = jax.tree.map(lambda p: p + 0.1, params)  # non-zero biases
    x = np.random.default_rng(1).standard_normal((BATCH, 12)).astype(
        np.float32)
    y, new_state = model.apply(params, state, x, knobs, True)
    chex.assert_trees_all_equal(new_state, state)
    p = _np(params)
    h = x.astype(np.float64)[..., None]
    for i in range(2):
      layer = p[f'layer_{i}']
      h = np.maximum(_conv1d_reference(h, layer['conv']['kernel'])
                     + layer['bias'], 0.0)
    chex.assert_shape(h, (BATCH, 3, 2))  # 12 -> 5 -> 3 positions
    expected = h.reshape(BATCH, -1) @ p['readout']['kernel'] + p['readout'][
        'bias']
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)

  @parameterized.parameters([(5, 1, STRIDE, PADDING), (3, 4, STRIDE, PADDING),
                             (3, 2, 1, 0), (4, 3, 3, 2)])
  def test_patch_conv_is_flax_conv(self, width, channels, stride, padding):
    """``Conv`` (a matmul of patches) against flax's ``nn.Conv`` (XLA's
    convolution): the same parameter, drawn the same, the same outputs, also
    vmapped over members' kernels (a grouped convolution for ``nn.Conv``)."""
    x = np.random.default_rng(5).standard_normal((BATCH, 12, channels)).astype(
        np.float32)
    flax_conv = nn.Conv(6, (width,), strides=(stride,),
                        padding=((padding, padding),), use_bias=False)
    patch_conv = Conv(6, width, nn.initializers.lecun_normal(), stride,
                      padding)
    keys = jax.random.split(jax.random.key(6), 3)
    params = jax.vmap(lambda k: patch_conv.init(k, x))(keys)
    chex.assert_trees_all_equal(params,
                                jax.vmap(lambda k: flax_conv.init(k, x))(keys))
    chex.assert_trees_all_close(
        jax.vmap(lambda p: patch_conv.apply(p, x))(params),
        jax.vmap(lambda p: flax_conv.apply(p, x))(params), rtol=1e-5,
        atol=1e-5)

  def test_hidden_25_25_25_is_mnist1ds_convbase(self):
    """On MNIST-1D's length-40 sequences, hidden (25, 25, 25) is ConvBase
    (Greydanus 2020, notebooks/models.py): ``Conv1d`` kernels 5, 3, 3 of
    stride 2 and padding 1 (40 -> 19 -> 10 -> 5 positions), a linear readout
    of the 25 * 5 = 125 flattened features, 5210 parameters (the count its
    constructor prints), and 5 output positions of the last conv layer."""
    model = models.get_model('cnn')((25, 25, 25), PLAIN)
    params, state = jax.eval_shape(functools.partial(
        model.init, in_dim=40, out_dim=10, knobs=_knobs(PLAIN)),
                                   jax.random.key(0))
    self.assertEqual([w.shape for w in _weight_matrices(params)],
                     [(5, 1, 25), (3, 25, 25), (3, 25, 25), (125, 10)])
    self.assertEqual(sum(p.size for p in jax.tree.leaves(params)), 5210)
    seen, hook = _recorder()
    jax.eval_shape(functools.partial(model.apply, knobs=_knobs(PLAIN),
                                     train=False, preactivation=hook),
                   params, state, jax.ShapeDtypeStruct((2, 40), jnp.float32))
    self.assertEqual([shape for _, shape in seen],
                     [(2, 19, 25), (2, 10, 25), (2, 5, 25)])

  def test_an_input_shorter_than_the_kernel_is_refused(self):
    model = models.get_model('cnn')((3,), PLAIN)
    with self.assertRaisesRegex(ValueError, 'input of length 2 is shorter'):
      jax.eval_shape(functools.partial(model.init, in_dim=2, out_dim=OUT_DIM),
                     jax.random.key(0), knobs=_knobs(PLAIN))

  def test_batch_norm_state_and_keys(self):
    options = PLAIN | {'norm': ('none', 'noisy_batch')}
    model = models.get_model('cnn')((3,), options)
    knobs = _knobs(options, norm='noisy_batch')
    params, state = jax.jit(model.init, static_argnums=(1, 2))(
        jax.random.key(0), 8, OUT_DIM, knobs)
    x = np.random.default_rng(2).standard_normal((BATCH, 8)).astype(
        np.float32)
    apply = jax.jit(model.apply, static_argnums=4)
    y1, s1 = apply(params, state, x, knobs, True, jax.random.key(1))
    y2, _ = apply(params, state, x, knobs, True, jax.random.key(2))
    y3, _ = apply(params, state, x, knobs, True, jax.random.key(1))
    chex.assert_trees_all_equal(y1, y3)  # the step key draws the noise
    self.assertFalse(np.allclose(y1, y2))
    chex.assert_trees_all_equal_structs(s1, state)
    running = s1['norm_state']['layer_0']['norm']['noisy_batch']['mean']
    self.assertGreater(np.abs(running).max(), 0.0)  # updated in training
    _, s_eval = apply(params, s1, x, knobs, False, jax.random.key(1))
    chex.assert_trees_all_equal(s_eval, s1)  # not in eval


def _recorder():
  seen = []

  def hook(layer, h):
    seen.append((layer, h.shape))
    return h

  return seen, hook


class HookTest(parameterized.TestCase):
  """``Model.depth`` and ``apply(..., preactivation=)`` on every model."""

  # Every model relaxed over two norms, and deep_linear's norm-free path.
  @parameterized.parameters(
      *[(name, ('none', 'batch')) for name in MODEL_NAMES],
      ('deep_linear', ('none',)))
  def test_depth_and_preactivation(self, name, norm):
    options = PLAIN | {'norm': norm, 'activation': ('relu', 'tanh')}
    hidden = (4, 3)
    model = models.get_model(name)(hidden, options)
    self.assertTrue(model.preactivation_hook)
    knobs = _knobs(options, norm=norm[-1])
    params, state = jax.jit(model.init, static_argnums=(1, 2))(
        jax.random.key(0), 8, OUT_DIM, knobs)
    depth = model.depth(params)
    chex.assert_trees_all_equal_structs(depth, params)
    self.assertTrue(all(type(d) is int for d in jax.tree.leaves(depth)))
    self.assertEqual(sorted(set(jax.tree.leaves(depth))), [0, 1, 2])
    # The weights, input to output, are at depths 0, 1, 2.
    mats = [(d, m) for d, m in zip(jax.tree.leaves(depth),
                                   jax.tree.leaves(params)) if np.ndim(m) >= 2]
    self.assertEqual(sorted(d for d, _ in mats), [0, 1, 2])
    x = np.random.default_rng(0).standard_normal((BATCH, 8)).astype(
        np.float32)
    key = jax.random.key(3)
    y, _ = model.apply(params, state, x, knobs, True, key)
    seen, hook = _recorder()
    y_hooked, _ = model.apply(params, state, x, knobs, True, key,
                              preactivation=hook)
    self.assertEqual([layer for layer, _ in seen], [0, 1])
    for (_, shape), width in zip(seen, hidden):
      self.assertEqual((shape[0], shape[-1]), (BATCH, width))
      self.assertLen(shape, 3 if name == 'cnn' else 2)
    if name == 'deep_linear' and norm == ('none',):  # see DeepLinear's docs
      chex.assert_trees_all_close(y_hooked, y, rtol=1e-6, atol=1e-6)
    else:
      chex.assert_trees_all_equal(y_hooked, y)
    # The hook's value is used.
    y_zero, _ = model.apply(params, state, x, knobs, True, key,
                            preactivation=lambda i, h: h * (i != 1))
    self.assertFalse(np.allclose(y_zero, y))


  @parameterized.parameters(MODEL_NAMES)
  def test_each_layer_draws_its_noise_from_its_own_key(self, name):
    """``Model.layer_keys``: given a ``LayerKeys`` of boundary 1, layer 0's
    noisy batch norm draws from ``below`` and layer 1's from ``above``, so
    layer 0's pre-activation is the one the plain key ``below`` gives and
    layer 1's is not."""
    options = PLAIN | {'norm': ('noisy_batch',)}
    model = models.get_model(name)((4, 4), options)
    self.assertTrue(model.layer_keys)
    knobs = _knobs(options)
    params, state = jax.jit(model.init, static_argnums=(1, 2))(
        jax.random.key(0), 8, OUT_DIM, knobs)
    x = np.random.default_rng(0).standard_normal((BATCH, 8)).astype(
        np.float32)

    @jax.jit
    def preactivations(key):
      seen = []
      model.apply(params, state, x, knobs, True, key,
                  preactivation=lambda i, h: seen.append(h) or h)
      return seen

    below, above = jax.random.key(1), jax.random.key(2)
    # Both LayerKeys: one program. (below, below) is the plain key below.
    plain = preactivations(components.LayerKeys(below, below,
                                                jnp.asarray(1)))
    split = preactivations(components.LayerKeys(below, above,
                                                jnp.asarray(1)))
    chex.assert_trees_all_equal(split[0], plain[0])
    self.assertFalse(np.allclose(split[1], plain[1]))


class DeepTest(parameterized.TestCase):
  """25 hidden layers, every one reading the norm axis, train without NaN."""

  @parameterized.parameters(('mlp', ('batch',)), ('deep_linear', ('layer',)))
  def test_25_layers_train(self, name, norm):
    options = PLAIN | {'norm': norm, 'init': ('lecun_normal',)}
    model = models.get_model(name)((4,) * 25, options)
    knobs = _knobs(options)
    params, state = model.init(jax.random.key(0), IN_DIM, OUT_DIM, knobs)
    self.assertEqual(max(jax.tree.leaves(model.depth(params))), 25)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, IN_DIM)).astype(np.float32)
    labels = rng.integers(0, OUT_DIM, 16)

    # One compiled gradient serves the descent check and the steps.
    @jax.jit
    def value_and_grads(params, state, key):
      def loss(params):
        y, new_state = model.apply(params, state, x, knobs, True, key)
        return optax.softmax_cross_entropy_with_integer_labels(
            y, labels).mean(), new_state
      return jax.value_and_grad(loss, has_aux=True)(params)

    # The gradient reaches every layer and descends: a step of length 1e-5
    # along it lowers the loss. (Whether 4 steps at 0.05 lower it is a coin
    # flip of rounding: a 25-layer width-4 net's loss is rough at that
    # scale, and the batch-norm MLP's rose on one CPU, fell on another.)
    def loss_at(params):
      return value_and_grads(params, state, jax.random.key(0))[0][0]

    (value, _), grads = value_and_grads(params, state, jax.random.key(0))
    by_layer = {}
    for layer, g in zip(jax.tree.leaves(model.depth(params)),
                        jax.tree.leaves(grads)):
      by_layer[layer] = by_layer.get(layer, 0.0) + float(np.sum(np.square(g)))
    self.assertEqual(sorted(by_layer), list(range(26)))
    self.assertTrue(all(v > 0 for v in by_layer.values()), by_layer)
    h = 1e-5 / np.sqrt(sum(by_layer.values()))
    self.assertLess(loss_at(jax.tree.map(lambda p, g: p - h * g, params,
                                         grads)), value)
    for t in range(4):
      (value, state), grads = value_and_grads(params, state, jax.random.key(t))
      params = jax.tree.map(lambda p, g: p - 0.05 * g, params, grads)
      self.assertTrue(np.isfinite(value))
    chex.assert_tree_all_finite((params, state))

if __name__ == '__main__':
  absltest.main()
