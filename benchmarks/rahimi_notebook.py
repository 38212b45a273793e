r"""Gradient descent on Rahimi and Recht's own two-layer linear problem, in NumPy.

Their published notebook (``benjamin-recht/shallow-linear-net``,
TwoLayerLinearNets.ipynb) fits ``y = A x`` with ``W1 W2`` where ``W1 ~
randn(10, 6)``, ``W2 ~ randn(6, 6)``, ``A = linspace(1, 1e-5, 10)[:, None] *
rand(10, 6)`` (rows scaled over five decades), ``X ~ randn(6, 1000)``, the
loss ``sum((W1 W2 X - A X)^2)`` over samples and outputs (2000x the studies'
``0.5 mean``), and runs gradient descent at steps 1e-6..1e-3 for 3000
iterations. This is that recipe, written here from the notebook's
description (float64, full batch through ``X X^T``, ``RandomState(seed)``),
as an independent reference for issue 11's "gradient descent stays above
1e-6 after 1e5 steps":

  python -m benchmarks.rahimi_notebook --steps=3000,100000 \
      --lrs=1e-6,1e-5,3e-5,5e-5,1e-4

It prints the final loss (the notebook's units) per step budget, step size
and seed; ``diverged`` where the weights overflowed.
"""

from absl import app
from absl import flags
import numpy as np

FLAGS = flags.FLAGS


def _define_flags():
  """Only when run as a program: the names are common (tests import this
  module beside launchers that define their own ``--steps``, ``--seeds``)."""
  flags.DEFINE_list('steps', ['3000', '100000'], 'Step budgets.')
  flags.DEFINE_list('lrs', ['1e-6', '1e-5', '3e-5', '5e-5', '1e-4'],
                    'Gradient descent step sizes (of the summed loss).')
  flags.DEFINE_integer('seeds', 4, 'Seeds 0..seeds-1 (numpy RandomState).')


def problem(seed: int, xdim: int = 6, wdim: int = 6, ydim: int = 10,
            n: int = 1000, cond: float = 1e-5):
  """``(W1, W2, A, X X^T)`` drawn as the notebook draws them."""
  rng = np.random.RandomState(seed)
  w1, w2 = rng.randn(ydim, wdim), rng.randn(wdim, xdim)
  a = np.linspace(1, cond, ydim).reshape(-1, 1) * rng.rand(ydim, xdim)
  x = rng.randn(xdim, n)
  return w1, w2, a, x @ x.T


def loss(w1, w2, a, c) -> float:
  """``sum((W1 W2 X - A X)^2) = tr(E C E^T)``, ``E = W1 W2 - A``."""
  e = w1 @ w2 - a
  return float(np.trace(e @ c @ e.T))


def gradient_descent(seed: int, lr: float, steps: int) -> float:
  """The final loss of ``steps`` full-batch GD steps (NaN: diverged)."""
  w1, w2, a, c = problem(seed)
  with np.errstate(over='ignore', invalid='ignore'):
    for _ in range(steps):
      e = w1 @ w2 - a
      w1, w2 = w1 - lr * 2 * e @ c @ w2.T, w2 - lr * 2 * w1.T @ e @ c
      if not np.isfinite(w1).all():
        return float('nan')
  return loss(w1, w2, a, c)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    budgets = [int(s) for s in FLAGS.steps]
    lrs = [float(s) for s in FLAGS.lrs]
  except ValueError as e:
    raise app.UsageError(f'--steps takes integers, --lrs numbers: {e}')
  if min(budgets) < 0 or min(lrs) <= 0 or FLAGS.seeds < 1:
    raise app.UsageError('steps >= 0, lrs > 0 and seeds >= 1 accepted; got '
                         f'{budgets}, {lrs}, {FLAGS.seeds}.')
  print(f'{"steps":>7} {"lr":>8} ' + ' '.join(
      f'{"seed " + str(s):>10}' for s in range(FLAGS.seeds)))
  for steps in budgets:
    for lr in lrs:
      cells = [gradient_descent(s, lr, steps) for s in range(FLAGS.seeds)]
      print(f'{steps:>7} {lr:>8.0e} ' + ' '.join(
          f'{"diverged" if np.isnan(v) else f"{v:.2e}":>10}' for v in cells),
            flush=True)


if __name__ == '__main__':
  _define_flags()
  app.run(main)
