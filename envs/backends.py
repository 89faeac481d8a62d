"""Physics backends: one functional `step(PhysicsState, ctrl) -> PhysicsState`, two engines.

    PhysicsState (time, qpos, qvel, act, qacc_warmstart)   <- everything MuJoCo integrates
        mjx: mjx.step x n_substeps in lax.fori_loop        (pure JAX: GPU/TPU default)
        cpu: jax.pure_callback -> mujoco.batch.Batch        (C MuJoCo on a thread pool: CPU default)

Both see the same MJX-friendly MjModel and carry the same state, so an environment written
against `Backend.step` is jittable and vmappable with either. The CPU backend is called from
inside the jitted env code: under `vmap` the callback receives the whole batch of environments
(`vmap_method="broadcast_all"`) and steps them in one C call spread over threads. Derived
quantities (body poses, velocities) are not part of the state; compute them where needed with
`mjx.kinematics` on the state, which works the same for both backends.
"""

from __future__ import annotations

import collections
import ctypes
import functools
import math
import re
import threading
from typing import Protocol

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
from flax import struct
from mujoco import batch as mj_batch
from mujoco import mjx

BACKENDS = ("mjx", "cpu")
PHYSICS_FIELDS = ("time", "qpos", "qvel", "act", "qacc_warmstart")
MAX_VALUE = 1e10  # MuJoCo's mjMAXVAL: larger magnitudes count as diverged, like NaN and inf

# C MuJoCo prints every engine warning to stdout and appends it to MUJOCO_LOG.TXT in the working
# directory: thousands in a CPU run, as the warm-up's random actions drive the solver to
# non-convex line searches and states that diverge (which the env undoes and counts as invalid
# transitions). Once a CpuBackend exists they are counted here instead, by kind (numbers
# dropped), for the run to report; `mujoco.set_mju_user_warning(None)` restores MuJoCo's own.
MUJOCO_WARNINGS: collections.Counter = collections.Counter()


@ctypes.CFUNCTYPE(None, ctypes.c_char_p)
def _count_mujoco_warning(message: bytes) -> None:
    MUJOCO_WARNINGS[re.sub(r"-?\d+(\.\d+)?", "#", message.decode(errors="replace"))] += 1


@struct.dataclass
class PhysicsState:
    """The integration state of one environment (or a batch, with leading axes)."""

    time: jax.Array  # ()
    qpos: jax.Array  # (nq,)
    qvel: jax.Array  # (nv,)
    act: jax.Array  # (na,)
    qacc_warmstart: jax.Array  # (nv,) the constraint solver's warm start

    def is_finite(self) -> jax.Array:
        """False if any value is NaN, inf or beyond MAX_VALUE (a diverged simulation)."""
        return jnp.all(jnp.array([jnp.all(jnp.abs(x) < MAX_VALUE) for x in
                                  (self.qpos, self.qvel, self.act, self.qacc_warmstart)]))


class Backend(Protocol):
    name: str

    def init(self, qpos: jax.Array, qvel: jax.Array) -> PhysicsState: ...

    def step(self, state: PhysicsState, ctrl: jax.Array) -> PhysicsState: ...


def default_backend() -> str:
    """`cpu` when JAX runs on the CPU (C MuJoCo is ~100x faster there), else `mjx`."""
    return "cpu" if jax.default_backend() == "cpu" else "mjx"


def _init_state(mj_model: mujoco.MjModel, qpos: jax.Array, qvel: jax.Array) -> PhysicsState:
    dtype = qpos.dtype
    return PhysicsState(
        time=jnp.zeros((), dtype),
        qpos=qpos,
        qvel=qvel,
        act=jnp.zeros((mj_model.na,), dtype),
        qacc_warmstart=jnp.zeros((mj_model.nv,), dtype),
    )


class MjxBackend:
    """MJX (pure-JAX MuJoCo): runs on any accelerator, differentiable, vmappable."""

    name = "mjx"

    def __init__(self, mj_model: mujoco.MjModel, n_substeps: int):
        self.mj_model = mj_model
        self.n_substeps = n_substeps
        self.model = mjx.put_model(mj_model, impl="jax")
        self._template = mjx.make_data(self.model)

    def init(self, qpos, qvel):
        return _init_state(self.mj_model, qpos, qvel)

    def step(self, state: PhysicsState, ctrl: jax.Array) -> PhysicsState:
        data = self._template.replace(
            time=state.time, qpos=state.qpos, qvel=state.qvel, act=state.act,
            qacc_warmstart=state.qacc_warmstart, ctrl=ctrl,
        )
        data = jax.lax.fori_loop(0, self.n_substeps, lambda _, d: mjx.step(self.model, d), data)
        return PhysicsState(time=data.time, qpos=data.qpos, qvel=data.qvel, act=data.act,
                            qacc_warmstart=data.qacc_warmstart)


class CpuBackend:
    """C MuJoCo stepped by `mujoco.batch.Batch` on a thread pool, behind `jax.pure_callback`.

    The batch objects are scratch space only: every call loads the full integration state
    from its arguments and returns the new state, so the step is a pure function.
    """

    name = "cpu"

    def __init__(self, mj_model: mujoco.MjModel, n_substeps: int, nthread: int = 0):
        self.mj_model = mj_model
        self.n_substeps = n_substeps
        self.nthread = nthread
        self._batches: dict[int, mj_batch.Batch] = {}
        self._lock = threading.Lock()  # a Batch must not be used from two threads at once
        mujoco.set_mju_user_warning(_count_mujoco_warning)

    def init(self, qpos, qvel):
        return _init_state(self.mj_model, qpos, qvel)

    def _batch(self, nsim: int) -> mj_batch.Batch:
        if nsim not in self._batches:
            self._batches[nsim] = mj_batch.Batch(self.mj_model, nsim=nsim, nthread=self.nthread)
        return self._batches[nsim]

    def _host_step(self, time, qpos, qvel, act, qacc_warmstart, ctrl, *, dtype):
        """Not jitted: numpy in, numpy out (of `dtype`), any number of leading batch axes."""
        lead = qpos.shape[:-1]
        inputs = dict(time=time, qpos=qpos, qvel=qvel, act=act, qacc_warmstart=qacc_warmstart,
                      ctrl=ctrl)
        with self._lock:
            sim = self._batch(math.prod(lead))
            for name, value in inputs.items():
                view = sim.bind(name)
                view[...] = np.asarray(value, np.float64).reshape(view.shape)
            sim.step(nstep=self.n_substeps)
            # A diverged float64 state may overflow float32: inf is the right answer here.
            with np.errstate(over="ignore", invalid="ignore"):
                return tuple(np.array(sim.bind(name), dtype).reshape(inputs[name].shape)
                             for name in PHYSICS_FIELDS)

    def step(self, state: PhysicsState, ctrl: jax.Array) -> PhysicsState:
        args = (state.time, state.qpos, state.qvel, state.act, state.qacc_warmstart, ctrl)
        shapes = tuple(jax.ShapeDtypeStruct(x.shape, state.qpos.dtype) for x in args[:5])
        host_step = functools.partial(self._host_step, dtype=state.qpos.dtype)
        out = jax.pure_callback(host_step, shapes, *args, vmap_method="broadcast_all")
        return PhysicsState(*out)


def make_backend(name: str, mj_model: mujoco.MjModel, n_substeps: int) -> Backend:
    if name == "mjx":
        return MjxBackend(mj_model, n_substeps)
    if name == "cpu":
        return CpuBackend(mj_model, n_substeps)
    raise ValueError(f"Unknown physics backend {name!r}; choose one of {BACKENDS}.")
