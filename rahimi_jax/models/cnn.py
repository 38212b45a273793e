"""A 1-D convolutional network built from the relaxed components, in flax.

``[conv -> norm -> + bias -> activation] * len(channels) -> flatten -> dense``:
MNIST-1D's ``ConvBase`` (Greydanus, ``notebooks/models.py``: three
``Conv1d`` layers of 25 channels, kernels 5, 3, 3, stride 2, padding 1, ReLU,
then a linear readout of the flattened map) with each layer's norm, activation
and kernel init a relaxed choice, as in the MLP: the norm of layer ``i`` draws
from ``component_key(key, 'norm', i)``, its activation from
``component_key(key, 'activation', i)``, the bias comes after the norm, and
every kernel (the readout's too) is ``init_scale`` times the relaxed init.
Inputs ``[batch, length]`` are one-channel sequences; ``[batch, length,
channels]`` are taken as they are. The norms see ``[batch, length, channels]``
maps: batch norm per channel over batch and positions, layer/RMS norm over
each position's channels (``components.norms``). The readout reads the last
map flattened position-major (``[(position, channel)]``), where ConvBase's
``view`` flattens channel-major: the same function, its readout's rows
permuted (torch's ``linear.weight`` is ``kernel.reshape(L, C, out)
.transpose(1, 0, 2).reshape(C * L, out).T``).

It is a flax linen module turned into a ``Model`` by ``from_flax``, the
adapter a user's own flax model goes through.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from rahimi_jax import components
from rahimi_jax import registry
from rahimi_jax.models import flax_adapter
from rahimi_jax.models.base import Model

AXES = ('norm', 'activation', 'init')
STRIDE, PADDING = 2, 1


def kernel_size(layer: int) -> int:
  """ConvBase's kernels: 5 for the first layer, 3 after."""
  return 5 if layer == 0 else 3


class Conv(nn.Module):
  """``nn.Conv(features, (width,), strides=stride, padding=((padding,
  padding),), use_bias=False)`` on ``[batch, length, channels]``, computed as
  one matmul of the input's patches.

  The same parameter (``kernel: [width, in, features]``, drawn by
  ``kernel_init`` under the same name) and the same function up to
  rounding: ``out[b, t] = sum_{k, c} xpad[b, stride t + k, c] kernel[k, c]``
  as ``patches [b, t, (k, c)] @ kernel [(k, c), features]``. Under ``vmap``
  over members a convolution whose kernel is batched becomes a grouped
  convolution, which XLA's CPU backend runs at a few GFLOP/s (55% of the
  batch-norm study's CNN grid's device time); the patches' matmul is a
  batched GEMM, and that grid ran 360 -> 122 s (2-core Intel Xeon;
  WORKSPACE.md, "Simple experiment 3").

  Attributes:
    features: output channels.
    width: the kernel's width.
    kernel_init: the kernel's initializer.
    stride, padding: as ``nn.Conv``'s (zeros on both ends).
  """
  features: int
  width: int
  kernel_init: Any
  stride: int = STRIDE
  padding: int = PADDING

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    kernel = self.param('kernel', self.kernel_init,
                        (self.width, channels, self.features))
    xpad = jnp.pad(x, ((0, 0), (self.padding, self.padding), (0, 0)))
    length = (xpad.shape[1] - self.width) // self.stride + 1
    if length < 1:  # shapes are static: refused while tracing, before XLA
      raise ValueError(
          f'cnn: an input of length {x.shape[1]} is shorter than the '
          f'kernel ({self.width}) less its padding ({self.padding} each '
          f'side); accepted: length >= {self.width - 2 * self.padding} at '
          'this layer (fewer or wider conv layers, or longer inputs).')
    end = self.stride * (length - 1) + 1
    patches = jnp.concatenate(
        [xpad[:, k:k + end:self.stride] for k in range(self.width)], axis=-1)
    return patches @ kernel.reshape(self.width * channels, self.features)


class ConvLayer(nn.Module):
  """``activation(norm(conv(x)) + bias)`` on ``x: [batch, length, channels]``.

  Attributes:
    features: output channels.
    layer: this layer's index (its PRNG keys and pre-activation hook's).
    options: ``((axis, (option, ...)), ...)`` for ``AXES``.
  """
  features: int
  layer: int
  options: tuple[tuple[str, tuple[str, ...]], ...]

  @nn.compact
  def __call__(self, x, knobs, train, key=None, preactivation=None):
    options = dict(self.options)
    norm_init, norm_apply = components.relaxed_norm(options['norm'])
    act = components.relaxed_activation(options['activation'])
    h = Conv(self.features, kernel_size(self.layer),
             components.scaled_init(options['init'])(knobs), name='conv')(x)
    norm_params = self.param('norm', lambda _: norm_init(self.features)[0])
    norm_state = self.variable('norm_state', 'norm',
                               lambda: norm_init(self.features)[1])
    h, new_state = norm_apply(
        norm_params, norm_state.value, h, knobs['norm'], train,
        components.component_key(key, 'norm', self.layer), knobs)
    if train and not self.is_initializing():
      norm_state.value = new_state
    h = h + self.param('bias', nn.initializers.zeros_init(), (self.features,))
    if preactivation is not None:
      h = preactivation(self.layer, h)
    return act(knobs['activation'], h,
               key=components.component_key(key, 'activation', self.layer))


class CNN(nn.Module):
  """The 1-D CNN: conv layers of ``channels``, then a dense readout.

  Attributes:
    channels: output channels of each conv layer; ``()`` is a linear model.
    options: ``((axis, (option, ...)), ...)`` for ``AXES``.
    num_outputs: the readout's width.
  """
  channels: tuple[int, ...]
  options: tuple[tuple[str, tuple[str, ...]], ...]
  num_outputs: int

  @nn.compact
  def __call__(self, x, knobs, train, key=None, preactivation=None):
    h = x[..., None] if x.ndim == 2 else x  # [batch, length, channels]
    for i, features in enumerate(self.channels):
      h = ConvLayer(features, i, self.options, name=f'layer_{i}')(
          h, knobs, train, key, preactivation)
    h = h.reshape(h.shape[0], -1)
    init = components.scaled_init(dict(self.options)['init'])(knobs)
    return nn.Dense(self.num_outputs, kernel_init=init, name='readout')(h)


def cnn(hidden: Sequence[int], options: Mapping[str, Sequence[str]]) -> Model:
  """The 1-D CNN as a ``Model`` (through ``from_flax``).

  Args:
    hidden: channels of the conv layers (static); ``(25, 25, 25)`` is
      MNIST-1D's ConvBase.
    options: option names for the ``norm``, ``activation`` and ``init`` axes.

  Returns:
    A ``Model``; its knobs are the weights of those axes and ``init_scale``.
  """
  checked: Any = tuple(
      (axis, registry.AXES[axis].check(tuple(options[axis]))) for axis in AXES)
  hidden = tuple(int(h) for h in hidden)
  return flax_adapter.from_flax(
      lambda out_dim: CNN(hidden, checked, out_dim), choice_axes=AXES,
      per_sample=True, layer_keys=True)
