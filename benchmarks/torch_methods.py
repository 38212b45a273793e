"""Methods (d) and (e): PyTorch, on the same runs as rahimi_jax's.

The same architecture, optimizer, initial weights (``Bench.initial_state``) and
batch order, so each trains the very runs of (a). torch is optional: it is only
imported inside these functions (``import_torch`` says whether it imports).
"""

import functools
import time

import numpy as np

from benchmarks.workloads import Bench
from benchmarks.workloads import Timing


def import_torch():
  """``(torch, None)``, or ``(None, why)`` where torch does not import.

  Warmed up, untimed, as ``measure.measure_peak`` warms JAX: the first
  ``torch.optim.SGD`` of a process imports ~800 modules (~1 s), which the
  first row's "compile" would otherwise count.
  """
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import torch.func  # pylint: disable=g-import-not-at-top,unused-import
  except Exception as e:  # pylint: disable=broad-except
    return None, f'{type(e).__name__}: {e}'
  layer = torch.nn.Linear(2, 2)
  opt = torch.optim.SGD(layer.parameters(), lr=0.0)
  torch.nn.functional.cross_entropy(layer(torch.ones(1, 2)),
                                    torch.zeros(1, dtype=torch.long)).backward()
  opt.step()
  torch.func.vmap(torch.func.grad(lambda w: (w * w).sum()))(torch.ones(2, 2))
  return torch, None


def _layers(bench: Bench, params, i: int):
  """Member ``i``'s ``[(w [out, in], b or None)]`` from stacked JAX params."""
  if bench.workload.model == 'deep_linear':
    return [(np.ascontiguousarray(w[i].T), None) for w in params['w']]
  readout = params['readout']  # its weight is stored [out, in] already
  return [(np.ascontiguousarray(d['w'][i].T), np.asarray(d['b'][i]))
          for d in params['dense']] + [
              (np.ascontiguousarray(readout['w'][i]), np.asarray(readout['b'][i]))]


def _check_torch_config(bench: Bench):
  from rahimi_jax import registry  # pylint: disable=g-import-not-at-top
  options = bench.config.option_dict()
  # What the torch code implements; any other axis must stay at its default
  # (float32 storage, ...), which changes nothing.
  implemented = {'optimizer': ('sgd',), 'norm': ('none',),
                 'activation': ('relu',), 'init': ('lecun_normal',)}
  expected = {a: implemented.get(a, (axis.default,))
              for a, axis in registry.AXES.items()}
  if options != expected:
    raise ValueError(f'The torch methods implement {expected}; got {options}.')


def _torch_module(torch, bench: Bench, layers):
  mods = []
  for j, (w, b) in enumerate(layers):
    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    with torch.no_grad():
      lin.weight.copy_(torch.from_numpy(np.array(w)))
      if b is not None:
        lin.bias.copy_(torch.from_numpy(np.array(b)))
    mods.append(lin)
    if bench.workload.model == 'mlp' and j < len(layers) - 1:
      mods.append(torch.nn.ReLU())
  if bench.workload.model == 'deep_linear':
    return _chain(torch)(*mods)
  return torch.nn.Sequential(*mods)


@functools.cache
def _chain(torch):
  """Bias-free linear layers multiplied as rahimi_jax's ``deep_linear`` does."""

  class Chain(torch.nn.Sequential):

    def forward(self, x):  # (W_L ... W_1) x^T in matrix-chain order, transposed
      return torch.linalg.multi_dot(
          [m.weight for m in reversed(self)] + [x.T]).T

  return Chain


def _torch_data(torch, bench: Bench):
  d = bench.data
  classify = d.task == 'classification'

  def tensor(a):  # a writable host copy of a (device) array
    return torch.from_numpy(np.array(a))

  def y(a):
    return tensor(a).long() if classify else tensor(a)

  def loss_fn(out, target):
    if classify:
      return torch.nn.functional.cross_entropy(out, target)
    return 0.5 * (out - target).square().sum(-1).mean()

  return tensor(d.x_train), y(d.y_train), tensor(d.x_test), y(d.y_test), loss_fn


def _setup(torch, bench: Bench, members: np.ndarray):
  """What (d) and (e) start from: the JAX run's initial state, the data as
  tensors with the loss, and one torch module per member."""
  _check_torch_config(bench)
  params, xs = bench.initial_state()
  modules = [_torch_module(torch, bench, _layers(bench, params, int(i)))
             for i in members]
  return params, xs, _torch_data(torch, bench), modules


def run_d(bench: Bench, members: np.ndarray) -> Timing:
  """(d) PyTorch eager: a Python loop over members and steps."""
  torch, _ = import_torch()
  params, xs, (x_train, y_train, x_test, y_test, loss_fn), modules = _setup(
      torch, bench, members)

  def evaluate(model):
    with torch.no_grad():
      train_loss = loss_fn(model(x_train), y_train)
      out = model(x_test)
      test_loss = loss_fn(out, y_test)
      if bench.data.task == 'classification':
        (out.argmax(-1) == y_test).float().mean()
    return float(train_loss), float(test_loss)

  def train_step(model, opt, xb, yb):
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model(xb), yb)
    loss.backward()
    opt.step()

  # "Compile": torch's one-time lazy set-up, timed as the first step and
  # evaluation of a throwaway copy (the analogue of (c)'s first calls).
  start = time.perf_counter()
  scratch = _torch_module(torch, bench, _layers(bench, params, int(members[0])))
  train_step(scratch, torch.optim.SGD(scratch.parameters(), lr=0.0),
             x_train[:bench.batch], y_train[:bench.batch])
  evaluate(scratch)
  compile_s = time.perf_counter() - start

  losses = []
  start = time.perf_counter()
  for i, model in zip(members, modules):
    opt = torch.optim.SGD(model.parameters(), lr=float(bench.lrs[i]))
    evaluate(model)
    if not bench.full_batch:
      idx = torch.from_numpy(xs[1][i].astype(np.int64))  # [steps, B]
    for t in range(bench.steps):
      if bench.full_batch:
        xb, yb = x_train, y_train
      else:
        xb, yb = x_train[idx[t]], y_train[idx[t]]
      train_step(model, opt, xb, yb)
    losses.append(evaluate(model)[0])
  run_s = time.perf_counter() - start
  return Timing(compile_s, run_s, members, np.asarray(losses), None,
                f'torch threads={torch.get_num_threads()}')


def run_e(bench: Bench, members: np.ndarray) -> Timing:
  """(e) torch.func ensembling: vmap(grad) over stacked params, SGD by hand."""
  torch, _ = import_torch()
  from torch import func  # pylint: disable=g-import-not-at-top
  params, xs, (x_train, y_train, x_test, y_test, loss_fn), modules = _setup(
      torch, bench, members)
  stacked, buffers = func.stack_module_state(modules)
  stacked = {k: v.detach().clone() for k, v in stacked.items()}
  base = _torch_module(torch, bench, _layers(bench, params, int(members[0])))
  base = base.to('meta')
  lrs = torch.from_numpy(bench.lrs[members])
  g = len(members)

  def member_loss(p, b, x, y):
    return loss_fn(func.functional_call(base, (p, b), (x,)), y)

  data_axis = None if bench.full_batch else 0
  grads_fn = func.vmap(func.grad(member_loss),
                       in_dims=(0, 0, data_axis, data_axis))
  forward = func.vmap(lambda p, b, x: func.functional_call(base, (p, b), (x,)),
                      in_dims=(0, 0, None))
  per_member_loss = func.vmap(loss_fn, in_dims=(0, None))

  def evaluate(p):
    with torch.no_grad():
      train_loss = per_member_loss(forward(p, buffers, x_train), y_train)
      out = forward(p, buffers, x_test)
      per_member_loss(out, y_test)
      if bench.data.task == 'classification':
        (out.argmax(-1) == y_test).float().mean(-1)
    return train_loss.numpy().copy()

  # "Compile": the first vmapped gradient and evaluation (torch.func's
  # one-time set-up), on a throwaway copy of the stacked params.
  start = time.perf_counter()
  scratch = {k: v.clone() for k, v in stacked.items()}
  evaluate(scratch)
  if bench.full_batch:
    grads_fn(scratch, buffers, x_train, y_train)
  else:
    first = torch.from_numpy(xs[1][members, 0].astype(np.int64))  # [G, B]
    grads_fn(scratch, buffers, x_train[first], y_train[first])
  compile_s = time.perf_counter() - start
  del scratch

  start = time.perf_counter()
  evaluate(stacked)
  if not bench.full_batch:
    idx = torch.from_numpy(xs[1][members].astype(np.int64))  # [G, steps, B]
  for t in range(bench.steps):
    if bench.full_batch:
      xb, yb = x_train, y_train
    else:
      xb, yb = x_train[idx[:, t]], y_train[idx[:, t]]  # [G, B, ...]
    grads = grads_fn(stacked, buffers, xb, yb)
    with torch.no_grad():
      for k, p in stacked.items():
        p.sub_(lrs.view((g,) + (1,) * (p.dim() - 1)) * grads[k])
  losses = evaluate(stacked)
  run_s = time.perf_counter() - start
  return Timing(compile_s, run_s, members, losses, None,
                f'all {g} members vmapped; torch threads={torch.get_num_threads()}')
