"""The `program` suite of experiments/benchmark.py: the whole NIL training program stage by
stage, a per-step sequential baseline of the same work, and scaling over devices.

The program: H1 imitating a short synthetic walk (made once, in a temporary folder) with
`--program-size` pixel masks, PD joint targets and BRO-fast. Each case of `--program-cases`,
`encoder:k:N`, sets the TimeSformer config (random weights: speed does not depend on them;
`none` is the IoU stream alone), the stride k (the encoder runs every k-th control step) and
the number of environments N. Stages, each jitted and timed on the batch of N (medians over
`--agent-rounds` rounds; the env and training stages time jitted chunks of 10 iterations,
rounded up to a multiple of k so that every call runs the encoder equally often):

    physics   RobotEnv.step of N robots: PD law, physics backend, task reward     env steps/s
    render    silhouettes.render of N poses: MJX kinematics + ray casting            frames/s
    encoder   TimeSformer embeddings of N uint8 clips, preprocessing included         clips/s
    env       the training iteration in its warm-up (no updates): physics, render,
              clip buffer, encoder every k-th step, IoU, penalties, insert, resets  env steps/s
    learner   Bro.updates: U updates of the preset's batch                          updates/s
    training  the whole iteration, training.chunk_function (env + U updates)       env steps/s

    encoder share = env steps/s / (k x encoder clips/s): the fraction of an env step spent in
    the encoder (its clips at batch N, one batch every k steps)

The sequential baseline, the way per-step re-implementations work: one environment in a Python
loop; each control step runs C MuJoCo (n_substeps x mj_step under the same PD law), renders the
mask (mujoco.Renderer segmentation) and the shaded frame (mujoco.Renderer; no shadows, floor
reflection or skybox, as the references are drawn) at the same size, keeps the last 8 frames,
runs Hugging Face's PyTorch TimesformerModel of the same config on them every k-th step (resized
to the config's image size, as the checkpoint's processor does), and computes the IoU in NumPy.
It has no learner: the ratios divide the program's env and training env steps/s by the
baseline's env steps/s at the same encoder config and stride.

Scaling (`--program-devices`): training env steps/s on d = 1, 2, 4, ... of the devices JAX sees
(N per device fixed, the run split as `nil_jax.parallel` does). On one CPU the devices are
virtual (XLA_FLAGS=--xla_force_host_platform_device_count=8) and share its cores: the table then
shows the cost of splitting, not a speed-up.

Reproduce (writes benchmarks/program.{json,md}):

    python experiments/benchmark.py --suite program
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python experiments/benchmark.py \\
        --suite program --program-cases --program-devices 1 2 4 8 --agent-backend mjx \\
        --out-dir benchmarks/scaling
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import mujoco
import numpy as np

from agent_benchmark import seconds, timed_rounds
from nil_jax import envs, parallel, training
from nil_jax.agents import bro
from nil_jax.references import bundle as bundle_lib
from nil_jax.references import embed as embed_lib
from nil_jax.references import ingest as ingest_lib
from nil_jax.references import synthetic
from nil_jax.reward import nil_reward, silhouettes

ITERATIONS = 10  # training iterations per timed call (one jitted chunk), at least


def iterations_per_call(stride: int) -> int:
    """ITERATIONS rounded up to a multiple of the stride k, so that every timed call runs the
    encoder equally often. With 10 iterations and k = 8, one call in four ran it twice and three
    once, and the median over rounds took a once-call: 1.25x too fast an env."""
    return stride * -(-ITERATIONS // stride)


def make_reference(embodiment: str, folder: pathlib.Path) -> pathlib.Path:
    """A 0.3 s synthetic walk at 64 pixels (the masks are resized to the render size; the
    frames only feed the reference embeddings)."""
    fast = ingest_lib.IngestConfig(segmenter="background", interpolator="linear", encoder="none",
                                   resolution=64)
    bundle, _ = synthetic.make(envs.load(embodiment), folder,
                               synthetic.SyntheticConfig(seconds=0.3, video_size=64), fast)
    return bundle_lib.save(bundle, folder / f"{embodiment}_walk.npz")


def program_config(args, reference: pathlib.Path, encoder: str, stride: int, num_envs: int,
                   dtype: str = "float32") -> training.TrainConfig:
    agent = bro.preset("bro_fast", num_envs=num_envs, replay_capacity=num_envs * 256,
                       warmup_steps=num_envs)  # one warm-up iteration: then it learns
    return training.TrainConfig(
        embodiment=args.program_embodiment, backend=args.agent_backend, actuation="pd",
        pd_action_scale=0.3, reference=str(reference), references_dir=str(reference.parent),
        encoder="none" if encoder == "none" else "random", random_encoder=encoder,
        encoder_dtype=dtype, render_size=args.program_size,
        reward=nil_reward.RewardConfig(video_stride=stride,
                                       video_weight=0.0 if encoder == "none" else 1.0),
        agent=agent, chunk_iterations=iterations_per_call(stride))


def rate(run, per_call: float, rounds: int, target_seconds: float) -> float:
    """Median of per_call x calls / seconds over `rounds` rounds of `run()` (already warm)."""
    seconds(run)
    times, calls = timed_rounds(run, rounds, target_seconds)
    return statistics.median(per_call * calls / t for t in times)


def compiled_chunk(setup: training.Setup):
    """(the jitted chunk compiled ahead of time, a fresh state, compile seconds)."""
    chunk = training.chunk_function(setup, setup.config.chunk_iterations)
    state = parallel.init(setup.learner, jax.random.PRNGKey(0), setup.shardings)
    start = time.perf_counter()
    compiled = chunk.lower(state).compile()
    return compiled, state, time.perf_counter() - start


def at_step(setup: training.Setup, state, step: int):
    """`state` with its iteration counter at `step`: before 0 the iterations only step the
    envs (warm-up), after the warm-up they also learn; one compiled chunk times both."""
    return state.replace(step=jax.device_put(jnp.asarray(step, jnp.int32),
                                             setup.shardings.step))


class Repeat:
    """`run()` calls `fn(carry)` and keeps its new carry: timed calls that continue."""

    def __init__(self, fn, carry):
        self.fn, self.carry = fn, carry

    def __call__(self):
        self.carry, out = self.fn(self.carry)
        return out


def measure_stages(setup: training.Setup, rounds: int, target_seconds: float) -> dict:
    """Rates of every stage and of the whole iteration on one setup (see the module doc)."""
    env, learner = setup.env, setup.learner
    n = learner.config.num_envs
    per_call = n * setup.config.chunk_iterations
    key = jax.random.PRNGKey(0)
    out = {}

    # The whole iteration, first in its warm-up (env only), then learning.
    compiled, state, out["compile_s"] = compiled_chunk(setup)
    chunk = Repeat(compiled, at_step(setup, state, -10 ** 9))  # the warm-up: envs only
    out["env_steps_per_s"] = rate(chunk, per_call, rounds, target_seconds)
    chunk.carry = at_step(setup, chunk.carry, 10 ** 6)  # learning
    out["training_env_steps_per_s"] = rate(chunk, per_call, rounds, target_seconds)
    trained = chunk.carry

    robot = env.robot

    @jax.jit
    def physics(carry):
        def body(state, key):
            action = jax.random.uniform(key, (n, robot.action_size), minval=-1.0, maxval=1.0)
            return jax.vmap(robot.step)(state, action), None
        state, key = carry
        key, key_steps = jax.random.split(key)
        state = jax.lax.scan(body, state, jax.random.split(key_steps, ITERATIONS))[0]
        return (state, key), state.reward

    start = (jax.jit(jax.vmap(robot.reset))(jax.random.split(key, n)), key)
    out["physics_env_steps_per_s"] = rate(Repeat(physics, start), n * ITERATIONS, rounds,
                                          target_seconds)

    qpos = jnp.asarray(silhouettes.random_poses(setup.embodiment, n), jnp.float32)
    render = jax.jit(lambda q: silhouettes.render(env.silhouette, q))
    out["render_frames_per_s"] = rate(lambda: render(qpos), n, rounds, target_seconds)

    if env.encoder is not None:
        size = env.silhouette.spec.height
        clips = jax.random.randint(key, (n, nil_reward.CLIP_FRAMES, size, size), 0, 256
                                   ).astype(jnp.uint8)
        embed = jax.jit(lambda c: nil_reward.embed_clips(env.encoder, c))
        out["encoder_clips_per_s"] = rate(lambda: embed(clips), n, rounds, target_seconds)
        out["encoder_share"] = out["env_steps_per_s"] / (
            setup.reward.video_stride * out["encoder_clips_per_s"])

    updates = jax.jit(learner.updates)
    out["learner_updates_per_s"] = rate(
        lambda: updates(trained.agent, trained.replay, key)[1],
        learner.config.updates_per_step, rounds, target_seconds)
    return out


class SequentialBaseline:
    """One environment stepped, rendered and scored one control step at a time (see the
    module docstring): C MuJoCo, mujoco.Renderer, HF PyTorch TimeSformer, NumPy IoU."""

    def __init__(self, setup: training.Setup, encoder: str):
        self.robot = setup.env.robot
        self.embodiment = setup.embodiment
        self.model = self.embodiment.mj_model
        self.data = mujoco.MjData(self.model)
        self.size = setup.env.silhouette.spec.height
        self.reference = np.asarray(setup.env.reference.masks)
        self.stride = setup.reward.video_stride
        self.hf = None
        if encoder != "none":
            import torch
            import transformers
            torch.set_num_threads(os.cpu_count())  # XLA's CPU client also uses every core
            config = embed_lib.RANDOM_CONFIGS[encoder]
            self.torch = torch
            self.hf = transformers.TimesformerModel(
                transformers.TimesformerConfig(**config.to_hf_dict())).eval()
            self.image_size = config.image_size
        embeddings = setup.env.reference.embeddings
        self.reference_embeddings = None if embeddings is None else np.asarray(embeddings)
        self.rng = np.random.default_rng(0)

    def reset(self) -> None:
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[:] = self.embodiment.init_qpos
        self.clip = []

    def pd_ctrl(self, action: np.ndarray) -> np.ndarray:
        pd, scale = self.robot.pd, self.robot.pd_action_scale
        target = np.clip(pd.home + scale * action, pd.low, pd.high)
        torque = pd.kp * (target - self.data.qpos[pd.qpos]) - pd.kd * self.data.qvel[pd.qvel]
        return np.clip(torque / pd.gear, self.embodiment.ctrl_low, self.embodiment.ctrl_high)

    def embed(self) -> np.ndarray:
        torch = self.torch
        frames = torch.from_numpy(np.stack(self.clip)).float()[:, None].expand(-1, 3, -1, -1)
        pixels = torch.nn.functional.interpolate(frames, size=(self.image_size,) * 2,
                                                 mode="bilinear", antialias=True)
        pixels = ((pixels / 255.0 - 0.45) / 0.225)[None]
        with torch.inference_mode():
            return self.hf(pixel_values=pixels).last_hidden_state[0, 0].numpy()

    def run(self, target_seconds: float) -> dict:
        """Control steps/s over about `target_seconds` (after one untimed step)."""
        model, data = self.model, self.data
        segmenter = mujoco.Renderer(model, self.size, self.size)
        segmenter.enable_segmentation_rendering()
        shader = mujoco.Renderer(model, self.size, self.size)
        length = len(self.reference)
        with segmenter, shader:
            steps, start, t, total_reward = 0, None, length, 0.0
            while start is None or time.perf_counter() - start < target_seconds:
                if t >= length - 1:
                    self.reset()
                    t = 0
                data.ctrl[:] = self.pd_ctrl(self.rng.uniform(-1, 1, model.nu))
                for _ in range(self.embodiment.n_substeps):
                    mujoco.mj_step(model, data)
                t += 1
                segmenter.update_scene(data, camera=self.embodiment.camera_id)
                mask = segmenter.render()[..., 0] >= 0
                shader.update_scene(data, camera=self.embodiment.camera_id)
                flags = shader.scene.flags  # as the reference frames are drawn (sim_frames)
                flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
                flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
                grey = shader.render().mean(-1).astype(np.uint8) * mask
                self.clip = (self.clip or [grey] * 8)[1:] + [grey]
                union = np.logical_or(mask, self.reference[t]).sum()
                reward = np.logical_and(mask, self.reference[t]).sum() / max(union, 1)
                if self.hf is not None:
                    if steps % self.stride == 0:
                        z, z_ref = self.embed(), self.reference_embeddings[t]
                        similarity = z @ z_ref / np.linalg.norm(z) / np.linalg.norm(z_ref)
                    reward += similarity
                total_reward += reward
                if start is None:  # the first step (allocations, thread pools) is untimed
                    start = time.perf_counter()
                else:
                    steps += 1
        seconds_ = time.perf_counter() - start
        return {"env_steps_per_s": steps / seconds_, "steps": steps,
                "mean_reward": total_reward / (steps + 1)}


def measure_scaling(args, reference: pathlib.Path) -> list[dict]:
    results = []
    devices = jax.devices()
    for count in args.program_devices:
        if count > len(devices):
            print(f"scaling: skipping {count} devices (JAX sees {len(devices)})", flush=True)
            continue
        config = program_config(args, reference, "none", 1, args.program_scaling_envs * count)
        setup = training.build(config, devices[:count])
        compiled, state, compile_s = compiled_chunk(setup)
        chunk = Repeat(compiled, state)
        chunk()  # the warm-up iteration fills the replay
        chunk.carry = at_step(setup, chunk.carry, 10 ** 6)
        n = setup.learner.config.num_envs
        record = dict(devices=count, num_envs=n, compile_s=compile_s,
                      training_env_steps_per_s=rate(chunk, n * setup.config.chunk_iterations,
                                                    args.agent_rounds,
                                                    args.target_seconds))
        results.append(record)
        print(f"scaling d={count} N={n}: {record['training_env_steps_per_s']:,.0f} training "
              f"env steps/s (compile {compile_s:.0f} s)", flush=True)
    return results


def markdown_table(record: dict) -> str:
    machine = record["machine"]

    def fmt(value, pattern=None):
        if value is None:
            return "-"
        if pattern is None:  # three significant digits, thousands separated
            pattern = "{:,.0f}" if abs(value) >= 100 else "{:.3g}"
        return pattern.format(value)

    lines = [
        f"Machine: devices {machine['devices']}, {machine['cpu_count']} CPUs "
        f"({machine['processor']}), jax {machine['jax']}, mujoco {machine['mujoco']}. "
        f"{record['embodiment']}, {record['backend']} physics, {record['size']}x"
        f"{record['size']} masks, PD, BRO-fast (U = {record['updates_per_step']}, batch "
        f"{record['batch_size']}), random-weight TimeSformers (none: IoU stream only). "
        "Rates in env steps/s unless said; medians over rounds; ratio = the program's rate "
        "/ the sequential baseline's (one env, C MuJoCo + mujoco.Renderer + HF PyTorch, "
        "no learner).",
    ]
    if record["results"]:
        lines += [
            "", "| encoder | stride k | envs N | physics | render (frames/s) | encoder (clips/s) "
            "| env | learner (updates/s) | training | encoder share | baseline | env ratio "
            "| training ratio |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in record["results"]:
        base = r.get("baseline_env_steps_per_s")
        lines.append(
            f"| {r['encoder']} | {r['stride']} | {r['num_envs']} "
            f"| {fmt(r['physics_env_steps_per_s'])} | {fmt(r['render_frames_per_s'])} "
            f"| {fmt(r.get('encoder_clips_per_s'))} | {fmt(r['env_steps_per_s'])} "
            f"| {fmt(r['learner_updates_per_s'])} "
            f"| {fmt(r['training_env_steps_per_s'])} "
            f"| {fmt(r.get('encoder_share'), '{:.0%}')} | {fmt(base)} "
            f"| {fmt(base and r['env_steps_per_s'] / base, '{:,.1f}x')} "
            f"| {fmt(base and r['training_env_steps_per_s'] / base, '{:,.1f}x')} |")
    if record["scaling"]:
        lines += ["", f"Scaling over devices (IoU stream only, N = "
                  f"{record['scaling'][0]['num_envs']} per device):", "",
                  "| devices | envs N | training env steps/s | per device | compile (s) |",
                  "|---:|---:|---:|---:|---:|"]
        for r in record["scaling"]:
            lines.append(f"| {r['devices']} | {r['num_envs']} "
                         f"| {r['training_env_steps_per_s']:,.0f} "
                         f"| {r['training_env_steps_per_s'] / r['devices']:,.0f} "
                         f"| {r['compile_s']:.0f} |")
    return "\n".join(lines) + "\n"


def run_program(args, machine: dict) -> tuple[dict, str]:
    results = []
    with tempfile.TemporaryDirectory() as folder:
        reference = make_reference(args.program_embodiment, pathlib.Path(folder))
        baselines = {}
        for encoder, stride, num_envs in map(parse_case, args.program_cases):
            for dtype in args.program_dtypes if encoder != "none" else ["float32"]:
                setup = training.build(program_config(args, reference, encoder, stride,
                                                      num_envs, dtype))
                record = dict(encoder=encoder, dtype=dtype, stride=stride, num_envs=num_envs,
                              iterations_per_call=setup.config.chunk_iterations,
                              **measure_stages(setup, args.agent_rounds, args.target_seconds))
                if encoder in args.program_baseline and dtype == "float32":
                    if (encoder, stride) not in baselines:
                        baselines[encoder, stride] = SequentialBaseline(setup, encoder).run(
                            args.target_seconds)
                    record["baseline_env_steps_per_s"] = \
                        baselines[encoder, stride]["env_steps_per_s"]
                results.append(record)
                print(f"program {encoder}/{dtype} k={stride} N={num_envs}: "
                      + ", ".join(f"{k} {v:,.3g}" for k, v in record.items()
                                  if isinstance(v, float)), flush=True)
        scaling = measure_scaling(args, reference) if args.program_devices else []
    config = bro.preset("bro_fast")
    record = dict(machine=machine, embodiment=args.program_embodiment,
                  backend=envs.make(args.program_embodiment, backend=args.agent_backend).backend,
                  size=args.program_size,
                  updates_per_step=config.updates_per_step, batch_size=config.batch_size,
                  results=results, scaling=scaling)
    return record, markdown_table(record)


def parse_case(case: str) -> tuple[str, int, int]:
    """"encoder:k:N" -> (encoder config, stride k, envs N)."""
    try:
        encoder, stride, num_envs = case.split(":")
        stride, num_envs = int(stride), int(num_envs)
    except ValueError:
        raise ValueError(f"--program-cases {case!r}: write encoder:k:N, e.g. tiny:1:64") from None
    if encoder not in ("none", *embed_lib.RANDOM_CONFIGS):
        raise ValueError(f"--program-cases {case!r}: the encoder is one of none, "
                         f"{', '.join(embed_lib.RANDOM_CONFIGS)}")
    return encoder, stride, num_envs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--program-embodiment", default="h1", choices=list(envs.EMBODIMENTS))
    parser.add_argument("--program-size", type=int, default=64, help="mask side (pixels)")
    parser.add_argument("--program-cases", nargs="*",
                        default=["none:1:16", "none:1:64", "tiny-64px:1:64", "tiny:1:64",
                                 "base:8:4"],
                        help="encoder:k:N (TimeSformer config or none, stride, environments)")
    parser.add_argument("--program-dtypes", nargs="+", default=["float32"],
                        choices=["float32", "bfloat16"])
    parser.add_argument("--program-baseline", nargs="*",
                        default=["none", "tiny-64px", "tiny", "base"],
                        help="encoder configs to also time the sequential baseline at")
    parser.add_argument("--program-devices", nargs="*", type=int, default=[],
                        help="device counts of the scaling table (none: skipped)")
    parser.add_argument("--program-scaling-envs", type=int, default=16,
                        help="environments per device in the scaling table")
