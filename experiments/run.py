"""The single command: `python experiments/run.py [--preset NAME] [--config-file F] [--field v]`.

Trains a NIL policy to imitate a reference video and evaluates it, all in one run folder:

    preset (default | quick | paper) <- --config-file (JSON, e.g. an earlier config.json)
        <- command-line flags                                  = the resolved RunConfig
    reference: a bundle (.npz), a raw video (auto-prepared into a bundle next to the other
        references), or none (the embodiment's synthetic walk, made once and cached)
    --skill sit|hang|balance: the robot in that skill's scene (chair, bar, balance board),
        a synthetic key-pose reference of the skill, and its success rate and normalized task
        reward in the evaluation
    --reward-source: what the policy trains on (reward/sources.py): nil (NIL's reward), task
        (the env's walk or skill reward: the RL upper bound) or pose (tracking the reference's
        ground-truth poses: the mocap oracle), for comparison
    training.build -> training.train (jitted chunks; Ctrl-C checkpoints first)
        -> training.evaluate (the policy, zero-action and random actions, same resets)

    runs/<name>/config.json        the resolved configuration and what the run decided itself
    runs/<name>/checkpoints/       orbax checkpoints (`--resume` continues from the newest)
    runs/<name>/progress.csv       one row per chunk; tensorboard/ holds the same
    runs/<name>/reward_curves.png  the reward terms and episode statistics over training
    runs/<name>/metrics.json       evaluation of the policy and the two baselines
    runs/<name>/evaluation.mp4     reference | simulation | masks (reference green, simulation
                                   red, both yellow)

Presets:
    default  H1 imitating its synthetic walk on a CPU in about 15 minutes: the IoU stream and
             the regularizers (the video stream too if TimeSformer weights are found), PD
             joint targets and the reference's phase observed (see the README)
    quick    the same in about 5 minutes (a check that everything works)
    gpu      the default run on one accelerator: MJX, 1,024 environments, official BRO widths,
             10M env steps (sized for about 6 minutes on an H200; experiments/learn_gpu.sh)
    paper    an accelerator run as in the paper: torques, full reward (video stream in bf16),
             official BRO, 256 MJX environments
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import pathlib
import shutil
import sys
import time
import typing
from typing import Any, Optional

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; must precede `import mujoco`

import jax  # noqa: E402
import tyro  # noqa: E402

from nil_jax import envs, parallel, training  # noqa: E402
from nil_jax.agents import bro  # noqa: E402
from nil_jax import io_utils  # noqa: E402
from nil_jax.io_utils import write_json  # noqa: E402
from nil_jax.references.errors import ReferenceDataError  # noqa: E402
from nil_jax.reward import nil_reward, regularizers, sources  # noqa: E402
from nil_jax.reward.timesformer_weights import TimesformerWeightsError  # noqa: E402
from nil_jax import reports  # noqa: E402

logger = logging.getLogger("nil_jax.run")
# The run's own lines, printed for the user and kept in log.txt (the file handler is the run's).
console = logging.getLogger("nil_jax.run.console")
console.setLevel(logging.INFO)
console.propagate = False


def say(line: str) -> None:
    print(line, flush=True)
    console.info(line)


@dataclasses.dataclass(frozen=True)
class RunConfig(training.TrainConfig):
    eval_episodes: int = 5
    runs_dir: str = "runs"
    run_name: Optional[str] = None  # default: <embodiment>-<skill>-<preset>-<timestamp>
    resume: bool = False  # continue the run named --run-name, else the newest of this preset
    progress: bool = True  # the progress bar
    video_size: int = 224  # side of each panel of evaluation.mp4
    # A multi-host job (TPU pod slice, GPU cluster): jax.distributed.initialize() first, then
    # the run is split over every host's devices (the same command on every host). The three
    # below are found by JAX on Cloud TPU, SLURM and Open MPI; elsewhere give them.
    distributed: bool = False
    coordinator_address: Optional[str] = None  # host:port of process 0
    num_processes: Optional[int] = None
    process_id: Optional[int] = None


# CPU-sized BRO: the official losses and optimizers with narrower networks, fewer quantiles, a
# lower initial temperature and 16 environments, so that updates and environment steps share
# two cores and learning shows within minutes. The recipe search (benchmarks/recipes/, README)
# added 3-step returns, a faster target (tau 0.02) and 8 updates per iteration (one update per
# 2 transitions): the policy stays up longer for the same 15 minutes; then observation
# normalization: higher IoU, lower pose error and no falls, sooner; then the squared
# deterministic action in the actor's loss (action_l2 15; 1 and 5 did less): the joints the
# silhouettes do not show stay near home, and every seed's pose error falls below zero action's.
CPU_AGENT = bro.preset("bro_fast", num_envs=16, critic_width=128, actor_width=64,
                       num_quantiles=16, init_temperature=0.1, warmup_steps=1600,
                       n_step=3, tau=0.02, updates_per_step=8, replay_capacity=150_000,
                       normalize_observations=True, action_l2=15.0)
# Learnable on a CPU in minutes: joint targets (zero action holds the home pose), the
# reference's phase observed, 64x64 masks. `--actuation torque --no-observe-phase` is the paper's.
# The effort penalty is 5x the regularizers' default: with joint targets it is the squared offset
# from home, and with normalized observations it raised IoU and lowered pose error (recipe row
# nil-...-obsnorm-effort0.5; 1.0 gave a lower IoU and no lower pose error).
CPU_RUN = RunConfig(actuation="pd", pd_action_scale=0.3, observe_phase=True, render_size=64,
                    reward=nil_reward.RewardConfig(
                        regularizers=regularizers.RegularizerScales(torques=0.5)),
                    agent=CPU_AGENT, chunk_iterations=100, checkpoint_every=20)

# The default run's setting on one accelerator (sized from benchmarks/h200/: not yet run):
# MJX, 1,024 envs, the official network widths, large batches and few updates per transition
# (as massively parallel SAC/TD3 do), no reset (the official schedule counts transitions: with
# 1,024 envs its first reset would come after a few dozen updates).
GPU_AGENT = bro.preset("bro_fast", num_envs=1024, updates_per_step=4, batch_size=4096,
                       n_step=3, tau=0.02, warmup_steps=32_768, replay_capacity=2_000_000,
                       reset_steps=(), normalize_observations=True, action_l2=15.0)
PRESETS = {
    "default": dataclasses.replace(CPU_RUN, env_steps=150_000),
    # Shorter than BRO-fast's first reset needs to recover: training.build drops it (said).
    "quick": dataclasses.replace(CPU_RUN, env_steps=16_000, checkpoint_every=5),  # 10 chunks
    "gpu": dataclasses.replace(CPU_RUN, backend="mjx", agent=GPU_AGENT, env_steps=10_000_000,
                               chunk_iterations=50, checkpoint_every=20),
    "paper": RunConfig(actuation="torque", observe_phase=False, encoder="pretrained",
                       encoder_dtype="bfloat16", backend="mjx",
                       agent=bro.preset("bro", num_envs=256, replay_capacity=2_000_000),
                       env_steps=10_000_000, chunk_iterations=100, checkpoint_every=10),
}


def from_dict(cls, values: dict[str, Any]):
    """A (nested, frozen) dataclass from the plain values `dataclasses.asdict` wrote."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - fields
    if unknown:
        raise SystemExit(f"Unknown {cls.__name__} fields {sorted(unknown)} in the config file; "
                         f"known: {sorted(fields)}.")
    out = {}
    for name, value in values.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind) and isinstance(value, dict):
            value = from_dict(kind, value)
        elif isinstance(value, list):
            value = tuple(value)
        out[name] = value
    return cls(**out)


def deep_merge(base: dict, override: dict) -> dict:
    """`base` with `override`'s values; nested dicts are merged, not replaced."""
    out = dict(base)
    for name, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(name), dict):
            value = deep_merge(out[name], value)
        out[name] = value
    return out


# --help's opening (tyro keeps these lines as they are, and lists every field after them).
HELP = "\n".join([
    "Trains a policy to imitate a reference video (NIL's reward), evaluates it, writes "
    "runs/<name>/.",
    "",
    "Applied in order: --preset NAME, --config-file F (JSON: an earlier config.json works), "
    "the flags.",
    "  --preset default   H1 imitating its synthetic walk on a CPU, about 12 minutes",
    "  --preset quick     the same in about 3 minutes: a check that everything works",
    "  --preset gpu       one accelerator: MJX, 1,024 envs, 10M env steps",
    "  --preset paper     as in the paper: torques, video stream in bf16, official BRO, 256 MJX "
    "envs",
    "",
    "The flags most runs change:",
    "  --embodiment h1|talos|g1|a1     --skill walk|sit|hang|balance     --camera side|oblique",
    "  --reference FILE (a bundle .npz, or a video of the robot)     --reward-source nil|task|pose",
    "  --env-steps N     --seed N     --encoder auto|i3d|none     --agent.num-envs N",
    "  --run-name NAME --resume (continue a stopped run)"])


def parse_config(argv: list[str]) -> tuple[str, RunConfig]:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS))
    parser.add_argument("--config-file", default=None)
    known, rest = parser.parse_known_args(argv)
    default = PRESETS[known.preset]
    if known.config_file is not None:
        path = pathlib.Path(known.config_file)
        if not path.is_file():
            raise SystemExit(f"--config-file {path} does not exist.")
        try:
            stored = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SystemExit(f"--config-file {path} is not valid JSON ({e}); an earlier run's "
                             "config.json, or an object of RunConfig fields, is expected.") from e
        if not isinstance(stored, dict):
            raise SystemExit(f"--config-file {path} holds a JSON {type(stored).__name__}, not an "
                             "object of RunConfig fields.")
        stored = stored.get("config", stored)  # an earlier run's config.json works as is
        try:  # tyro checks the flag's value against the Literal, not a file's
            default = from_dict(RunConfig, deep_merge(dataclasses.asdict(default),
                                                      without_run_control(stored)))
            sources.check(default.reward_source)
        except ValueError as e:
            raise SystemExit(f"{path}: {e}") from e
    config = tyro.cli(RunConfig, default=default, args=rest, description=HELP)
    if config.embodiment not in envs.EMBODIMENTS:
        raise SystemExit(f"Unknown --embodiment {config.embodiment!r}; "
                         f"choose one of {sorted(envs.EMBODIMENTS)}.")
    if config.skill in envs.SKILLS and config.embodiment not in envs.scenes.LIMBS:
        raise SystemExit(f"--skill {config.skill} needs a humanoid's hips, knees and arms: "
                         f"--embodiment {' or '.join(sorted(envs.scenes.LIMBS))}, not "
                         f"{config.embodiment}.")
    return known.preset, config


# Fields that say where and how to run, not what to run: never read from a config file.
RUN_CONTROL = ("resume", "run_name", "runs_dir", "progress", "distributed",
               "coordinator_address", "num_processes", "process_id")
# What a resumed run may change (to train longer, or evaluate differently); all else is stored.
CHANGEABLE_ON_RESUME = ("env_steps", "eval_episodes", "video_size", "checkpoint_every")


def without_run_control(values: dict[str, Any]) -> dict[str, Any]:
    """A stored config's fields without RUN_CONTROL: what to run, not where or how."""
    return {k: v for k, v in values.items() if k not in RUN_CONTROL}


def run_folder(preset: str, config: RunConfig) -> tuple[pathlib.Path, str, RunConfig]:
    """The run folder, its preset, and the config to run: for a resumed run, its stored config
    with the changeable flags applied and what the first run decided itself (physics backend,
    video stream on or off) pinned, so that the state restores into the same layout."""
    runs = pathlib.Path(config.runs_dir)
    source = f"-{config.reward_source}-reward" if config.reward_source != "nil" else ""
    prefix = f"{config.embodiment}-{config.skill}{source}-{preset}-"
    if not config.resume:
        name = config.run_name or prefix + time.strftime("%Y%m%d-%H%M%S")
        folder = runs / name
        if training.checkpoints(folder):
            raise SystemExit(f"{folder} already holds a run: pass --resume to continue it, or "
                             "another --run-name.")
        return folder, preset, config
    if config.run_name is not None:
        folder = runs / config.run_name
    else:
        candidates = sorted(runs.glob(prefix + "*/config.json"), key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise SystemExit(f"--resume: no run {prefix}* in {runs}; name it with --run-name.")
        folder = candidates[-1].parent
    if not (folder / "config.json").is_file():
        raise SystemExit(f"--resume: {folder} has no config.json; is it a run folder?")
    record = json.loads((folder / "config.json").read_text())
    stored = from_dict(RunConfig, without_run_control(record["config"]))
    given = {f.name for f in dataclasses.fields(RunConfig) if f.name not in RUN_CONTROL
             and getattr(config, f.name) != getattr(PRESETS[preset], f.name)
             and getattr(config, f.name) != getattr(stored, f.name)}
    if given - set(CHANGEABLE_ON_RESUME):
        raise SystemExit(f"--resume continues {folder} with its stored configuration: "
                         f"{sorted(given - set(CHANGEABLE_ON_RESUME))} cannot change (only "
                         f"{', '.join(CHANGEABLE_ON_RESUME)} can). Start a new run instead.")
    resolved = record["resolved"]
    pinned = {"backend": resolved["backend"]}
    if resolved["reward"]["video_weight"] == 0:
        pinned["encoder"] = "none"
    config = dataclasses.replace(stored, **{name: getattr(config, name) for name in given},
                                 **pinned, resume=True, progress=config.progress,
                                 runs_dir=config.runs_dir, run_name=folder.name)
    return folder, record.get("preset", preset), config


def use_compilation_cache() -> None:
    """Compiled programs persist across runs (a resumed or repeated run skips minutes of
    compiling), in $NIL_JAX_CACHE/xla unless JAX_COMPILATION_CACHE_DIR says otherwise."""
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(io_utils.cache_base() / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def main(argv: Optional[list[str]] = None) -> dict:
    preset, config = parse_config(sys.argv[1:] if argv is None else argv)
    if config.distributed and config.run_name is None:
        raise SystemExit("--distributed needs --run-name: every host must write to the same "
                         "run folder (a default name holds each host's own clock).")
    if config.distributed:
        # Before anything asks JAX for its devices.
        parallel.initialize(config.coordinator_address, config.num_processes, config.process_id)
    main_process = parallel.is_main_process()  # the one that writes the run's files
    run_dir, preset, config = run_folder(preset, config)
    new_folder = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    log_file = logging.FileHandler(run_dir / "log.txt") if main_process else None
    # Libraries' INFO lines (orbax, absl, jax) would drown the run's own.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s",
                        handlers=[logging.StreamHandler()] + ([log_file] if log_file else []),
                        force=True)
    logging.getLogger("nil_jax").setLevel(logging.INFO)
    console.handlers[:] = [log_file] if log_file else []
    use_compilation_cache()
    started = time.perf_counter()
    try:
        setup = build(config)
    except SystemExit as e:
        if new_folder and main_process:  # the run never started: nothing of it is left
            logging.getLogger().removeHandler(log_file)
            console.removeHandler(log_file)
            log_file.close()
            shutil.rmtree(run_dir, ignore_errors=True)
        elif main_process:  # a resume that could not start: its log says why
            console.error("[nil_jax] stopped: %s", e.code)
        raise
    try:
        return train_and_evaluate(preset, config, run_dir, setup, main_process, started)
    except SystemExit as e:  # a failure the run explains in one line: log.txt keeps it too
        if e.code not in (None, 0) and main_process:
            console.error("[nil_jax] stopped: %s", e.code)
        raise
    except BaseException:  # anything else: its traceback goes to log.txt as well
        if main_process:
            console.exception("[nil_jax] stopped by an error")
        raise


def say_mujoco_warnings() -> None:
    """C MuJoCo's warnings, counted instead of printed (envs.backends.MUJOCO_WARNINGS)."""
    counts = envs.backends.MUJOCO_WARNINGS
    if counts:
        kinds = "; ".join(f"{n} x '{kind}'" for kind, n in counts.most_common(3))
        say(f"[nil_jax] C MuJoCo warned {sum(counts.values())} times, on states the random "
            "actions of the warm-up and the evaluation's random policy drive far off (diverged "
            f"steps are undone and counted, progress.csv's invalid_transitions): {kinds}")


def build(config: RunConfig) -> training.Setup:
    """`training.build`, its input errors turned into one line each."""
    say(f"[nil_jax] building: the {config.embodiment} model, the reference, the reward (the "
        "first run on a machine fetches the robot models and makes the synthetic reference)")
    try:
        return training.build(config)
    except (ReferenceDataError, FileNotFoundError) as e:
        raise SystemExit(f"Bad reference: {e}") from e
    except parallel.DeviceSplitError as e:
        raise SystemExit(str(e)) from e
    except TimesformerWeightsError as e:
        raise SystemExit(f"{e}\n(--encoder auto trains without the video stream when no weights "
                         "are found; --encoder pretrained, as in the paper preset, needs them.)"
                         ) from e


def train_and_evaluate(preset: str, config: RunConfig, run_dir: pathlib.Path,
                       setup: training.Setup, main_process: bool, started: float) -> dict:
    """Trains (or resumes), evaluates and writes the run's files; `started` is the run's
    perf_counter start, for metrics.json's wall_s."""
    record = {"preset": preset, "config": dataclasses.asdict(config),
              "resolved": {"backend": setup.env.backend, "jax_platform": jax.default_backend(),
                           "devices": len(jax.devices()), "processes": jax.process_count(),
                           "reward": dataclasses.asdict(setup.reward),
                           "episode_length": setup.learner.config.episode_length,
                           "reference": setup.reference_path, "notes": list(setup.notes)}}
    if config.resume:  # the first session's notes stay
        earlier = json.loads((run_dir / "config.json").read_text())["resolved"].get("notes", [])
        record["resolved"]["notes"] = list(dict.fromkeys(earlier + list(setup.notes)))
    elif main_process:
        write_json(run_dir / "config.json", record)
    say(f"[nil_jax] {config.embodiment}/{config.skill}, preset {preset}, "
        f"{setup.env.backend} physics on {len(jax.devices())} {jax.default_backend()} "
        f"device(s) -> {run_dir}")

    # JAX's persistent cache never keeps a program with host callbacks: the cpu backend's.
    recompiles = ("on every run: it calls C MuJoCo through a host callback, which JAX's compile "
                  "cache does not keep" if setup.env.backend == "cpu" else "the first time")
    say(f"[nil_jax] training: {config.env_steps:,} env steps (the bar waits while the training "
        f"program compiles, a minute or two, {recompiles})")
    try:
        state, finished = training.train(setup, run_dir, config.env_steps, resume=config.resume,
                                         progress=config.progress)
    except training.CheckpointError as e:
        raise SystemExit(str(e)) from e
    if main_process:
        if config.resume:  # written once the resumed training ran, never for one that failed
            write_json(run_dir / "config.json", record)
        reports.plot_progress(run_dir / "progress.csv", run_dir / "reward_curves.png")
    if not finished:
        say_mujoco_warnings()
        say(f"[nil_jax] stopped; checkpoint written. Continue with: python experiments/run.py "
            f"--runs-dir {config.runs_dir} --run-name {run_dir.name} --resume")
        return {}
    say(f"[nil_jax] evaluating: the policy, zero and random actions, {config.eval_episodes} "
        "episodes each (compiles first)")
    metrics, records = training.evaluate(setup, state.agent, jax.random.PRNGKey(config.seed + 1),
                                         config.eval_episodes)
    if not main_process:  # every host ran its share; process 0 writes the results
        return {}
    metrics = {"protocol": training.PROTOCOL, "episodes": config.eval_episodes,
               "episode_length": setup.bundle.num_frames - 1, **metrics,
               "training": {"env_steps": setup.learner.env_steps(state),
                            **reports.training_summary(run_dir / "progress.csv")},
               "wall_s": time.perf_counter() - started}
    write_json(run_dir / "metrics.json", metrics)
    say("[nil_jax] writing evaluation.mp4")
    # Frozen at the first fall, as the metrics score it (only the feet collide: a fallen robot
    # would sink through the floor).
    reports.evaluation_video(setup, training.after_falls_held(records["nil"])[0],
                             run_dir / "evaluation.mp4", config.video_size)
    say(reports.metrics_table(metrics))
    say_mujoco_warnings()
    say(f"[nil_jax] wrote {run_dir}/: config.json, metrics.json, progress.csv, "
        "reward_curves.png, evaluation.mp4, checkpoints/, tensorboard/, log.txt")
    return metrics


if __name__ == "__main__":
    main()
