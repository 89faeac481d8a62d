"""Data-parallel training over every device JAX sees: one GPU, several, or a TPU pod slice.

    initialize()                       multi-host jobs only, first thing: jax.distributed joins
                                       the hosts; jax.devices() then lists every host's devices
    mesh = data_mesh()                 a 1-D mesh, axis "data", over jax.devices()
    shardings = state_shardings(learner, mesh)   where each leaf of bro.LearnerState lives
    state = init(learner, key, shardings)        made in place, already split

The layout (`state_shardings`): the N environments (every leaf of `env_state`, whose first axis
is N: physics, observations, clip buffers, masks) and the replay's rows are split over "data";
parameters, optimizer states, the rng key and the step counter are replicated. Each update's
sampled batch is split over "data" too (`batch_sharding`, applied inside `Bro.updates`), so
each device computes the losses and gradients of its share; XLA's SPMD partitioner inserts the
all-reduce that averages them, and the gathers and scatters between the replay rows and the
batch. The program is the one-device program, partitioned: the same key draws the same
actions and the same batches on any number of devices, and the results agree with one device
up to the order of floating-point sums (tests/test_parallel.py states the tolerance).

Constraints: N, the update batch and the replay capacity must be multiples of the number of
devices (`check_divisible` says which is not). The physics backend should be `mjx`: the `cpu`
backend is a host callback, which runs the whole batch on one device.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from nil_jax.agents import bro, checkpoint

DATA = "data"


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> None:
    """Joins the processes of a multi-host job; call it once per process before any other JAX
    call. With no arguments JAX finds the cluster itself (Cloud TPU pods, SLURM, Open MPI);
    elsewhere pass the coordinator's host:port, the number of processes and this one's id."""
    jax.distributed.initialize(coordinator_address, num_processes, process_id)


def is_main_process() -> bool:
    """Whether this process writes the run's files (logs, plots, videos): process 0."""
    return jax.process_index() == 0


def data_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A 1-D mesh (axis "data") over `devices`, by default every device of every host."""
    return Mesh(np.asarray(jax.devices() if devices is None else list(devices)), (DATA,))


def split(mesh: Mesh) -> NamedSharding:
    """The first axis divided over the devices."""
    return NamedSharding(mesh, PartitionSpec(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


class DeviceSplitError(ValueError):
    """A size that cannot be split evenly over the devices."""


def check_divisible(config: bro.BroConfig, mesh: Mesh) -> None:
    devices = mesh.devices.size
    sizes = {"num_envs": config.num_envs, "batch_size": config.batch_size,
             "replay_capacity": config.replay_capacity}
    wrong = {name: size for name, size in sizes.items() if size % devices}
    if wrong:
        raise DeviceSplitError(
            f"Training on {devices} devices splits the environments, the update batch and the "
            f"replay over them, so each must be a multiple of {devices}: "
            + ", ".join(f"{name}={size}" for name, size in wrong.items())
            + ". Change them (e.g. --agent.num-envs), or run on fewer devices "
            "(CUDA_VISIBLE_DEVICES, or XLA_FLAGS on a CPU).")


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Where an update's sampled batch lives: split, for data-parallel gradients."""
    return split(mesh)


def state_shardings(learner: bro.Bro, mesh: Mesh):
    """A pytree of shardings shaped like `learner.init(key)` (see the module docstring)."""
    check_divisible(learner.config, mesh)
    abstract = checkpoint.abstract_state(learner)
    num_envs = learner.config.num_envs

    def env_leaf(leaf):
        return split(mesh) if leaf.ndim >= 1 and leaf.shape[0] == num_envs else replicated(mesh)

    everything = jax.tree.map(lambda _: replicated(mesh), abstract)
    return everything.replace(
        env_state=jax.tree.map(env_leaf, abstract.env_state),
        window=jax.tree.map(env_leaf, abstract.window),
        replay=everything.replay.replace(
            data=jax.tree.map(lambda _: split(mesh), abstract.replay.data)))


def init(learner: bro.Bro, key: jax.Array, shardings) -> bro.LearnerState:
    """`learner.init(key)` computed straight into its shards (no device holds it all)."""
    return jax.jit(learner.init, out_shardings=shardings)(key)
