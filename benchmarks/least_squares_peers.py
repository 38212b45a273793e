"""Gauss–Newton / Levenberg–Marquardt: this project's steps vs optimistix's.

The deep linear study's problem and initial weights (float64, seeds 0-3,
``DeepLinearConfig`` defaults), 30 iterations each; prints every run's first
iteration below 1e-20 and its loss after 30:

  python -m benchmarks.least_squares_peers

optimistix is stepped through its own ``init``/``step`` API (one jitted step
per call, outside any scan: its state holds the linearized function as a
jaxpr). Its solvers count an iteration one call later than ours: each
``step`` returns the point accepted by the previous one, so the first call
is not counted.
"""

import dataclasses

from absl import app


def _runs(config, seeds):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from rahimi_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  data = config.dataset()
  x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  loop = train_lib.make_loop(config.train_config(1))
  # One gd member per seed: every method's member of a seed starts from the
  # same weights (the init key depends on the seed only).
  grid = dataclasses.replace(config, methods=('gd',), gd_lrs=(0.1,)).grid()
  for seed in range(seeds):
    knobs = jax.tree.map(lambda a: a[0], grid.knobs([seed]))
    yield seed, loop.init(knobs, data).params['w'], x, y


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_enable_x64', True)
  import equinox as eqx  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import lineax as lx  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import optimistix as optx  # pylint: disable=g-import-not-at-top
  from rahimi_jax import solvers  # pylint: disable=g-import-not-at-top
  from rahimi_jax.studies import deep_linear  # pylint: disable=g-import-not-at-top

  config = deep_linear.DeepLinearConfig()
  steps, target = 30, 1e-20

  def ours(tx):
    def run(params, x, y):
      residual = lambda p: (x @ p[0] @ p[1] - y) / jnp.sqrt(x.shape[0] * 1.0)

      def step(carry, _):
        p, s = carry
        u, s = tx.update(None, s, p, residual_fn=residual)
        p = optax.apply_updates(p, u)
        return (p, s), 0.5 * jnp.sum(residual(p) ** 2)

      return jax.lax.scan(step, (params, tx.init(params)), None, steps)[1]
    return jax.jit(run)

  def theirs(solver):
    def run(params, x, y):
      fn = lambda p, _: ((x @ p[0] @ p[1] - y) / jnp.sqrt(x.shape[0] * 1.0),
                         None)
      state = solver.init(fn, params, None, {}, jax.eval_shape(
          lambda: fn(params, None)[0]), None, frozenset())
      step = eqx.filter_jit(
          lambda p, s: solver.step(fn, p, None, {}, s, frozenset())[:2])
      losses, p = [], params
      for _ in range(steps + 1):
        p, state = step(p, state)
        losses.append(float(0.5 * jnp.sum(fn(p, None)[0] ** 2)))
      return np.asarray(losses[1:])
    return run

  methods = {
      'ours gn (minimum norm, dense SVD)': ours(solvers.gauss_newton()),
      'ours gn (CG)': ours(solvers.gauss_newton(solver='cg')),
      'ours lm (Marquardt x10, dense SVD)': ours(
          solvers.levenberg_marquardt()),
      'ours lm (CG)': ours(solvers.levenberg_marquardt(solver='cg')),
      'optimistix GaussNewton (lineax SVD)': theirs(optx.GaussNewton(
          rtol=1e-30, atol=1e-30, linear_solver=lx.SVD())),
      'optimistix GaussNewton (default solver)': theirs(optx.GaussNewton(
          rtol=1e-30, atol=1e-30)),
      'optimistix LevenbergMarquardt (default)': theirs(
          optx.LevenbergMarquardt(rtol=1e-30, atol=1e-30)),
  }
  print(f'{"method":<42} first iteration below {target:g} per seed; '
        f'loss after {steps}')
  for name, run in methods.items():
    firsts, finals = [], []
    for _, params, x, y in _runs(config, config.seeds):
      losses = np.asarray(run(params, x, y))
      below = np.flatnonzero(losses < target)
      firsts.append(str(below[0] + 1) if len(below) else '-')
      finals.append(f'{losses[-1]:.1e}')
    print(f'{name:<42} {", ".join(firsts):<20} {", ".join(finals)}')


if __name__ == '__main__':
  app.run(main)
