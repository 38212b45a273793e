"""The pure training loop of one grid member: ``train(knobs, data) -> metrics``.

``TrainConfig`` holds everything static (model, widths, the options of each
choice axis, steps, batch size, logging cadence). Everything that varies across
a grid is a knob: the simplex weights of each choice axis, hyperparameters, and
the seed's PRNG key. ``make_train(config)`` returns a pure function whose loop
is a ``lax.scan`` over steps (chunks of ``log_every`` steps, evaluated between
chunks), ready for ``jax.jit(jax.vmap(train, in_axes=(0, None)))``.
"""

from collections.abc import Callable, Mapping
import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rahimi_jax import components
from rahimi_jax import data as data_lib
from rahimi_jax import diagnostics as diagnostics_lib
from rahimi_jax import flops as flops_lib
from rahimi_jax import grid as grid_lib
from rahimi_jax import models
from rahimi_jax import provenance
from rahimi_jax import registry
from rahimi_jax.data import Dataset


def _classification_loss(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _regression_loss(pred, target):
  return 0.5 * jnp.mean(jnp.sum(jnp.square(pred - target), axis=-1))


LOSSES = {'classification': _classification_loss, 'regression': _regression_loss}

# On a CPU, an evaluation of a ``Model.per_sample`` model runs its forward
# over blocks of rows that each write at most this many elements
# (``flops.elements_written``) per member: the batch-norm study's CNN,
# evaluated on MNIST-1D's 4000 training sequences at once, wrote ~0.6 GB per
# member, at memory speed (a chunk of 8 members, 11 evaluations: 3.5 -> 1.7
# s in blocks; its MLP's 0.43 -> 0.40 s). Smaller blocks were faster still
# for those (2**20: 1.45 s, 0.36 s) but split the digits MLPs' 1347 rows,
# which ran 5% slower in blocks (WORKSPACE.md). Off the CPU (not measured
# there) one call.
EVAL_BLOCK_ELEMENTS = 2**22


def forward_in_blocks(forward: Callable[[jax.Array], jax.Array], x: jax.Array,
                      limit: int = EVAL_BLOCK_ELEMENTS) -> jax.Array:
  """``forward(x)`` for a ``forward`` that computes each output row from its
  input row alone: traced once over all rows, and run so where that writes at
  most ``limit`` elements (``flops.elements_written``); else over equal
  blocks of rows (``lax.map``) that each write about that many (at least one
  row a block; the last block padded with zero rows, whose outputs are
  dropped)."""
  n = x.shape[0]
  whole = jax.make_jaxpr(forward)(x)
  written = flops_lib.jaxpr_elements_written(whole.jaxpr)
  if written <= limit:  # the trace itself, not traced again
    (out,) = jax.core.eval_jaxpr(whole.jaxpr, whole.consts, x)
    return out
  blocks = -(-n // max(1, limit * n // written))
  rows = -(-n // blocks)
  padded = jnp.pad(x, [(0, blocks * rows - n)] + [(0, 0)] * (x.ndim - 1))
  out = jax.lax.map(forward, padded.reshape(blocks, rows, *x.shape[1:]))
  return out.reshape(blocks * rows, *out.shape[2:])[:n]


DTYPES = ('float32', 'float64')


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Static configuration of a training run (hashable; frozen).

  Attributes:
    model: a name in ``models.MODELS``.
    hidden: hidden widths of the model.
    options: ``((axis, (option, ...)), ...)`` for the choice axes a grid
      varies (names in ``registry.AXES``); an axis left out uses its single
      default option.
    steps: optimizer steps.
    batch_size: minibatch size; 0 (or >= the training set) is full batch.
    log_every: steps between evaluations (and at step 0 and the last step);
      default 50, or ``steps`` when fewer.
    dtype: floating type of parameters, data and arithmetic ('float64' needs
      ``jax.config.update('jax_enable_x64', True)``). Initial values are drawn
      in float32 and cast, so runs in either precision start alike.
    diagnostics: names in ``diagnostics.LOGGED`` computed at every log:
      'grad_norm' on the full training set; Santurkar et al.'s probes
      ('covariate_shift', 'landscape', 'preactivation_drift') on a batch of
      the training batch size drawn for that log (``diagnostics.Probe``).
    remat: rematerialize each step in reverse-mode differentiation through
      the whole run (``jax.checkpoint``): memory stays at one step's
      activations plus the carry per step, for one extra forward per step.
    rounding_events: with rounding placements, count at every step what
      rounding did (``overflows_<place>``, ``underflows_<place>``,
      ``updates_lost``, logged since the previous log): the evidence the
      rounding study and the ablation report explain with (both turn it on).
      Off by default: the counts are reductions over every rounded array at
      every step, which cost more than the rounding itself on CPU (2.06x vs
      1.31x a float32 grid's time, ``benchmarks/precision_cost.py``).
    switched: choice axes (``registry.Axis.switchable``, among ``options``)
      whose components compute only each member's option
      (``relaxed.switching``) instead of all of them: for members whose
      weights of these axes are one-hot and shared by the members run
      together (``engine.run``'s ``switch``); no derivative in those weights.
  """
  model: str = 'mlp'
  hidden: tuple[int, ...] = (64, 64)
  options: tuple[tuple[str, tuple[str, ...]], ...] = ()
  steps: int = 500
  batch_size: int = 64
  log_every: int | None = None
  dtype: str = 'float32'
  diagnostics: tuple[str, ...] = ()
  remat: bool = False
  rounding_events: bool = False
  switched: tuple[str, ...] = ()

  def __post_init__(self):
    models.get_model(self.model)
    hidden = tuple(self.hidden)
    if any(not isinstance(h, (int, np.integer)) or h < 1 for h in hidden):
      raise ValueError(f'hidden widths must be positive integers; got {list(hidden)}.')
    object.__setattr__(self, 'hidden', tuple(int(h) for h in hidden))
    axes = [axis for axis, _ in self.options]
    if len(set(axes)) < len(axes):
      raise ValueError(f'options: an axis listed twice in {axes}; give each '
                       'axis once, with all of its options.')
    options = tuple((axis, (names,) if isinstance(names, str) else tuple(names))
                    for axis, names in self.options)  # 'adam': one option
    object.__setattr__(self, 'options', options)
    reads = self.reads
    for axis, names in options:
      registry.get_axis(axis)
      if axis not in reads:
        raise ValueError(f'model {self.model!r} has no {axis} to choose; its '
                         f'choice axes: {", ".join(reads)}.')
      registry.AXES[axis].check(names)
    object.__setattr__(self, 'switched', tuple(self.switched))
    switchable = [a for a, _ in options if registry.AXES[a].switchable]
    for axis in self.switched:
      if axis not in switchable:
        raise ValueError(f'switched: {axis!r} is not a switchable choice axis '
                         f'of this config; accepted: '
                         f'{", ".join(switchable) or "none"}.')
    if self.log_every is None and isinstance(self.steps, (int, np.integer)):
      object.__setattr__(self, 'log_every', min(50, int(self.steps)))
    for name in ('steps', 'log_every'):
      value = getattr(self, name)
      if (not isinstance(value, (int, np.integer)) or value < 1 or
          value >= 2**31):  # steps are counted in int32
        raise ValueError(f'{name} must be a positive integer < 2**31; got '
                         f'{value!r}.')
    if not isinstance(self.batch_size, (int, np.integer)) or self.batch_size < 0:
      raise ValueError(f'batch_size must be an integer >= 0 (0: full batch); '
                       f'got {self.batch_size!r}.')
    if self.dtype not in DTYPES:
      raise ValueError(f'Unknown dtype {self.dtype!r}; accepted: '
                       f'{", ".join(DTYPES)}.')
    precisions = dict(options).get('precision', ('float32',))
    if self.dtype != 'float32' and precisions != ('float32',):
      raise ValueError(f'precision {", ".join(precisions)} rounds float32 '
                       f"values; dtype is {self.dtype!r} (use 'float32').")
    object.__setattr__(self, 'diagnostics', registry.check_options(
        diagnostics_lib.LOGGED, self.diagnostics, 'diagnostics')
                       if self.diagnostics else ())
    needs = [(f'diagnostic {name}', attr) for name in self.diagnostics
             for attr in diagnostics_lib.probes.NEEDS.get(name, ())]
    if 'activations' in components.placement.places(self.option_dict()):
      needs.append(('placement activations', 'matmul_hook'))
    model = models.make_model(self.model, self.hidden, self.option_dict())
    for what, attr in needs:
      if not getattr(model, attr):
        raise ValueError(f'{what}: model {self.model!r} has no '
                         f'{_MODEL_HOOKS[attr]}; '
                         f'models that have one: {", ".join(_models_with(attr))}.')
    if self.log_every > self.steps:
      raise ValueError(f'log_every ({self.log_every}) must be <= steps '
                       f'({self.steps}).')

  @property
  def reads(self) -> tuple[str, ...]:
    """The choice axes a run of this config reads: the loop's and the model's."""
    model = models.make_model(self.model, (), {
        a: (axis.default,) for a, axis in registry.AXES.items()})
    return tuple(a for a, axis in registry.AXES.items()
                 if axis.loop) + model.choice_axes

  def components(self) -> list[Any]:
    """The model factory and the component of each option the run reads:
    the code it runs (``provenance.user_code_sha256``)."""
    options = self.option_dict()
    return [models.MODELS.get(self.model)] + [
        registry.AXES[axis].get(name) for axis in self.reads
        for name in options[axis]]

  def option_dict(self) -> dict[str, tuple[str, ...]]:
    """Options of every choice axis, defaults filled in."""
    given = dict(self.options)
    return {a: given.get(a, (axis.default,))
            for a, axis in registry.AXES.items()}

  def for_grid(self, grid: grid_lib.Grid) -> 'TrainConfig':
    """This config with the grid's choice options; checks the grid's axes.

    An axis the grid chooses takes the grid's options; one it does not keeps
    the config's single option (e.g. a study's init), or its default.
    """
    for axis in grid.axes:
      if isinstance(axis, grid_lib.Values):
        if axis.name not in registry.knobs():
          raise ValueError(f'Unknown value axis {axis.name!r}; accepted: '
                           f'{", ".join(registry.knobs())}.')
        registry.knobs()[axis.name].check(axis.values)
      if (isinstance(axis, grid_lib.Gate) and axis.name in registry.AXES
          and not registry.AXES[axis.name].relaxable):
        raise ValueError(f'{axis.name} cannot be a Gate: its options are '
                         'discrete (a table lookup), with nothing between '
                         'them; use a Choice.')
      if isinstance(axis, grid_lib.Seeds) and axis.name != grid_lib.SEED:
        raise ValueError(f'The seed axis must be named {grid_lib.SEED!r}; '
                         f'got {axis.name!r}.')
    options = dict(self.options) | grid.choices
    for axis, names in self.options:
      if axis not in grid.choices and len(names) > 1:
        raise ValueError(
            f'{axis}: the config lists {len(names)} options '
            f'({", ".join(names)}) but the grid has no {axis} axis to say '
            f'which a member uses; add Choice({axis!r}, ...) to the grid or '
            'keep one option.')
    return dataclasses.replace(self, options=tuple(options.items()))

  def check_knobs_read(self, grid: grid_lib.Grid) -> None:
    """Raises ``ValueError`` for a ``Values`` axis of several values that no
    member of ``grid`` reads (its members would be copies: an effect of
    exactly 0). Called on a whole grid (``engine.run``), not on the groups
    it runs in."""
    options = self.option_dict()
    if tuple(options['precision']) == ('float32',):  # nothing rounds
      for name in ('rounding', 'placement'):
        if name in grid.choices and len(grid.choices[name]) > 1:
          raise ValueError(
              f'{name}: no member reads it: the precision options here are '
              f'float32 (nothing is rounded), so its options '
              f'{", ".join(grid.choices[name])} would train copies; add a '
              f'precision that rounds (e.g. bfloat16) or keep one {name}.')
    for axis in grid.axes:
      if not isinstance(axis, grid_lib.Values) or len(axis.values) < 2:
        continue
      owner = registry.knob_axis(axis.name)
      if owner.name not in self.reads:
        raise ValueError(
            f'{axis.name}: no member reads it: model {self.model!r} has no '
            f'{owner.name} axis (it reads: {", ".join(self.reads)}); drop the '
            f'{axis.name} axis.')
      registry.check_knob_read(
          axis.name, options[owner.name],
          f'; add one of those or drop the {axis.name} axis')

  def log_steps(self) -> np.ndarray:
    """The steps at which metrics are logged: 0, log_every, ..., steps."""
    steps = list(range(0, self.steps + 1, self.log_every))
    if steps[-1] != self.steps:
      steps.append(self.steps)
    return np.asarray(steps, np.int32)


# What a ``Model`` field offers, for error messages.
_MODEL_HOOKS = {
    'matmul_hook': 'matmul hook to round its activations at',
    'depth': 'layer depths (Model.depth)',
    'preactivation_hook': 'pre-activation hook',
}


def _models_with(attr: str) -> list[str]:
  """The models whose ``Model.<attr>`` is set (with default options)."""
  defaults = {a: (axis.default,) for a, axis in registry.AXES.items()}
  return [name for name, make in models.MODELS.items()
          if getattr(make((8,), defaults), attr)]


def check_task(config: TrainConfig, task: str) -> None:
  """Raises ``ValueError`` if an option of ``config`` cannot train ``task``.

  The least-squares optimizers (Gauss–Newton, Levenberg–Marquardt) need a
  residual: a regression task. Call it before tracing (configs and
  ``run_grid`` do), so the error is one line, not a trace-time traceback.
  """
  least_squares = sorted(set(config.option_dict()['optimizer'])
                         & set(components.LEAST_SQUARES))
  if least_squares and task != 'regression':
    first_order = [o for o in components.OPTIMIZERS
                   if o not in components.LEAST_SQUARES]
    raise ValueError(
        f'optimizer {", ".join(least_squares)} needs a least-squares '
        f'(regression) task; this data is {task}. Use a first-order '
        f'optimizer ({", ".join(first_order)}) or a regression dataset '
        '(synthetic).')


def _resolve_knobs(config: TrainConfig, knobs: Mapping[str, Any]) -> dict[str, Any]:
  """Fills knobs the grid does not vary with their static defaults."""
  value_knobs = registry.knobs()
  unknown = (set(knobs) - set(registry.AXES) - set(value_knobs)
             - {grid_lib.SEED})
  if unknown:
    raise ValueError(f'Unknown knobs {sorted(unknown)}.')
  resolved = {}
  for axis, names in config.option_dict().items():
    weights = knobs.get(axis, jnp.ones((1,), jnp.float32))
    if jnp.shape(weights) != (len(names),):
      raise ValueError(f'{axis} weights have shape {jnp.shape(weights)}; '
                       f'expected ({len(names)},) for options {names}.')
    resolved[axis] = weights
  for name, knob in value_knobs.items():
    resolved[name] = jnp.asarray(knobs.get(name, knob.default), jnp.float32)
  resolved[grid_lib.SEED] = knobs.get(grid_lib.SEED, jax.random.key(0))
  return resolved


# Streams of a member's seed key: split(seed) gives the init and data-order
# keys; these fold-ins give the diagnostics', the steps' and the evaluations'.
_DIAGNOSTICS_STREAM, _STEP_STREAM, _EVAL_STREAM = 2, 3, 4


def step_key(seed_key: jax.Array, t: jax.Array, *, evaluation: bool = False
             ) -> jax.Array:
  """The PRNG key of step ``t`` (or of the evaluation after it) of a member.

  It depends on the member's seed and the step only: members that share a
  seed draw the same numbers whatever their other knobs (paired arms). The
  model hands each component its own key (``components.component_key``),
  the optimizer gets ``component_key(key, 'optimizer')`` as ``key=``.
  """
  stream = _EVAL_STREAM if evaluation else _STEP_STREAM
  return jax.random.fold_in(jax.random.fold_in(seed_key, stream), t)


class Carry(NamedTuple):
  """A member's whole training state between steps: with its knobs (the seed's
  key among them) it determines the rest of the run, so a checkpoint of it
  resumes bit for bit.

  Attributes:
    params: the model's parameters.
    model_state: the model's state (batch-norm statistics, ...).
    opt_state: one optimizer state per option of the optimizer axis.
    counts: what rounding did since the last log (``rounding_events``).
    scaler: the dynamic loss scaler's state.
    order: the sample order of the current epoch (minibatches; ``[0]`` for
      full batch): ``data.step_batch``.
    diverged_step: the step after which a parameter was first non-finite, or
      -1.
  """
  params: Any
  model_state: Any
  opt_state: Any
  counts: Any
  scaler: jax.Array
  order: jax.Array
  diverged_step: jax.Array


class Loop(NamedTuple):
  """The pieces of one member's training run, each pure.

  Attributes:
    init: ``init(knobs, data) -> Carry``: the state before step 1.
    step: ``step(knobs, data, carry, t, targets=None) -> carry``: optimizer
      step ``t`` (from 1; an unbatched step number keeps the epoch's
      reshuffle a branch under ``vmap``); ``targets``: ``targets(data)``,
      computed once outside a loop of steps.
    log: ``log(knobs, data, carry, t) -> (carry, metrics)``: evaluation after
      step ``t``; marks divergence and masks metrics of a diverged run.
    targets: ``targets(data)``: the full batch's regression targets as a
      ``Model.feature_major`` model's steps read them, ``[out_dim, n_train]``
      (else ``None``: ``step`` reads ``data``). Inside a loop XLA reads
      ``y_train`` transposed in the residual's fusion rather than hoist the
      transpose: 37% of a deep linear step on CPU, 3x faster from this copy.
  """
  init: Callable[..., Any]
  step: Callable[..., Any]
  log: Callable[..., Any]
  targets: Callable[..., Any]


class _Same:
  """A registry entry, compared by identity (hashable or not)."""
  __slots__ = ('entry',)

  def __init__(self, entry):
    self.entry = entry

  def __hash__(self):
    return id(self.entry)

  def __eq__(self, other):
    return isinstance(other, _Same) and other.entry is self.entry


def _code(config: TrainConfig) -> tuple[Any, ...]:
  """What ``config``'s names resolve to now: its model's ``make`` and each
  option's component (a ``Parsed`` registry builds its options from the
  name), and the user code they call (``provenance.user_code_sha256``). An
  option or model redefined under its name (a notebook cell run again) is
  another program, and so is one whose registered factory is unchanged but
  refers by name to a class or function the cell redefined (``lambda h, o:
  from_flax(Net())`` after ``Net`` was edited)."""
  entries = [models.MODELS.get(config.model)]
  for axis, names in config.option_dict().items():
    options = registry.AXES[axis].options
    if not isinstance(options, registry.Parsed):
      entries += [options.get(n) for n in names]
  return (*map(_Same, entries), provenance.user_code_sha256(entries))


def _cached_by_code(make):
  """``make(config)``, cached per config and per what its names resolve to
  (``_code``); ``__wrapped__`` is ``make`` uncached."""
  cached = functools.lru_cache(maxsize=64)(lambda config, code: make(config))

  @functools.wraps(make)
  def wrapper(config):
    return cached(config, _code(config))
  return wrapper


@_cached_by_code
def make_loop(config: TrainConfig) -> Loop:
  """The ``Loop`` of ``config``; ``make_train`` scans it."""
  options = config.option_dict()
  model = models.make_model(config.model, config.hidden, options)
  if config.dtype == 'float64' and not jax.config.jax_enable_x64:
    raise ValueError(
        "dtype 'float64' needs 64-bit JAX, which is off: call "
        "jax.config.update('jax_enable_x64', True) first (or use "
        "'float32'); without it every array would silently be float32.")
  dtype = jnp.dtype(config.dtype)
  # Rounding (placement.Policy) is traced only when some member rounds or
  # scales its loss; then the carry's counters hold what it did since the
  # last log.
  placement = components.placement
  places = placement.places(options)
  mixed = bool(places) or options['loss_scaling'] != ('none',)

  def optimizer_inputs(task, k, state, x, y, key):
    """The optimizer's keyword inputs on batch ``(x, y)`` at step key
    ``key``: its own key and, for regression, the residual function."""
    extra = {'key': components.component_key(key, 'optimizer')}
    if task == 'regression':
      # loss = 0.5 * ||residual||^2 for the least-squares optimizers.
      scale = jnp.sqrt(jnp.asarray(x.shape[0], x.dtype))
      extra['residual_fn'] = lambda p: (
          model.apply(p, state, x, k, train=True, key=key)[0] - y) / scale
    return extra

  def setup(knobs, data, t=None):
    """Knobs with defaults, the optimizer, the loss, the data in ``dtype``,
    and the rounding policy (with step ``t``'s key, if given)."""
    check_task(config, data.task)
    k = _resolve_knobs(config, knobs)
    policy = None
    if mixed:
      key = None if t is None else components.component_key(
          step_key(k[grid_lib.SEED], t), 'precision')
      policy = placement.Policy(options, k, key)
    hp = {knob.name: k[knob.name] for knob in components.optimizers.AXIS.knobs}
    hp |= {n: jnp.float32(v) for n, v in components.optimizers.CONSTANTS.items()}
    if policy is not None:
      hp = policy.constants(hp)
    opt = components.relaxed_optimizer(options['optimizer'], k['optimizer'], hp)
    data = jax.tree.map(
        lambda a: jnp.asarray(a, dtype) if jnp.issubdtype(a.dtype, jnp.floating)
        else jnp.asarray(a), data)
    return k, opt, LOSSES[data.task], data, policy

  def full_batch(data):
    return config.batch_size == 0 or config.batch_size >= data.n_train

  def init(knobs, data):
    k, opt, _, data, policy = setup(knobs, data, 0)
    init_key, _ = jax.random.split(k[grid_lib.SEED])
    params, state = jax.tree.map(
        lambda a: a.astype(dtype),
        model.init(init_key, data.in_dim, data.num_outputs, k))
    counts = (placement.counters(options, config.rounding_events) if mixed
              else {})
    scaler = jnp.zeros(2, jnp.float32)
    if policy is not None:
      params, counts = policy.round('storage', params, counts)
      scaler = policy.initial_scaler()
    # Step 1 draws epoch 0's order (``data.step_batch``): a placeholder here
    # (drawing it here too cost two sorts per chunk's start).
    order = jnp.zeros((0 if full_batch(data) else data.n_train,), jnp.int32)
    return Carry(params, state, opt.init(params), counts, scaler, order,
                 jnp.asarray(-1, jnp.int32))

  def targets(data):
    if not (model.feature_major and full_batch(data) and
            data.task == 'regression'):
      return None
    # Materialized here, outside the caller's loop (a barrier: XLA would
    # fold the two transposes back into a strided read).
    return jax.lax.optimization_barrier(
        jnp.asarray(data.y_train, dtype).T)

  def step(knobs, data, carry, t, targets=None):
    params, state, opt_state, counts, scaler, order, diverged_step = carry
    k, opt, loss_fn, data, policy = setup(knobs, data, t)
    if full_batch(data):
      x, y = data.x_train, data.y_train if targets is None else targets.T
    else:
      idx, order = data_lib.step_batch(
          jax.random.split(k[grid_lib.SEED])[1], data.n_train,
          config.batch_size, config.steps, t, order)
      x, y = data.x_train[idx], data.y_train[idx]

    key = step_key(k[grid_lib.SEED], t)
    hook = 'activations' in places

    def objective(params, state):
      tally = []
      extra = {'matmul_input': policy.matmul_input(tally)} if hook else {}
      out, state = model.apply(params, state, x, k, train=True, key=key,
                               **extra)
      return loss_fn(out, y), (state, sum(tally) if hook else None)

    # The gradient alone: the loss value would cost a reduction over the
    # whole [batch, outputs] residual per step and member (18% of a deep
    # linear step on CPU); divergence is read off the parameters instead.
    grads, (state, tally) = jax.grad(objective, has_aux=True)(params, state)
    if hook and 'overflows_activations' in counts:
      counts = counts | {
          'overflows_activations': counts['overflows_activations'] + tally[0],
          'underflows_activations': counts['underflows_activations'] + tally[1]}
    if policy is not None:
      # The parameters the member reads: a zero-weight option's have an
      # exact zero gradient (the strong zero), and their events do not count.
      # Read before the gradients are rounded: a leaf whose whole gradient
      # underflowed is still the member's (its optimizer state still moves
      # it), and its lost updates are the underflow's evidence.
      used = jax.tree.map(lambda g: jnp.any(g != 0), grads)
      grads, grads_finite, counts = policy.gradients(grads, scaler, counts)
    updates, new_opt_state = opt.update(
        grads, opt_state, params,
        **optimizer_inputs(data.task, k, carry[1], x, y, key))
    if policy is not None:
      updates, counts = policy.round('updates', updates, counts, used=used)
      # One state per optimizer option; only the member's own counts.
      rounded = []
      for w, option_state in zip(k['optimizer'], new_opt_state):
        option_state, counts = policy.round('optimizer_state', option_state,
                                            counts, counted=w != 0)
        rounded.append(option_state)
      new_opt_state = tuple(rounded)
    new_params = optax.apply_updates(params, updates)
    if policy is not None:
      new_params, counts = policy.round('storage', new_params, counts,
                                        used=used)
      skip = policy.skips(grads_finite)  # dynamic scaling, non-finite
      if 'updates_lost' in counts:  # updates that left their parameter
        # Finite values of a step that is taken only: a diverged run's NaN
        # updates counted as made and never lost (its later logs read 0%),
        # and a step dynamic scaling skips changes nothing.
        lost, made = [], []
        for u, p, s, m in zip(jax.tree.leaves(updates), jax.tree.leaves(params),
                              jax.tree.leaves(new_params),
                              jax.tree.leaves(used)):
          ok = m & ~skip & jnp.isfinite(u) & jnp.isfinite(s)
          counted = placement.count_both((u != 0) & (s == p) & ok,
                                         (u != 0) & ok)
          lost.append(counted[0])
          made.append(counted[1])
        counts = counts | {
            'updates_lost': counts['updates_lost'] + sum(lost),
            'updates_made': counts['updates_made'] + sum(made)}
      if policy.dynamic:  # a non-finite scaled gradient: skip the step
        new_params, new_opt_state = jax.tree.map(
            lambda old, new: jnp.where(skip, old, new), (params, opt_state),
            (new_params, new_opt_state))
        counts = counts | {'steps_skipped': counts['steps_skipped'] + skip}
        scaler = policy.next_scaler(scaler, grads_finite)
    params, opt_state = new_params, new_opt_state
    # p * 0 is 0 for finite p and NaN for inf or NaN: one sum of those is
    # finite iff every parameter is (a cheaper reduction than all(isfinite)).
    finite = jnp.isfinite(sum(jnp.sum(p * 0) for p in jax.tree.leaves(params)))
    diverged_step = jnp.where((diverged_step < 0) & ~finite, t, diverged_step)
    return Carry(params, state, opt_state, counts, scaler, order,
                 diverged_step)

  def _probe(k, opt, loss_fn, data, carry, t):
    """What the logged diagnostics see of the member after step ``t``."""
    params, state, opt_state = carry[:3]
    diagnostics_key = jax.random.fold_in(
        jax.random.fold_in(k[grid_lib.SEED], _DIAGNOSTICS_STREAM), t)
    # The probe batch: a training-size batch drawn for this log.
    batch = data.n_train if full_batch(data) else config.batch_size
    idx = data_lib.permutation(diagnostics_key, data.n_train)[:batch]
    x, y = data.x_train[idx], data.y_train[idx]
    eval_key = step_key(k[grid_lib.SEED], t, evaluation=True)

    def train_loss(p):  # full training set, train mode
      out, _ = model.apply(p, state, data.x_train, k, train=True, key=eval_key)
      return loss_fn(out, data.y_train)

    def loss(p, key):
      out, _ = model.apply(p, state, x, k, train=True, key=key)
      return loss_fn(out, y)

    key_now, key_next = (step_key(k[grid_lib.SEED], t + 1),
                         step_key(k[grid_lib.SEED], t + 2))

    def update(p, grads):  # the step the run would take from p on this batch
      updates, _ = opt.update(grads, opt_state, p, **optimizer_inputs(
          data.task, k, state, x, y, key_now))
      return optax.apply_updates(p, updates)

    def preactivations(p, key):
      seen = {}

      def record(i, h):
        seen[i] = h
        return h

      model.apply(p, state, x, k, train=True, key=key, preactivation=record)
      return [seen[i] for i in sorted(seen)]

    return diagnostics_lib.Probe(
        params=params, key=diagnostics_key, train_loss=train_loss, loss=loss,
        keys=(key_now, key_next),
        update=update, depth=model.depth and model.depth(params),
        preactivations=preactivations if model.preactivation_hook else None,
        learning_rate=k['learning_rate'], layer_keys=model.layer_keys)

  def log(knobs, data, carry, t):
    k, opt, loss_fn, data, policy = setup(knobs, data)
    params, state, opt_state, counts, scaler, order, diverged_step = carry
    key = step_key(k[grid_lib.SEED], t, evaluation=True)

    def forward(x):
      return model.apply(params, state, x, k, train=False, key=key)[0]

    def evaluate(x, y):
      out = (forward_in_blocks(forward, x) if model.per_sample
             and jax.default_backend() == 'cpu' else forward(x))
      metrics = {'loss': loss_fn(out, y)}
      if data.task == 'classification':
        metrics['accuracy'] = jnp.mean(jnp.argmax(out, -1) == y)
      return metrics

    metrics = {'train_loss': evaluate(data.x_train, data.y_train)['loss']}
    metrics |= {f'test_{m}': v for m, v in
                evaluate(data.x_test, data.y_test).items()}
    finite = jnp.all(jnp.isfinite(jnp.stack(list(metrics.values()))))
    diverged_step = jnp.where((diverged_step < 0) & ~finite, t, diverged_step)
    if config.diagnostics:
      probe = _probe(k, opt, loss_fn, data, carry, t)
      for name in config.diagnostics:
        metrics |= diagnostics_lib.LOGGED[name](probe)
    metrics = {m: jnp.where(diverged_step >= 0, jnp.nan, v)
               for m, v in metrics.items()}
    # What rounding did since the last log: kept after a divergence too (it
    # explains it).
    for name, count in counts.items():
      if name == 'updates_lost':
        made = counts['updates_made']
        metrics[name] = jnp.where(made > 0, count / made, jnp.nan)
      elif name != 'updates_made':
        metrics[name] = count
    if policy is not None and 'dynamic' in options['loss_scaling']:
      metrics['loss_scale'] = policy.scale(scaler)
    counts = jax.tree.map(jnp.zeros_like, counts)
    return Carry(params, state, opt_state, counts, scaler, order,
                 diverged_step), metrics

  if config.switched:  # traced with only each member's option
    def switching(fn):
      @functools.wraps(fn)
      def traced(*args, **kwargs):
        with components.relaxed.switching(config.switched):
          return fn(*args, **kwargs)
      return traced
    init, step, log = switching(init), switching(step), switching(log)
  return Loop(init, step, log, targets)


class Train(NamedTuple):
  """A member's run in resumable pieces: ``finish(advance(start(...)))``.

  ``start``, ``advance`` and ``finish`` are pure; ``program.execute`` vmaps
  them over a grid and calls ``advance`` again and again, each call a few
  seconds of work, returning to the host between calls (progress,
  checkpoints). Whatever the passes per call, the same compiled ``advance``
  runs each pass, so a run resumed from a checkpoint is bit-identical to one
  that was not interrupted. A pass is one log and the ``log_every`` steps
  after it; the last pass only logs.

  Attributes:
    config: the static config (provenance).
    passes: passes in the run (``len(config.log_steps())``).
    start: ``start(knobs, data) -> state``: ``(Carry, logged)``, ``logged``
      the metrics buffer (one row per log, zeros until logged).
    advance: ``advance(knobs, data, state, first, count) -> state``: passes
      ``first .. first + count - 1`` (those past ``passes`` do nothing);
      ``first`` and ``count`` are traced scalars, so one compile serves any.
    finish: ``finish(state) -> outputs``.
  """
  config: TrainConfig | None
  passes: int
  start: Callable[..., Any]
  advance: Callable[..., Any] | None
  finish: Callable[..., Any]


@_cached_by_code
def make_train(config: TrainConfig):
  """Returns the pure ``train(knobs, data) -> outputs`` of ``config``.

  ``train.resumable`` is the same run in pieces (``Train``), which
  ``program.execute`` runs; ``train`` itself is one ``scan`` over the passes
  (differentiable in reverse mode, which ``advance``'s loop of traced length
  is not), and ``train.config`` is ``config``.

  Outputs: ``step`` ``[L]``; ``train_loss``, ``test_loss`` (and
  ``test_accuracy`` for classification) ``[L]``, evaluated on the whole split in
  eval mode and NaN from the step a run diverged; ``diverged_step`` ``[]``, the
  first step after which a parameter was non-finite (or, if earlier, the first
  logged step with a non-finite metric), or -1. With a precision axis,
  ``rounding_events`` and the ``storage`` placement also ``updates_lost``
  ``[L]``: the fraction of nonzero parameter updates since the previous log
  that rounding to the stored format undid (NaN at step 0); other counters:
  ``components.placement.counters``.
  """
  loop = make_loop(config)
  log_steps = config.log_steps()
  every = config.log_every
  passes = len(log_steps)
  padded = (passes - 1) * every > config.steps  # a short last chunk

  def one_pass(knobs, data, targets, state, i):
    """Logs after step ``log_steps[i]``, then (but in the last pass) trains
    to the next log. ``i`` is unbatched: under ``vmap`` the branches stay
    branches, and the log and the step each appear once in the program."""
    carry, logged = state
    carry, metrics = loop.log(knobs, data, carry, jnp.asarray(log_steps)[i])
    logged = jax.tree.map(lambda buf, m: buf.at[i].set(m), logged, metrics)

    def step(carry, t):
      if padded:  # the last chunk's steps past config.steps do nothing
        return jax.lax.cond(t <= config.steps,
                            lambda c: loop.step(knobs, data, c, t, targets),
                            lambda c: c, carry), None
      return loop.step(knobs, data, carry, t, targets), None

    if config.remat:
      step = jax.checkpoint(step)
    ts = i * every + jnp.arange(1, every + 1, dtype=jnp.int32)
    carry = jax.lax.cond(i < passes - 1,
                         lambda c: jax.lax.scan(step, c, ts)[0],
                         lambda c: c, carry)
    return carry, logged

  def start(knobs, data):
    carry = loop.init(knobs, data)
    metrics = jax.eval_shape(
        lambda c: loop.log(knobs, data, c, jnp.int32(0))[1], carry)
    logged = jax.tree.map(
        lambda m: jnp.zeros((passes,) + m.shape, m.dtype), metrics)
    return carry, logged

  def advance(knobs, data, state, first, count, *, scan=False):
    targets = loop.targets(data)
    if scan:  # static bounds: differentiable
      return jax.lax.scan(
          lambda s, i: (one_pass(knobs, data, targets, s, i), None), state,
          first + jnp.arange(count, dtype=jnp.int32))[0]
    first = jnp.asarray(first, jnp.int32)
    stop = jnp.minimum(first + jnp.asarray(count, jnp.int32), passes)
    return jax.lax.while_loop(
        lambda c: c[0] < stop,
        lambda c: (c[0] + 1, one_pass(knobs, data, targets, c[1], c[0])),
        (first, state))[1]

  def finish(state):
    carry, logged = state
    return {'step': jnp.asarray(log_steps), **logged,
            'diverged_step': carry.diverged_step}

  def train(knobs, data: Dataset):
    return finish(advance(knobs, data, start(knobs, data), 0, passes,
                          scan=True))

  train.config = config  # provenance: the engine records it with the results
  train.resumable = Train(config, passes, start, advance, finish)
  return train


def final_state(config: TrainConfig, knobs, data: Dataset):
  """Trains one member (unstacked ``knobs``) without logging.

  Returns:
    ``(params, model_state)`` after ``config.steps`` steps: the point at which
    a diagnostic (e.g. the Hessian spectrum where gradient descent stalls) is
    evaluated. Pure and jittable; the same trajectory as the member's run in a
    grid (to float tolerance).
  """
  loop = make_loop(config)
  targets = loop.targets(data)
  carry = jax.lax.fori_loop(
      1, config.steps + 1, lambda t, c: loop.step(knobs, data, c, t, targets),
      loop.init(knobs, data))
  return carry.params, carry.model_state
