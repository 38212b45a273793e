"""The run of a grid: one compiled program, or one per cell of a partition.

``run(config, grid, data)`` trains every member of ``grid``: by default as one
relaxed program (every option of each choice axis computed, its weight picking
the member's), split by the choice axes whose options differ in matmul cost
(``auto_partition``); on a CPU (``switch='auto'``), members run in groups by
the options of the choice axes that can branch, each group through the same
program, which then computes only the group's options. Each part is
executed by ``program.execute`` and the parts merged into one ``Results`` in
grid order. Data flows grid -> engine -> train (the pure loop) -> results.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from rahimi_jax import flops as flops_lib
from rahimi_jax import grid as grid_lib
from rahimi_jax import program
from rahimi_jax import registry
from rahimi_jax import results as results_lib
from rahimi_jax import train as train_lib
from rahimi_jax.data import Dataset


# ``partition='auto'`` splits by a choice axis when the relaxed program's step
# costs at least this many times the step its members need on their own.
AUTO_PARTITION_RATIO = 2.0
# ``switch='auto'`` keeps at least this many members in a group: a member
# alone has no other to share its program's calls (its device's vmap).
MIN_GROUP = 2


def step_flops(config: train_lib.TrainConfig, grid: grid_lib.Grid, data: Dataset, *,
               evaluation: bool = False) -> int:
  """Matmul FLOPs of one training step of a member of ``grid`` (traced, not run).

  The step is that of the program ``grid`` compiles to: every option of the
  grid's choice axes is computed. A ``while_loop`` (the conjugate gradients of
  the least-squares optimizers) counts one trip per parameter, CG's bound.
  With ``evaluation=True``: the FLOPs of one evaluation (``Loop.log``) instead.
  """
  loop = train_lib.make_loop(config.for_grid(grid))
  knobs = jax.tree.map(lambda v: v[0], grid.knobs([0]))
  carry = jax.eval_shape(loop.init, knobs, data)
  fn = loop.log if evaluation else loop.step
  n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(carry.params))
  return flops_lib.matmul_flops(fn, knobs, data, carry,
                                jax.ShapeDtypeStruct((), jnp.int32),
                                while_trips=n_params)


def auto_partition(config: train_lib.TrainConfig, grid: grid_lib.Grid, data: Dataset,
                   ratio: float = AUTO_PARTITION_RATIO
                   ) -> tuple[tuple[str, ...], dict[str, float]]:
  """The choice axes worth one program per option, by a matmul cost model.

  For each ``Choice`` axis with several options: the relaxed step's FLOPs
  over the mean FLOPs of the step each member needs with its own option of
  that axis (``step_flops``). An axis whose ratio is at least ``ratio`` is
  chosen: its members would do that many times their own work in one relaxed
  program, which outweighs compiling one program per option. Options that
  differ only elementwise (optax's first-order optimizers, the norms) give
  ratio 1.00; Levenberg–Marquardt's CG solves beside gradient descent gave
  5.85 in the deep linear study (where splitting ran 4x faster).

  Returns:
    ``(axes, ratios)``: the axes to partition by, and every candidate axis's
    ratio.
  """
  candidates = [axis for axis, names in grid.choices.items()
                if isinstance(grid.axis(axis), grid_lib.Choice)
                and len(names) > 1]
  axes, ratios = [], {}
  if not candidates:
    return (), ratios
  relaxed = step_flops(config, grid, data)
  for axis in candidates:
    names = grid.choices[axis]
    own = 0
    for name in names:
      indices = [m.index for m in grid.members if m.values[axis] == name]
      own += len(indices) * step_flops(config, grid.subset(indices), data)
    mean_own = own / len(grid)
    ratios[axis] = relaxed / mean_own if mean_own else (
        float('inf') if relaxed else 1.0)
    if ratios[axis] >= ratio:
      axes.append(axis)
  return tuple(axes), ratios


def _groups(grid: grid_lib.Grid, axes: tuple[str, ...]) -> list[list[int]]:
  """The members' indices grouped by their options of ``axes``, in order of
  first appearance."""
  groups = {}
  for m in grid.members:
    groups.setdefault(tuple(m.values[a] for a in axes), []).append(m.index)
  return list(groups.values())


def _switchable(grid: grid_lib.Grid) -> list[str]:
  return [a.name for a in grid.axes if isinstance(a, grid_lib.Choice)
          and registry.AXES[a.name].switchable]


def check_switch(grid: grid_lib.Grid, switch: tuple[str, ...] | str
                 ) -> tuple[str, ...] | str:
  """``run``'s ``switch`` checked against ``grid`` (before any compile)."""
  if isinstance(switch, str):
    if switch != 'auto':
      raise ValueError(f"switch must be a tuple of choice axes or 'auto'; "
                       f'got {switch!r}.')
    return switch
  switchable = _switchable(grid)
  for axis in switch:
    if axis not in switchable:
      raise ValueError(
          f'switch: {axis!r} is not a switchable choice axis of the grid; '
          f'accepted: {", ".join(switchable) or "none"}.')
  return tuple(switch)


def auto_switch(grid: grid_lib.Grid, partition: tuple[str, ...] = ()
                ) -> tuple[str, ...]:
  """The choice axes ``run(switch='auto')`` switches: each switchable one of
  several options (most options first), while every group of members (a
  combination of the partition's and the switched axes' options) keeps at
  least ``MIN_GROUP`` members. It depends on the grid alone, never on the
  devices, so a run resumed on other devices runs the same programs.

  Switching costs no compile (the groups share one program) and saves the
  options a member does not take: 1.9-2.1x the run of the batch-norm study's
  grids (four norms), 1.2-1.3x the default ablation's (WORKSPACE.md, CPU). It
  costs parallelism where the groups get small: they run one after another.
  Off the CPU it switches nothing: an accelerator runs the whole relaxed grid
  as one wide ``vmap`` (``tuning.ACCELERATOR_CHUNK``), where the groups would
  run one after another, each a fraction as wide (not measured on one yet).
  """
  if jax.default_backend() != 'cpu':
    return ()
  chosen = []
  candidates = sorted((a for a in _switchable(grid) if a not in partition
                       and len(grid.choices[a]) > 1),
                      key=lambda a: -len(grid.choices[a]))
  for axis in candidates:
    if min(map(len, _groups(grid, (*partition, *chosen, axis)))) >= MIN_GROUP:
      chosen.append(axis)
  return tuple(chosen)


def run(config: train_lib.TrainConfig, grid: grid_lib.Grid, data: Dataset, *,
        partition: tuple[str, ...] | str = 'auto',
        switch: tuple[str, ...] | str = 'auto', metadata=None,
        **program_kwargs) -> results_lib.Results:
  """Trains every member of ``grid`` under ``config``.

  Args:
    config: the static configuration; its options come from the grid.
    grid: the members.
    data: the dataset.
    partition: choice axes to split the grid by: one program per combination
      of their options instead of one relaxed program computing every option
      (worth it when one option, e.g. Levenberg–Marquardt, dominates cost);
      or ``'auto'``: the axes ``auto_partition`` picks.
    switch: choice axes (``registry.Axis.switchable``) whose options each
      member computes alone, not all of them relaxed: the members run in
      groups, one per combination of these axes' options, one group after
      another, and every group runs the same compiled program, which
      branches on the group's options (``TrainConfig.switched``). One
      compile, as relaxed; each member's step as cheap as in a program of
      its own options. An axis in ``partition`` is split, not switched.
      ``'auto'`` (the default; ``auto_switch``): on a CPU, every switchable
      choice axis of several options, while each group keeps ``MIN_GROUP``
      members; ``()``: none (every member computes every option). ``Gate``
      axes are never switched.
    metadata: extra provenance stored with the results.
    **program_kwargs: passed to ``program.execute``.

  Returns:
    ``Results`` in the grid's member order; ``metadata['partition']`` records
    the axes used (and, for ``'auto'``, every candidate's cost ratio).

  Raises:
    program.Interrupted: on Ctrl-C, with the members of the programs and
      member-batches that had finished.
  """
  train_lib.check_task(config.for_grid(grid), data.task)
  choice = {'mode': 'given'}
  if isinstance(partition, str):
    if partition != 'auto':
      raise ValueError(f"partition must be a tuple of choice axes or 'auto'; "
                       f'got {partition!r}.')
    partition, ratios = auto_partition(config, grid, data)
    choice = {'mode': 'auto', 'ratios': ratios,
              'threshold': AUTO_PARTITION_RATIO}
  partition = tuple(partition)
  choice['axes'] = list(partition)
  for axis in partition:
    if not isinstance(grid.axis(axis), grid_lib.Choice):
      raise ValueError(f'partition: {axis!r} is not a choice axis of the grid; '
                       f'choice axes: {", ".join(grid.choices)}.')
  switch = check_switch(grid, switch)
  if switch == 'auto':
    switch = auto_switch(grid, partition)
  switch = tuple(a for a in switch if a not in partition
                 and len(grid.choices[a]) > 1)
  choice['switch'] = list(switch)
  parts, indices = [], []
  for cell in _groups(grid, partition + switch):
    # Everything between two parts is in here: a Ctrl-C there too keeps the
    # parts that had finished.
    try:
      sub = grid.subset(cell, keep=switch)
      train_config = dataclasses.replace(config.for_grid(sub),
                                         switched=switch)
      part = program.execute(train_lib.make_train(train_config), sub, data,
                             metadata=metadata, **program_kwargs)
    except KeyboardInterrupt as e:  # program.Interrupted, or during a compile
      if getattr(e, 'results', None) is not None:
        parts.append(e.results)
        indices.append(cell[:e.finished])
      finished = sum(map(len, indices))
      raise program.Interrupted(
          _merge(parts, indices, grid, config, choice) if parts else None,
          finished, len(grid)) from None
    parts.append(part)
    indices.append(cell)
  return _merge(parts, indices, grid, config, choice)


def _merge(parts, indices, grid, config, choice):
  """One ``Results`` of the parts' members, in grid order."""
  infos = [part.metadata['engine'] for part in parts]
  meta = dict(parts[0].metadata)
  meta['axes'] = {a.name: list(a.labels) for a in grid.axes}
  meta['train_config'] = dataclasses.asdict(config.for_grid(grid))
  meta['partition'] = choice
  if len(parts) > 1:
    # Switched groups of one partition cell share its program.
    programs = len({tuple(grid.members[i].values[a] for a in choice['axes'])
                    for i in np.concatenate(indices)})
    meta['engine'] = {
        **({'programs': programs} if programs > 1 else {}),
        'groups': len(parts), 'partition': choice['axes'],
        'switch': choice['switch'],
        'compile_s': sum(i['compile_s'] for i in infos),
        'compile_cache_hits': sum(i['compile_cache_hits'] for i in infos),
        'run_s': sum(i['run_s'] for i in infos),
        'wall_s': sum(i['wall_s'] for i in infos), 'parts': infos,
        'members': len(grid),
        'num_devices': max(i['num_devices'] for i in infos),
        'member_batches': sum(i['member_batches'] for i in infos),
        'member_batch_size': max(i['member_batch_size'] for i in infos)}
    if all('resumed_passes' in i for i in infos):  # checkpointed parts
      meta['engine']['resumed_passes'] = [
          p for i in infos for p in i['resumed_passes']]
  merged = results_lib.concat(parts, meta)
  order = np.argsort(np.concatenate(indices), kind='stable')
  rows_per_member = len(merged) // len(order)
  rows = (order[:, None] * rows_per_member +
          np.arange(rows_per_member)[None]).ravel()
  return results_lib.Results({k: v[rows] for k, v in merged.columns.items()},
                             meta)
