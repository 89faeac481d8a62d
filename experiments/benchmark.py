"""Benchmarks: environment steps/s (`--suite envs`), silhouette masks/s (`--suite renderer`),
TimeSformer clips/s (`--suite timesformer`, measured by experiments/encoder_benchmark.py),
BRO updates/s and training env steps/s (`--suite agent`, experiments/agent_benchmark.py), and
the whole NIL program stage by stage against a per-step sequential baseline, with its scaling
over devices (`--suite program`, experiments/program_benchmark.py), whether each reward stream
ranks the reference motion above wrong ones, per camera view (`--suite reward`,
experiments/reward_benchmark.py), and whether training
imitates the reference: policies trained on NIL's reward, its ablations and the pose and task
upper bounds over several seeds, with learning curves (`--suite learning`,
experiments/learning_benchmark.py; not in the default list: hours on a CPU).

`--preset gpu` is the accelerator run (sized for under 8 minutes on one H200; not yet run): the encoder's MFU in bf16
and the whole program's env steps/s at thousands of environments, into benchmarks/gpu/.

Environment throughput: steps per second for each physics backend x embodiment x batch size.

For every (embodiment, backend, batch size B) the env is wrapped with brax's training wrappers
(vmap + 1000-step episodes + auto-reset, so robots that fall under random actions restart) and a
jitted loop of K control steps with uniform random actions in [-1, 1] (drawn inside the jitted
function) is timed. Compile time is measured separately (ahead-of-time `lower().compile()`);
K is chosen from a short warm-up so that the timed call lasts about `--target-seconds`.

    env steps/s     = B * K / seconds
    physics steps/s = env steps/s * n_substeps   (5 substeps of 2 ms per control step)

Renderer throughput: masks per second of the pure-JAX silhouette renderer
(`reward.silhouettes.render`: MJX kinematics + ray casting, jitted, one call per batch) against
`mujoco.Renderer` segmentation at the same resolution on the same machine (one frame at a time:
`update_scene` + `render`, kinematics not counted), over the same random poses (joints uniform
within their limits). Memory is XLA's account of the compiled program (`memory_analysis`:
arguments + outputs + work memory), also for a batch of 4096 (compiled once per embodiment, not
run).

Reproduce (writes benchmarks/{envs,renderer,timesformer,agent}.{json,md}):

    python experiments/benchmark.py                       # every suite but learning
    python experiments/benchmark.py --suite learning      # + benchmarks/learning.png
    python experiments/benchmark.py --suite reward --embodiments h1
    python experiments/benchmark.py --preset gpu          # on an accelerator
    python experiments/benchmark.py --suite renderer --embodiments h1
    python experiments/benchmark.py --suite envs --embodiments h1 --backends cpu --batch-sizes 1
    python experiments/benchmark.py --suite timesformer --encoder-configs small
"""

from __future__ import annotations

import argparse
import functools
import os
import pathlib
import platform
import time
from typing import NamedTuple

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; must precede `import mujoco`

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402
from brax.envs.base import State  # noqa: E402
from brax.envs.wrappers import training  # noqa: E402

import agent_benchmark  # noqa: E402  (experiments/, next to this script)
import encoder_benchmark  # noqa: E402
import learning_benchmark  # noqa: E402
import program_benchmark  # noqa: E402
import reward_benchmark  # noqa: E402
from nil_jax import envs  # noqa: E402
from nil_jax.io_utils import write_json, write_text  # noqa: E402
from nil_jax.reward import silhouettes  # noqa: E402

WARMUP_STEPS = 1  # control steps per warm-up call; grown 4x until a call lasts 10% of the target
MAX_STEPS = 100_000
LARGE_BATCH = 4096  # the renderer's memory is also reported at this batch (compiled, not run)


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


def mujoco_masks_per_s(embodiment, poses: np.ndarray, size: int, target_seconds: float) -> float:
    """mujoco.Renderer segmentation, one frame at a time (update_scene + render timed only)."""
    model, data = embodiment.mj_model, mujoco.MjData(embodiment.mj_model)
    with mujoco.Renderer(model, size, size) as oracle:
        oracle.enable_segmentation_rendering()
        count, mujoco_s = 0, 0.0
        while mujoco_s < target_seconds or count < len(poses):
            data.qpos[:] = poses[count % len(poses)]
            mujoco.mj_kinematics(model, data)
            mujoco.mj_comPos(model, data)
            mujoco.mj_camlight(model, data)
            begin = time.perf_counter()
            oracle.update_scene(data, camera=embodiment.camera_id)
            oracle.render()
            mujoco_s += time.perf_counter() - begin
            count += 1
    return count / mujoco_s


def program_memory(program) -> dict:
    """XLA's account of a compiled program: work memory (what the budget bounds), and inputs +
    outputs."""
    stats = program.memory_analysis()
    return dict(work=int(stats.temp_size_in_bytes),
                inputs_outputs=int(stats.argument_size_in_bytes + stats.output_size_in_bytes))


def large_batch_memory(sil: silhouettes.Silhouettes, nq: int, large_batch: int) -> dict:
    """XLA's account of the renderer compiled (not run) for `large_batch` environments. It does
    not depend on the measured batch size, so it is compiled once per embodiment."""
    render = jax.jit(functools.partial(silhouettes.render, sil))
    qpos = jax.ShapeDtypeStruct((large_batch, nq), jnp.float32)
    return program_memory(render.lower(qpos).compile())


def measure_renderer(embodiment, sil: silhouettes.Silhouettes, batch_size: int,
                     target_seconds: float, baseline: bool = True) -> dict:
    """Masks/s of the JAX renderer and (`baseline`) of mujoco.Renderer for one embodiment and
    batch size; `sil` is the embodiment's silhouettes (square images)."""
    size = sil.spec.height
    qpos = jnp.asarray(silhouettes.random_poses(embodiment, batch_size), jnp.float32)
    render = jax.jit(functools.partial(silhouettes.render, sil))
    compiled, compile_s = timed_call(lambda: render.lower(qpos).compile())
    frames, _ = timed_call(compiled, qpos)  # first run: allocations, threads
    _, once_s = timed_call(compiled, qpos)
    calls = max(1, round(target_seconds / once_s))
    start = time.perf_counter()
    for _ in range(calls):
        jax.block_until_ready(compiled(qpos))
    seconds = time.perf_counter() - start

    mujoco_per_s = mujoco_masks_per_s(embodiment, np.asarray(qpos, np.float64), size,
                                      target_seconds) if baseline else float("nan")
    masks_per_s = batch_size * calls / seconds
    tiers = np.bincount(np.asarray(frames["tier"]), minlength=len(sil.spec.tiers) + 1)
    return dict(
        embodiment=embodiment.name, batch_size=batch_size, size=size,
        primitives=len(sil.spec.label), window_pixels=sil.spec.window_pixels(0),
        masks_per_s=masks_per_s, mujoco_masks_per_s=mujoco_per_s,
        ratio=masks_per_s / mujoco_per_s, compile_s=compile_s,
        memory_bytes=program_memory(compiled), memory_budget=sil.spec.memory_budget,
        frames_per_tier=tiers.tolist(),
    )


def renderer_table(results: list[dict], machine: dict) -> str:
    def mb(memory):
        return f"{memory['work'] / 1e6:,.0f} + {memory['inputs_outputs'] / 1e6:,.0f}"

    lines = [
        f"Machine: devices {machine['devices']}, {machine['cpu_count']} CPUs "
        f"({machine['processor']}), jax {machine['jax']}, mujoco {machine['mujoco']}. "
        f"{results[0]['size']}x{results[0]['size']} masks; memory = XLA's account of the "
        f"compiled program: work memory (bounded by the budget, "
        f"{results[0]['memory_budget'] / 2 ** 30:g} GiB) + inputs and outputs (mask, depth, "
        "geom id and shade images: 13 bytes per pixel).",
        "",
        "| embodiment | primitives | batch | JAX masks/s | mujoco.Renderer masks/s | ratio "
        f"| memory (MB) | memory at batch {results[0]['large_batch']} (MB) | frames per tier |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['embodiment']} | {r['primitives']} | {r['batch_size']} "
            f"| {r['masks_per_s']:,.1f} | {r['mujoco_masks_per_s']:,.1f} | {r['ratio']:.2f} "
            f"| {mb(r['memory_bytes'])} | {mb(r['large_batch_memory_bytes'])} "
            f"| {r['frames_per_tier']} |")
    return "\n".join(lines) + "\n"


def machine_info(with_torch: bool = False) -> dict:
    info = dict(devices=[str(d) for d in jax.devices()], cpu_count=os.cpu_count(),
                processor=platform.processor() or platform.machine(),
                jax=jax.__version__, mujoco=mujoco.__version__)
    return {**info, **encoder_benchmark.torch_versions()} if with_torch else info


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


def run_envs(args, machine) -> tuple[dict, str]:
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
    return dict(machine=machine, task=args.task, results=results), markdown_table(results, machine)


def run_renderer(args, machine) -> tuple[dict, str]:
    results = []
    for name in args.embodiments:
        embodiment = envs.embodiments.load(name)
        sil = silhouettes.make(embodiment, args.image_size, args.image_size,
                               memory_budget=int(args.render_memory_gib * 2 ** 30))
        large = dict(large_batch=LARGE_BATCH, large_batch_memory_bytes=large_batch_memory(
            sil, embodiment.mj_model.nq, LARGE_BATCH))
        for batch_size in args.batch_sizes:
            record = {**measure_renderer(embodiment, sil, batch_size, args.target_seconds,
                                         baseline=args.renderer_baseline), **large}
            results.append(record)
            print(f"{name:6s} B={batch_size:4d} {record['masks_per_s']:9,.1f} masks/s "
                  f"(mujoco.Renderer {record['mujoco_masks_per_s']:7,.1f}, "
                  f"ratio {record['ratio']:5.2f}) work memory "
                  f"{record['memory_bytes']['work'] / 1e6:,.0f} MB "
                  f"compile {record['compile_s']:5.1f} s tiers {record['frames_per_tier']}",
                  flush=True)
    return dict(machine=machine, results=results), renderer_table(results, machine)


# Each suite returns (JSON record, markdown table), written to benchmarks/<suite>.{json,md}.
SUITES = dict(envs=run_envs, renderer=run_renderer, timesformer=encoder_benchmark.run_timesformer,
              i3d=encoder_benchmark.run_i3d,
              agent=agent_benchmark.run_agent, program=program_benchmark.run_program,
              reward=reward_benchmark.run_reward, learning=learning_benchmark.run_learning)
# What `benchmark.py` runs with no --suite: every suite but learning (hours on a CPU; asked for
# by name).
DEFAULT_SUITES = [name for name in SUITES if name != "learning"]

# Settings of a whole benchmark run (flags given on the command line still win).
PRESETS = {
    "cpu": {},  # every suite at the defaults below
    "gpu": dict(
        suite=["timesformer", "i3d", "program"], embodiments=["h1"], out_dir=pathlib.Path(
            "benchmarks/gpu"), render_memory_gib=16.0, rounds=3, no_hf=True,
        encoder_configs=["base", "small"], clip_batch_sizes=[16, 64], bf16_error_configs=[],
        agent_backend="mjx", program_size=64, program_dtypes=["bfloat16"],
        program_cases=["none:1:1024", "none:1:4096", "base:4:1024"], program_baseline=[]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="cpu", choices=list(PRESETS))
    parser.add_argument("--suite", nargs="+", default=DEFAULT_SUITES, choices=list(SUITES))
    parser.add_argument("--embodiments", nargs="+", default=list(envs.EMBODIMENTS),
                        choices=list(envs.EMBODIMENTS))
    parser.add_argument("--backends", nargs="+", default=list(envs.BACKENDS),
                        choices=list(envs.BACKENDS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 64, 256])
    parser.add_argument("--task", default="walk", choices=sorted(envs.TASKS))
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--renderer-baseline", action=argparse.BooleanOptionalAction,
                        default=True, help="also time mujoco.Renderer (needs OpenGL)")
    parser.add_argument("--render-memory-gib", type=float, default=1.0,
                        help="the renderer's work-memory budget (GiB)")
    parser.add_argument("--target-seconds", type=float, default=2.0)
    parser.add_argument("--out-dir", type=pathlib.Path, default=pathlib.Path("benchmarks"))
    encoder_benchmark.add_arguments(parser.add_argument_group("timesformer and i3d suites"))
    agent_benchmark.add_arguments(parser.add_argument_group("agent suite"))
    program_benchmark.add_arguments(parser.add_argument_group("program suite"))
    reward_benchmark.add_arguments(parser.add_argument_group("reward suite"))
    learning_benchmark.add_arguments(parser.add_argument_group("learning suite"))
    parser.set_defaults(**PRESETS[parser.parse_known_args()[0].preset])
    args = parser.parse_args()

    machine = machine_info(with_torch="timesformer" in args.suite or "program" in args.suite)
    print(f"machine: {machine}", flush=True)
    for name in dict.fromkeys(args.suite):  # in the order asked for, each once
        record, table = SUITES[name](args, machine)
        out = args.out_dir / f"{name}.json"
        write_json(out, record)
        write_text(out.with_suffix(".md"), table)
        print(f"\nwrote {out} and {out.with_suffix('.md')}\n\n{table}", flush=True)


if __name__ == "__main__":
    main()
