"""The `agent` suite of experiments/benchmark.py: throughput of the BRO learner (agents/bro.py).

Two measurements, both on the robot's observation and action sizes (H1: 48 and 19 by default):

    updates     gradient updates/s of `Bro.updates` (sample a batch from a full on-device replay,
                one BRO update: critic, target, actor, optimistic actor, 3 duals), default
                widths (critic 2 x 512 x 2 blocks x 100 quantiles, actors 256 x 1 block), for
                each batch size; max(1, 1280 // batch) updates per jitted call (`lax.scan`)
    train step  env steps/s of the whole jitted training iteration `Bro.train_step` (act in N
                envs with the optimistic actor, step the physics, insert, U updates), for each
                number of envs N, after the warm-up, with the preset's U and batch size

Compile time is measured separately (ahead-of-time `lower().compile()`); each rate is the
median over `--agent-rounds` timed rounds of about `--target-seconds` / rounds each.

    updates/s       = U x calls / seconds           samples/s = updates/s x batch size
    env steps/s     = N x iterations / seconds      (updates/s of the train step = U x it/s)

Reproduce (writes benchmarks/agent.{json,md}):

    python experiments/benchmark.py --suite agent
    python experiments/benchmark.py --suite agent --update-batch-sizes 128 --agent-envs 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from nil_jax import envs
from nil_jax.agents import bro, replay


def seconds(fn, *args) -> float:
    """Not jitted: wall seconds of `fn(*args)` run to completion."""
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def full_replay(learner: bro.Bro, key: jax.Array) -> replay.ReplayState:
    """A replay filled with random transitions, so sampling touches the whole buffer."""
    c = learner.config
    keys = jax.random.split(key, 4)
    data = replay.Transition(
        obs=jax.random.normal(keys[0], (c.replay_capacity, learner.obs_size)),
        action=jax.random.uniform(keys[1], (c.replay_capacity, learner.action_size),
                                  minval=-1.0, maxval=1.0),
        reward=jax.random.uniform(keys[2], (c.replay_capacity,)),
        mask=jnp.ones((c.replay_capacity,)),
        next_obs=jax.random.normal(keys[3], (c.replay_capacity, learner.obs_size)))
    return replay.ReplayState(data=data, position=jnp.zeros((), jnp.int32),
                              size=jnp.asarray(c.replay_capacity, jnp.int32))


def timed_rounds(run, rounds: int, target_seconds: float) -> tuple[list[float], int]:
    """Calls `run()` (already warm) in `rounds` rounds of `calls` calls each; returns the
    seconds of every round and `calls`."""
    once = seconds(run)
    calls = max(1, round(target_seconds / rounds / once))
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            out = run()
        jax.block_until_ready(out)
        times.append(time.perf_counter() - start)
    return times, calls


def measure_updates(env, config: bro.BroConfig, rounds: int, target_seconds: float) -> dict:
    learner = bro.Bro(env, config)
    key = jax.random.PRNGKey(0)
    agent = learner.fresh_agent(jax.jit(learner.init_params)(key))
    buffer = jax.jit(full_replay, static_argnums=0)(learner, key)
    updates = jax.jit(learner.updates, donate_argnums=0)
    start = time.perf_counter()
    compiled = updates.lower(agent, buffer, key).compile()
    compile_s = time.perf_counter() - start

    state = {"agent": agent, "key": key}

    def run():  # the agent carries over, so every call updates fresh parameters
        state["key"], key_call = jax.random.split(state["key"])
        state["agent"], info = compiled(state["agent"], buffer, key_call)
        return info

    seconds(run)  # first call: allocations, thread pools
    times, calls = timed_rounds(run, rounds, target_seconds)
    rate = statistics.median(config.updates_per_step * calls / t for t in times)
    return dict(batch_size=config.batch_size, updates_per_call=config.updates_per_step,
                replay_capacity=config.replay_capacity, calls_per_round=calls,
                round_seconds=times, updates_per_s=rate, samples_per_s=rate * config.batch_size,
                compile_s=compile_s)


def measure_train_step(env, preset: str, num_envs: int, rounds: int,
                       target_seconds: float) -> dict:
    config = bro.preset(preset, num_envs=num_envs)
    learner = bro.Bro(env, config)
    state = jax.jit(learner.init)(jax.random.PRNGKey(0))
    start = time.perf_counter()
    # Donated: the replay is updated in place instead of copied every call.
    compiled = jax.jit(learner.train_step, donate_argnums=0).lower(state).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(config.warmup_iterations):  # random actions, no updates
        state, _ = compiled(state)
    jax.block_until_ready(state)
    warmup_s = time.perf_counter() - start

    holder = {"state": state}

    def run():
        holder["state"], metrics = compiled(holder["state"])
        return metrics

    seconds(run)
    times, calls = timed_rounds(run, rounds, target_seconds)
    iterations_per_s = statistics.median(calls / t for t in times)
    return dict(preset=preset, num_envs=num_envs, batch_size=config.batch_size,
                updates_per_step=config.updates_per_step, calls_per_round=calls,
                round_seconds=times, env_steps_per_s=num_envs * iterations_per_s,
                updates_per_s=config.updates_per_step * iterations_per_s,
                compile_s=compile_s, warmup_transitions=config.warmup_iterations * num_envs,
                warmup_seconds=warmup_s)


def markdown_table(updates: list[dict], steps: list[dict], machine: dict, env_name: str) -> str:
    lines = [
        f"Machine: devices {machine['devices']}, {machine['cpu_count']} CPUs "
        f"({machine['processor']}), jax {machine['jax']}. BRO default widths (critic 2 x 512, "
        f"2 blocks, 100 quantiles; actors 256, 1 block), float32, {env_name} observation and "
        "action sizes. Medians over rounds; compile = ahead-of-time compile of the call.",
        "",
        "| batch | updates/s | samples/s | updates per call | compile (s) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in updates:
        lines.append(f"| {r['batch_size']} | {r['updates_per_s']:,.1f} "
                     f"| {r['samples_per_s']:,.0f} | {r['updates_per_call']} "
                     f"| {r['compile_s']:.1f} |")
    lines += [
        "",
        f"Whole training step (act in N {env_name} envs, physics, insert, U updates):",
        "",
        "| preset | envs N | updates per step U | batch | env steps/s | updates/s | compile (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in steps:
        lines.append(f"| {r['preset']} | {r['num_envs']} | {r['updates_per_step']} "
                     f"| {r['batch_size']} | {r['env_steps_per_s']:,.1f} "
                     f"| {r['updates_per_s']:,.1f} | {r['compile_s']:.1f} |")
    return "\n".join(lines) + "\n"


def run_agent(args, machine: dict) -> tuple[dict, str]:
    """Measures update throughput per batch size and train-step throughput per number of
    envs: (JSON record, markdown table)."""
    env = envs.make(args.agent_embodiment, task="walk", backend=args.agent_backend)
    env_name = f"{args.agent_embodiment} ({env.backend})"
    updates = []
    for batch in args.update_batch_sizes:
        # About as much work per call at every batch size: 10 updates at 128, 1 from 1280 up.
        config = bro.preset("bro", batch_size=batch, replay_capacity=args.agent_replay_capacity,
                            updates_per_step=max(1, 1280 // batch))
        record = measure_updates(env, config, args.agent_rounds, args.target_seconds)
        updates.append(record)
        print(f"BRO updates B={batch:5d}: {record['updates_per_s']:8.1f} updates/s "
              f"({record['samples_per_s']:,.0f} samples/s), compile {record['compile_s']:.1f} s",
              flush=True)
    steps = []
    for preset in args.agent_presets:
        for num_envs in args.agent_envs:
            record = measure_train_step(env, preset, num_envs, args.agent_rounds,
                                        args.target_seconds)
            steps.append(record)
            print(f"BRO train step {preset} N={num_envs:5d} U={record['updates_per_step']}: "
                  f"{record['env_steps_per_s']:10,.1f} env steps/s "
                  f"{record['updates_per_s']:8.1f} updates/s, compile {record['compile_s']:.1f} s",
                  flush=True)
    record = dict(machine=machine, embodiment=args.agent_embodiment, backend=env.backend,
                  obs_size=env.observation_size, action_size=env.action_size,
                  updates=updates, train_step=steps)
    return record, markdown_table(updates, steps, machine, env_name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--update-batch-sizes", nargs="+", type=int, default=[128, 1024, 4096])
    parser.add_argument("--agent-envs", nargs="+", type=int, default=[1, 256],
                        help="numbers of environments of the train-step measurement")
    parser.add_argument("--agent-presets", nargs="+", default=["bro"], choices=list(bro.PRESETS))
    parser.add_argument("--agent-embodiment", default="h1", choices=list(envs.EMBODIMENTS))
    parser.add_argument("--agent-backend", default=None, choices=list(envs.BACKENDS),
                        help="physics of the train-step measurement (default: JAX's platform's)")
    parser.add_argument("--agent-rounds", type=int, default=3)
    parser.add_argument("--agent-replay-capacity", type=int, default=1_000_000,
                        help="replay rows sampled from by the updates measurement")
