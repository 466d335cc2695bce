"""Device mesh, logical-axis rules, parameter and batch shardings, multi-process start-up.

The mesh is `data x fsdp x tensor` (`config.mesh.shape`, one size may be -1) with Auto axis types, so
`nn.with_logical_constraint` works; enter it with `jax.set_mesh(mesh)` and `nn.logical_axis_rules(rules)`.
Parameter shardings come from the logical names on the abstract params (`jax.eval_shape` of the init),
never from a materialised tree. Batches are split over `data` and `fsdp` (the `batch` rule).
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding

MESH_AXES = ("data", "fsdp", "tensor")
Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]


def mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
  """`shape` with its -1 filled so that the product is `num_devices`; ValueError if it cannot fit."""
  shape = tuple(int(s) for s in shape)
  fixed = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % fixed:
      raise ValueError(f"mesh.shape={shape} does not fit {num_devices} devices: the fixed sizes multiply to "
                       f"{fixed}, which does not divide {num_devices}")
    shape = tuple(num_devices // fixed if s == -1 else s for s in shape)
  elif fixed != num_devices:
    raise ValueError(f"mesh.shape={shape} needs {fixed} devices but {num_devices} are available: "
                     "change mesh.shape or set one axis to -1")
  return shape


def create_mesh(mesh_config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The `data x fsdp x tensor` mesh over `devices` (default: all devices of all processes)."""
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(mesh_config.shape, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def data_parallel_mesh() -> Mesh:
  """A mesh that splits batches over every device and replicates the weights (sampling)."""
  return create_mesh(ml_collections.ConfigDict({"shape": (-1, 1, 1)}))


def logical_rules(mesh_config: ml_collections.ConfigDict) -> Rules:
  """The config's logical-axis rules as the tuples Flax expects (mesh axes as str, tuple or None)."""
  return tuple((name, axes if axes is None or isinstance(axes, str) else tuple(axes))
               for name, axes in mesh_config.logical_axis_rules)


def param_shardings(abstract_params: Any, mesh: Mesh, rules: Rules) -> Any:
  """NamedShardings for a tree of logically partitioned (abstract) params, e.g. `jax.eval_shape(init)`."""
  return nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract_params), mesh, rules)


def place_params(params: Any, abstract_params: Any, mesh: Mesh, rules: Rules,
                 cast: Callable[[Any], Any] | None = None) -> tuple[Any, Any]:
  """Params whose full value every process holds (host or one-device arrays) -> global arrays sharded by the
  logical names of `abstract_params`, each device receiving only its slice (`cast` applied to each slice, e.g. a
  dtype); also returns the shardings. Params that are global arrays already (e.g. initialised under the mesh)
  are resharded on the devices."""
  cast = cast or (lambda x: x)

  def place(x, sharding):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return jax.device_put(cast(x), sharding)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: cast(x[index]))

  shardings = param_shardings(abstract_params, mesh, rules)
  return jax.tree.map(place, params, shardings), shardings


def strip_boxes(tree: Any) -> Any:
  """Removes the logical-axis boxes without adding sharding constraints (safe on abstract values)."""
  is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
  return jax.tree.map(lambda x: x.unbox(apply_constraint=False) if is_box(x) else x, tree, is_leaf=is_box)


def abstract_arrays(tree: Any, shardings: Any) -> Any:
  """`jax.ShapeDtypeStruct`s of `tree`'s leaves with `shardings` (a matching tree, or one sharding for all):
  the targets of a checkpoint restore or an ahead-of-time compile."""
  if not isinstance(shardings, jax.sharding.Sharding):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=shardings), tree)


def _nbytes(leaf: Any) -> int:
  return math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize


def replicated_params(abstract_params: Any, shardings: Any) -> list[tuple[str, int]]:
  """(path, bytes) of every parameter that no mesh axis splits, so that each device holds all of it; largest
  first."""
  leaves = jax.tree_util.tree_leaves_with_path(nn.meta.unbox(abstract_params))
  whole = [(jax.tree_util.keystr(path), _nbytes(leaf)) for (path, leaf), sharding
           in zip(leaves, jax.tree.leaves(shardings)) if sharding.shard_shape(leaf.shape) == tuple(leaf.shape)]
  return sorted(whole, key=lambda item: -item[1])


def sharded_fraction(abstract_params: Any, shardings: Any) -> float:
  """Fraction of parameter bytes that are split over more than one device."""
  total = sum(_nbytes(leaf) for leaf in jax.tree.leaves(nn.meta.unbox(abstract_params)))
  return 1.0 - sum(size for _, size in replicated_params(abstract_params, shardings)) / total


def batch_sharding(mesh: Mesh, rules: Rules) -> NamedSharding:
  """Sharding of batch arrays: the leading axis split by the `batch` rule (data and fsdp), the rest whole."""
  return NamedSharding(mesh, nn.logical_to_mesh_axes(("batch",), rules))


def batch_devices(mesh: Mesh, rules: Rules) -> int:
  """How many devices the batch axis is split over (a global batch must be a multiple of it)."""
  axes = batch_sharding(mesh, rules).spec[0]
  axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
  return math.prod(mesh.shape[axis] for axis in axes)


def global_batch(local_batch: Any, mesh: Mesh, rules: Rules) -> Any:
  """Assembles each process's slice of the batch (a tree of host arrays) into global sharded arrays.

  Every process passes its own equal share of the global batch along axis 0, in process order; nothing is
  gathered to one host (`jax.make_array_from_process_local_data`).
  """
  sharding = batch_sharding(mesh, rules)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def _multi_process_launch() -> bool:
  """True when a scheduler's environment names several processes."""
  env = os.environ
  return bool(env.get("MEGASCALE_COORDINATOR_ADDRESS")  # multi-slice TPU
              or "," in env.get("TPU_WORKER_HOSTNAMES", "")  # TPU pod slice on GKE: one name per host
              or int(env.get("SLURM_NTASKS") or 1) > 1
              or int(env.get("OMPI_COMM_WORLD_SIZE") or 1) > 1)


def maybe_initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                                 process_id: int | None = None, force: bool = False) -> bool:
  """Starts `jax.distributed` when this is one process of several; returns whether it is running.

  Launchers call this first, before any other JAX call (never at import or config parsing). Without
  arguments it starts only when the environment names several processes (multi-slice TPU, GKE TPU pod,
  SLURM, Open MPI), and JAX detects the rest; `force` starts auto-detection anyway (a TPU VM pod slice,
  whose hosts come from the metadata server); on other clusters pass the three values explicitly.
  """
  if jax.distributed.is_initialized():
    return True
  explicit = (coordinator_address, num_processes, process_id)
  if all(arg is None for arg in explicit) and not (force or _multi_process_launch()):
    return False
  jax.distributed.initialize(coordinator_address, num_processes, process_id)
  return True
