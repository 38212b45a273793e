"""The run of a grid: one compiled program, or one per cell of a partition.

``run(config, grid, data)`` trains every member of ``grid``: by default as one
relaxed program (every option of each choice axis computed, its weight picking
the member's), split by the choice axes whose options differ in matmul cost
(``auto_partition``); on a CPU (``switch='auto'``), members run in groups by
the options of the choice axes that can branch and cost enough
(``auto_switch``), each group through the same program, which then computes
only the group's options. Each part is executed by ``program.execute`` and
the parts merged into one ``Results`` in grid order. Data flows grid ->
engine -> train (the pure loop) -> results.
"""

from collections.abc import Sequence
import dataclasses
import hashlib

import jax
import jax.numpy as jnp
import numpy as np

from rahimi_jax import flops as flops_lib
from rahimi_jax import grid as grid_lib
from rahimi_jax import program
from rahimi_jax import registry
from rahimi_jax import results as results_lib
from rahimi_jax import train as train_lib
from rahimi_jax import tuning
from rahimi_jax.data import check_dataset
from rahimi_jax.data import Dataset


# ``partition='auto'`` splits by a choice axis when the relaxed program's step
# costs at least this many times the step its members need on their own.
AUTO_PARTITION_RATIO = 2.0
# ``switch='auto'`` switches a choice axis when the relaxed step writes at
# least this many times the elements its members' own steps do (gradient
# descent beside Adam, 1.02x: switched 2.2x slower; the rounding study's
# optimizers, 1.16x: 1.35x faster; WORKSPACE.md, 2-core Intel Xeon) ...
AUTO_SWITCH_RATIO = 1.1
# ... and keeps at least this many members in a group: a member alone has no
# other to share its program's calls (its device's vmap).
MIN_GROUP = 2


def _step_jaxpr(config: train_lib.TrainConfig, grid: grid_lib.Grid,
                data: Dataset, evaluation: bool):
  """The jaxpr of one step (or evaluation) of a member of ``grid``'s program,
  and the member's parameter count."""
  loop = train_lib.make_loop(config.for_grid(grid))
  knobs = jax.tree.map(lambda v: v[0], grid.knobs([0]))
  carry = jax.eval_shape(loop.init, knobs, data)
  fn = loop.log if evaluation else loop.step
  n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(carry.params))
  return jax.make_jaxpr(fn)(knobs, data, carry, jax.ShapeDtypeStruct(
      (), jnp.int32)).jaxpr, n_params


def step_flops(config: train_lib.TrainConfig, grid: grid_lib.Grid, data: Dataset, *,
               evaluation: bool = False) -> int:
  """Matmul FLOPs of one training step of a member of ``grid`` (traced, not run).

  The step is that of the program ``grid`` compiles to: every option of the
  grid's choice axes is computed. A ``while_loop`` (the conjugate gradients of
  the least-squares optimizers) counts one trip per parameter, CG's bound.
  With ``evaluation=True``: the FLOPs of one evaluation (``Loop.log``) instead.
  """
  jaxpr, n_params = _step_jaxpr(config, grid, data, evaluation)
  return flops_lib.jaxpr_matmul_flops(jaxpr, while_trips=n_params)


@dataclasses.dataclass(frozen=True)
class CostRatio:
  """A choice axis's relaxed step over the mean step its members need with
  their own option alone: by matmul FLOPs and by the elements the other
  operations write (``flops.element_ops``)."""
  matmul: float
  elementwise: float


def cost_ratios(config: train_lib.TrainConfig, grid: grid_lib.Grid,
                data: Dataset) -> dict[str, CostRatio]:
  """``CostRatio`` of each ``Choice`` axis of ``grid`` with several options.

  Traced, not run: one trace per option (0.1-0.5 s each; 7.7 s for the
  rounding study's 15). Each trace's cost is remembered by what it depends
  on, the step's options and knob shapes (``tuning.remembered``: per program
  signature and code), not the grid's members, so a later run of the grid,
  or of another grid of the same options (other seeds or values), traces
  nothing.
  """

  def traced(sub):
    jaxpr, n_params = _step_jaxpr(config, sub, data, False)
    return [flops_lib.jaxpr_matmul_flops(jaxpr, n_params),
            flops_lib.jaxpr_element_ops(jaxpr, n_params)]

  def cost(sub):
    knobs = [(jax.tree_util.keystr(k), np.shape(v),
              str(getattr(v, 'dtype', type(v))))
             for k, v in jax.tree.leaves_with_path(sub.knobs([0]))]
    key = hashlib.sha256(repr((tuning.signature(config.for_grid(sub), data),
                               knobs)).encode()).hexdigest()
    return np.array(tuning.remembered(f'step_cost {key}', lambda: traced(sub)),
                    float)

  candidates = [axis for axis, names in grid.choices.items()
                if isinstance(grid.axis(axis), grid_lib.Choice)
                and len(names) > 1]
  if not candidates:
    return {}
  relaxed = cost(grid)
  ratios = {}
  for axis in candidates:
    # The matmul ratio against the partition's cells (each drops the options
    # its members do not use, of every axis); the elementwise one against
    # switched groups, which keep every other axis's options (a union grid's
    # option of another axis used beside one option only is still computed).
    others = [a for a in grid.choices if a != axis]
    groups = _groups(grid, (axis,))
    own = [sum(len(i) * cost(grid.subset(i, keep=keep))[k] for i in groups)
           / len(grid) for k, keep in ((0, ()), (1, others))]
    ratios[axis] = CostRatio(*(
        float(r / o) if o else (float('inf') if r else 1.0)
        for r, o in zip(relaxed, own)))
  return ratios


def auto_partition(ratios: dict[str, CostRatio],
                   threshold: float = AUTO_PARTITION_RATIO) -> tuple[str, ...]:
  """The choice axes worth one program per option (``cost_ratios``).

  An axis whose relaxed step does at least ``threshold`` times the matmul
  FLOPs of its members' own steps is chosen: its members would do that many
  times their own work in one relaxed program, which outweighs compiling one
  program per option. Options that differ only elementwise (optax's
  first-order optimizers, the norms) give 1.00; Levenberg–Marquardt's CG
  solves beside gradient descent gave 5.85 in the deep linear study (where
  splitting ran 4x faster).
  """
  return tuple(a for a, r in ratios.items() if r.matmul >= threshold)


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


def _check_axes(name: str, given: tuple[str, ...] | str,
                accepted: Sequence[str], what: str) -> tuple[str, ...] | str:
  """``given`` (``'auto'`` or axis names, each once, each ``accepted``)."""
  if isinstance(given, str):
    if given != 'auto':
      raise ValueError(f"{name} must be a tuple of choice axes or 'auto'; "
                       f'got {given!r}.')
    return given
  twice = sorted({a for a in given if list(given).count(a) > 1})
  if twice:
    raise ValueError(f'{name}: {", ".join(twice)} listed twice.')
  for axis in given:
    if axis not in accepted:
      raise ValueError(f'{name}: {axis!r} is not a {what} of the grid; '
                       f'accepted: {", ".join(accepted) or "none"}.')
  return tuple(given)


def check_partition(grid: grid_lib.Grid, partition: tuple[str, ...] | str
                    ) -> tuple[str, ...] | str:
  """``run``'s ``partition`` checked against ``grid`` (before any compile)."""
  return _check_axes('partition', partition, tuple(grid.choices),
                     'choice axis')


def check_switch(grid: grid_lib.Grid, switch: tuple[str, ...] | str
                 ) -> tuple[str, ...] | str:
  """``run``'s ``switch`` checked against ``grid`` (before any compile)."""
  return _check_axes('switch', switch, tuple(_switchable(grid)),
                     'switchable choice axis')


def auto_switch(grid: grid_lib.Grid, ratios: dict[str, CostRatio],
                partition: tuple[str, ...] = (),
                threshold: float = AUTO_SWITCH_RATIO) -> tuple[str, ...]:
  """The choice axes ``run(switch='auto')`` switches: each switchable one
  (``registry.Axis.switchable``) whose relaxed step writes at least
  ``threshold`` times the elements its members' own steps do
  (``cost_ratios``), most first, while every group of members (a
  combination of the partition's and the switched axes' options) keeps at
  least ``MIN_GROUP`` members. Traced costs and the grid decide, never the
  devices, so a run resumed on other devices runs the same groups.

  Switching costs no compile (the groups share one program) and saves the
  work of the options a member does not take, but its groups run in
  narrower chunks, and a group under half the first's size after the
  others: where the options cost little (the deep linear study's gradient
  descent beside Adam, 1.02x) its run took 2.2x as long (WORKSPACE.md,
  CPU). Off the CPU it switches nothing: an accelerator runs
  the whole relaxed grid as one wide ``vmap`` (``tuning.ACCELERATOR_CHUNK``),
  where the groups would run one after another, each a fraction as wide (on
  an H200 the default ablation ran 0.7 s relaxed, 1.3 s in 9 groups).
  """
  if jax.default_backend() != 'cpu':
    return ()
  chosen = []
  candidates = sorted((a for a in _switchable(grid) if a not in partition
                       and a in ratios and ratios[a].elementwise >= threshold),
                      key=lambda a: -ratios[a].elementwise)
  for axis in candidates:
    if min(map(len, _groups(grid, (*partition, *chosen, axis)))) >= MIN_GROUP:
      chosen.append(axis)
  return tuple(chosen)


def run(config: train_lib.TrainConfig, grid: grid_lib.Grid, data: Dataset, *,
        partition: tuple[str, ...] | str = 'auto',
        switch: tuple[str, ...] | str | None = None, metadata=None,
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
      groups, one per combination of these axes' options, whose chunks share
      the devices' rounds (a chunk never mixes two groups; a group under half
      the first's size runs after), and every group runs the same compiled
      program, which branches on the group's options
      (``TrainConfig.switched``). One
      compile, as relaxed; each member's step as cheap as in a program of
      its own options. An axis in ``partition`` is split, not switched.
      ``'auto'`` (``auto_switch``): on a CPU, each switchable choice axis
      whose options cost enough that computing all of them outweighs running
      the groups each in narrower chunks; ``()``: none (every member computes
      every option); ``None`` (the default): the enclosing
      ``program.run_options``' (a launcher's ``--switch``), ``'auto'``
      outside one. ``Gate`` axes are never switched.
    metadata: extra provenance stored with the results.
    **program_kwargs: passed to ``program.execute``.

  Returns:
    ``Results`` in the grid's member order; ``metadata['partition']`` records
    the axes partitioned and switched (and, for ``'auto'``, every
    candidate's cost ratio, ``cost_ratios``).

  Raises:
    program.Interrupted: on Ctrl-C, with the members of the programs and
      member-batches that had finished.
  """
  data = check_dataset(data)
  whole = config.for_grid(grid)
  whole.check_knobs_read(grid)
  train_lib.check_task(whole, data.task)
  choice = {'mode': 'given'}
  partition = check_partition(grid, partition)
  switch = check_switch(grid, program.current_options().switch
                        if switch is None else switch)
  ratios = (cost_ratios(config, grid, data)
            if 'auto' in (partition, switch) else {})
  if partition == 'auto':
    partition = auto_partition(ratios)
    choice = {'mode': 'auto', 'threshold': AUTO_PARTITION_RATIO,
              'ratios': {a: r.matmul for a, r in ratios.items()}}
  partition = tuple(partition)
  choice['axes'] = list(partition)
  if switch == 'auto':
    switch = auto_switch(grid, ratios, partition)
    choice['switch_threshold'] = AUTO_SWITCH_RATIO
    choice['switch_ratios'] = {a: ratios[a].elementwise
                               for a in _switchable(grid) if a in ratios}
  switch = tuple(a for a in switch if a not in partition
                 and len(grid.choices[a]) > 1)
  choice['switch'] = list(switch)
  # One part per partition cell: (the cell's members, the positions among
  # them of its switched groups, run side by side in one call). A group's
  # grid keeps every option its cell uses of each choice axis, so that the
  # groups of a cell share one program (a union grid's groups use different
  # options: the rounding study's dynamic loss scaling only beside the
  # gradients placement), and the first group's chunk width (a smaller
  # group's chunk padded with copies): a width chosen per group size (the
  # rounding study's groups of 28 and 24 members; the precision benchmark's
  # of 4 and 3) would compile the program again. The largest group is the
  # first (in the grid's order, a smaller one first capped every group's
  # width at its size). A group under half the first's size runs after, in
  # a call of its own: at the shared width where it fills half a chunk of
  # it, else at a width of its own.
  plan = []
  for k, cell in enumerate(_groups(grid, partition)):
    cell_grid = grid.subset(cell)
    groups = sorted(_groups(cell_grid, switch), key=len, reverse=True)
    side = [x for x in groups if 2 * len(x) >= len(groups[0])]
    plan += [(k, cell, cell_grid, side)] + [
        (k, cell, cell_grid, [x]) for x in groups if x not in side]
  parts, indices, widths = [], [], {}
  for k, cell, cell_grid, groups in plan:
    # Everything between two parts is in here: a Ctrl-C there too keeps the
    # parts that had finished.
    positions = [i for group in groups for i in group]
    members = [cell[i] for i in positions]
    try:
      kwargs = dict(program_kwargs)
      sub = cell_grid
      if switch:
        sub = cell_grid.subset(positions, keep=cell_grid.choices)
        kwargs['groups'] = [len(group) for group in groups]
        width = widths.get(k)
        if (width is not None and kwargs.get('chunk_size') is None
            and 2 * len(groups[0]) >= width):
          kwargs['chunk_size'], kwargs['pad_to_width'] = width, True
      train_config = dataclasses.replace(config.for_grid(sub),
                                         switched=switch)
      part = program.execute(train_lib.make_train(train_config), sub, data,
                             metadata=metadata, **kwargs)
      widths.setdefault(k, part.metadata['engine']['chunk_size'])
    except KeyboardInterrupt as e:  # program.Interrupted, or during a compile
      if getattr(e, 'results', None) is not None:
        parts.append(e.results)
        indices.append(members[:e.finished])
      finished = sum(map(len, indices))
      raise program.Interrupted(
          _merge(parts, indices, grid, config, choice) if parts else None,
          finished, len(grid)) from None
    parts.append(part)
    indices.append(members)
  return _merge(parts, indices, grid, config, choice)


def _merge(parts, indices, grid, config, choice):
  """One ``Results`` of the parts' members, in grid order."""
  infos = [part.metadata['engine'] for part in parts]
  meta = dict(parts[0].metadata)
  meta['axes'] = {a.name: list(a.labels) for a in grid.axes}
  meta['train_config'] = dataclasses.asdict(config.for_grid(grid))
  meta['partition'] = choice
  if len(parts) > 1:
    # Switched groups of one partition cell share its program, but a group
    # run at a width of its own.
    programs = len({(tuple(grid.members[i[0]].values[a]
                           for a in choice['axes']), info['chunk_size'])
                    for i, info in zip(indices, infos) if len(i)})
    meta['engine'] = {
        **({'programs': programs} if programs > 1 else {}),
        'groups': sum(i.get('groups', 1) for i in infos),
        'partition': choice['axes'],
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
