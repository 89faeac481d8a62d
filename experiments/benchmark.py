"""Environment throughput: steps per second for each physics backend x embodiment x batch size.

For every (embodiment, backend, batch size B) the env is wrapped with brax's training wrappers
(vmap + 1000-step episodes + auto-reset, so robots that fall under random actions restart) and a
jitted loop of K control steps with uniform random actions in [-1, 1] (drawn inside the jitted
function) is timed. Compile time is measured separately (ahead-of-time `lower().compile()`);
K is chosen from a short warm-up so that the timed call lasts about `--target-seconds`.

    env steps/s     = B * K / seconds
    physics steps/s = env steps/s * n_substeps   (5 substeps of 2 ms per control step)

Reproduce (writes benchmarks/envs.json and benchmarks/envs.md):

    python experiments/benchmark.py
    python experiments/benchmark.py --embodiments h1 --backends cpu --batch-sizes 1   # quick check
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import mujoco
from brax.envs.base import State
from brax.envs.wrappers import training

from nil_jax import envs
from nil_jax.io_utils import write_json, write_text

WARMUP_STEPS = 1  # control steps per warm-up call; grown 4x until a call lasts 10% of the target
MAX_STEPS = 100_000


class RolloutCarry(NamedTuple):
    state: State
    key: jax.Array
    episodes_ended: jax.Array  # () summed over the batch: checks that auto-reset happens


def make_rollout(env, batch_size: int):
    """Returns `rollout(state, key, num_steps) -> (state, episodes_ended)`.

    `num_steps` is traced, so every K reuses one compilation (MJX compiles take tens of seconds
    on the CPU)."""

    def rollout(state: State, key: jax.Array, num_steps: jax.Array):
        def body(_, carry: RolloutCarry) -> RolloutCarry:
            key, key_action = jax.random.split(carry.key)
            action = jax.random.uniform(key_action, (batch_size, env.action_size),
                                        minval=-1.0, maxval=1.0)
            state = env.step(carry.state, action)
            return RolloutCarry(state, key, carry.episodes_ended + state.done.sum())

        carry = RolloutCarry(state, key, jnp.zeros(()))
        carry = jax.lax.fori_loop(0, num_steps, body, carry)
        return carry.state, carry.episodes_ended

    return rollout


def timed_call(fn, *args) -> tuple[object, float]:
    """Not jitted: runs `fn` to completion and returns (result, wall seconds)."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


def measure(env, batch_size: int, target_seconds: float = 2.0, seed: int = 0) -> dict:
    """Times one backend x embodiment at one batch size; returns a result record."""
    env = training.wrap(env, episode_length=1000)
    key_reset, key_run = jax.random.split(jax.random.PRNGKey(seed))
    reset_keys = jax.random.split(key_reset, batch_size)

    reset, reset_compile_s = timed_call(lambda: jax.jit(env.reset).lower(reset_keys).compile())
    state = jax.block_until_ready(reset(reset_keys))
    steps = jnp.int32(WARMUP_STEPS)
    rollout, compile_s = timed_call(
        lambda: jax.jit(make_rollout(env, batch_size)).lower(state, key_run, steps).compile())

    (state, _), _ = timed_call(rollout, state, key_run, steps)  # first run: allocations, threads
    warmup_steps = WARMUP_STEPS
    _, warmup_s = timed_call(rollout, state, key_run, steps)
    while warmup_s < 0.1 * target_seconds and warmup_steps < MAX_STEPS:  # a long enough sample
        warmup_steps *= 4
        _, warmup_s = timed_call(rollout, state, key_run, jnp.int32(warmup_steps))
    num_steps = int(min(MAX_STEPS, max(1, round(target_seconds * warmup_steps / warmup_s))))
    (state, episodes_ended), seconds = timed_call(rollout, state, key_run, jnp.int32(num_steps))

    env_steps_per_s = batch_size * num_steps / seconds
    n_substeps = env.unwrapped.embodiment.n_substeps
    return dict(
        embodiment=env.unwrapped.embodiment.name, backend=env.unwrapped.backend,
        batch_size=batch_size, num_steps=num_steps, seconds=seconds,
        n_substeps=n_substeps, env_steps_per_s=env_steps_per_s,
        physics_steps_per_s=env_steps_per_s * n_substeps,
        compile_s=compile_s, reset_compile_s=reset_compile_s,
        episodes_ended=int(episodes_ended),
    )


def machine_info() -> dict:
    return dict(devices=[str(d) for d in jax.devices()], cpu_count=os.cpu_count(),
                processor=platform.processor() or platform.machine(),
                jax=jax.__version__, mujoco=mujoco.__version__)


def markdown_table(results: list[dict], machine: dict) -> str:
    """One row per (embodiment, batch size); backends side by side."""
    rate = {(r["embodiment"], r["batch_size"], r["backend"]): r["env_steps_per_s"] for r in results}
    rows = sorted({(r["embodiment"], r["batch_size"]) for r in results},
                  key=lambda row: (list(envs.EMBODIMENTS).index(row[0]), row[1]))

    def fmt(value):
        return "-" if value is None else f"{value:,.0f}"

    lines = [
        f"Machine: devices {machine['devices']}, {machine['cpu_count']} CPUs "
        f"({machine['processor']}), jax {machine['jax']}, mujoco {machine['mujoco']}. "
        f"Physics steps/s = {results[0]['n_substeps']} x env steps/s (see the JSON).",
        "",
        "| embodiment | batch | cpu env steps/s | mjx env steps/s | ratio cpu/mjx |",
        "|---|---:|---:|---:|---:|",
    ]
    for embodiment, batch in rows:
        cpu, mjx = rate.get((embodiment, batch, "cpu")), rate.get((embodiment, batch, "mjx"))
        ratio = f"{cpu / mjx:,.1f}" if cpu and mjx else "-"
        lines.append(f"| {embodiment} | {batch} | {fmt(cpu)} | {fmt(mjx)} | {ratio} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--embodiments", nargs="+", default=list(envs.EMBODIMENTS),
                        choices=list(envs.EMBODIMENTS))
    parser.add_argument("--backends", nargs="+", default=list(envs.BACKENDS),
                        choices=list(envs.BACKENDS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 64, 256])
    parser.add_argument("--task", default="walk", choices=sorted(envs.TASKS))
    parser.add_argument("--target-seconds", type=float, default=2.0)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("benchmarks/envs.json"))
    args = parser.parse_args()

    machine = machine_info()
    print(f"machine: {machine}", flush=True)
    results = []
    for embodiment in args.embodiments:
        for backend in args.backends:
            env = envs.make(embodiment, task=args.task, backend=backend)
            for batch_size in args.batch_sizes:
                record = measure(env, batch_size, args.target_seconds)
                results.append(record)
                print(f"{embodiment:6s} {backend:3s} B={batch_size:4d} K={record['num_steps']:6d} "
                      f"{record['env_steps_per_s']:12,.0f} env steps/s "
                      f"{record['physics_steps_per_s']:12,.0f} physics steps/s "
                      f"compile {record['compile_s']:5.1f} s", flush=True)

    table = markdown_table(results, machine)
    write_json(args.out, dict(machine=machine, task=args.task, results=results))
    write_text(args.out.with_suffix(".md"), table)
    print(f"\nwrote {args.out} and {args.out.with_suffix('.md')}\n\n{table}")


if __name__ == "__main__":
    main()
