"""The NIL training program: a reference and a robot -> NilEnv -> BRO, trained in jitted chunks.

    TrainConfig --build--> Setup(embodiment, bundle, NilEnv, Bro, the reward as used, notes)
        reference: a bundle, a raw video (ingested once), or the synthetic walk (made once)
    train(setup, run_dir, env_steps):
        state = restore(newest checkpoint) or learner.init(seed)
        repeat: state, metrics = chunk(state)      one jitted lax.scan of `chunk_iterations`
                                                   training iterations (act -> physics ->
                                                   render -> reward -> insert -> updates), the
                                                   state donated
                metrics averaged over the chunk --> progress.csv + TensorBoard
                every `checkpoint_every` chunks --> orbax checkpoint (written to a temporary
                                                    folder and renamed: never half a checkpoint)
        Ctrl-C: the running chunk finishes, a checkpoint is written, train returns
    evaluate(setup, agent): the trained policy, zero and random actions from the same resets,
        for the reference's length (PROTOCOL): IoU, video similarity, pose error, walk reward,
        falls

Nothing leaves the device inside a chunk; the host sees one metrics dict per chunk.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import itertools
import json
import logging
import math
import pathlib
import re
import shutil
import signal
import threading
import time
from typing import Any, Literal, Optional, Sequence

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
import tensorboardX
import tqdm

from nil_jax import envs, parallel, video
from nil_jax.envs import assets, evaluation, skill_tasks
from nil_jax.agents import bro, checkpoint
from nil_jax.envs.embodiments import Embodiment
from nil_jax.io_utils import write_text
from nil_jax.nil_env import EarlyTermination, NilEnv, check_phase_harmonics
from nil_jax.references import bundle as bundle_lib
from nil_jax.references import embed as embed_lib
from nil_jax.references import ingest as ingest_lib
from nil_jax.references import synthetic
from nil_jax.references.errors import (EmbodimentMismatchError, ReferenceDataError,
                                       TooFewFramesError)
from nil_jax.reward import i3d as i3d_lib
from nil_jax.reward import nil_reward, renderer, silhouettes, sources

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    embodiment: str = "h1"
    # "walk", or a whole-body skill in its scene: sit, hang, balance (envs/scenes.py); any other
    # text names the skill of a --reference video (prompt, run name) on the plain floor
    skill: str = "walk"
    # What the policy is trained on (reward/sources.py): "nil" the NIL reward, "task" the env's
    # reward (the RL upper bound), "pose" tracking the reference's ground-truth poses (oracle)
    reward_source: sources.RewardSource = "nil"
    backend: Optional[str] = None  # None: cpu when JAX runs on the CPU, else mjx
    actuation: str = "torque"  # "torque" (the model's motors) or "pd" (joint targets), robot_env
    pd_action_scale: float = 1.0  # rad of target offset from the home pose per unit of action
    observe_phase: bool = True  # the policy sees t / (T - 1), how far the reference has played
    # with observe_phase, also sin and cos of 2 pi k t / (T - 1) for k = 1..phase_harmonics
    # (nil_env: a Fourier basis of time, so that a small policy can follow a periodic motion)
    phase_harmonics: int = 0
    # The tracking camera's view, for the reference and the simulation alike
    # (envs.embodiments.CAMERA_VIEWS): "side", or "oblique" (three-quarter, from the front).
    camera: Literal["side", "oblique"] = "side"
    # A bundle (.npz), or a raw video of the embodiment (prepared into a bundle in
    # references_dir on first use), or None: the embodiment's synthetic walk.
    reference: Optional[str] = None
    # where bundles prepared from videos and the synthetic references are kept
    references_dir: str = "references"
    # How a raw video is prepared (fps when the file lacks it, segmenter, SAM 2 checkpoint);
    # its skill and encoder come from the fields above.
    ingest: ingest_lib.IngestConfig = ingest_lib.IngestConfig()
    # The video stream's encoder (references.embed.ENCODERS): auto, the pretrained TimeSformer
    # if found, else no video stream; i3d, the Kinetics-400 I3D; none; random (smoke runs)
    encoder: str = "auto"
    encoder_checkpoint: Optional[str] = None  # default: $NIL_JAX_TIMESFORMER, else the K400 one
    random_encoder: str = "tiny"  # the architecture when encoder == "random" (smoke runs)
    i3d: i3d_lib.EmbeddingConfig = i3d_lib.EmbeddingConfig()  # endpoint, pooling, size (i3d)
    encoder_dtype: str = "float32"  # "bfloat16" on accelerators
    render_size: Optional[int] = None  # side of the simulation's frames; None: the reference's
    reward: nil_reward.RewardConfig = nil_reward.RewardConfig()
    # DeepMimic's early termination from the video alone (nil_env): an episode ends once its
    # mask IoU stays below `iou` for `steps` steps in a row; iou 0 (default) switches it off.
    early_termination: EarlyTermination = EarlyTermination()
    agent: bro.BroConfig = bro.preset("bro_fast", num_envs=4)
    # The actions agent.action_l2 holds at zero (the home pose with PD actuation): "all", or
    # "unseen", those of the joints the tracking camera barely sees
    # (envs.embodiments.unseen_actuators), which the video leaves free while the seen ones
    # balance and imitate.
    action_l2_joints: Literal["all", "unseen"] = "all"
    env_steps: int = 100_000  # transitions to train on (rounded up to whole chunks)
    chunk_iterations: int = 50
    checkpoint_every: int = 10  # chunks
    seed: int = 0

    def __post_init__(self):
        envs.embodiments.check_camera(self.camera)
        if self.action_l2_joints not in ("all", "unseen"):
            raise ValueError(f"action_l2_joints must be all or unseen, got "
                             f"{self.action_l2_joints!r}")
        if self.encoder not in embed_lib.ENCODERS:
            raise ValueError(f"encoder must be one of {embed_lib.ENCODERS}, got "
                             f"{self.encoder!r}")
        if self.encoder_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"encoder_dtype must be float32 or bfloat16, got "
                             f"{self.encoder_dtype!r}")
        for name in ("env_steps", "chunk_iterations", "checkpoint_every"):
            if not getattr(self, name) >= 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        check_phase_harmonics(self.phase_harmonics, self.observe_phase)
        if not self.pd_action_scale > 0:
            raise ValueError(f"pd_action_scale must be > 0 rad, got {self.pd_action_scale}")
        if self.render_size is not None and self.render_size < 8:
            raise ValueError(f"render_size must be >= 8 px (or None: the reference's), got "
                             f"{self.render_size}")


@dataclasses.dataclass(frozen=True)
class Setup:
    config: TrainConfig
    embodiment: Embodiment
    bundle: bundle_lib.ReferenceBundle
    env: NilEnv
    learner: bro.Bro
    reward: nil_reward.RewardConfig  # as used (the video stream off when there is no encoder)
    reference_path: str
    notes: tuple[str, ...]  # what the run decided on its own (said loudly, kept in config.json)
    mesh: jax.sharding.Mesh  # the devices the run is split over (nil_jax.parallel)
    shardings: bro.LearnerState  # where each leaf of the learner's state lives


VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".avi", ".mkv", ".gif")


def load_reference(config: TrainConfig, embodiment: Embodiment
                   ) -> tuple[bundle_lib.ReferenceBundle, pathlib.Path]:
    """The reference bundle and its file: the synthetic walk (or skill motion), a bundle, or a
    raw video ingested once (the bundle is cached under references_dir by the video's
    digest)."""
    if config.reference is None:
        if config.skill != "walk" and embodiment.scene is None:
            raise ReferenceDataError(
                f"There is no synthetic reference of skill {config.skill!r} (only walk, "
                f"{', '.join(envs.SKILLS)}); pass --reference (a bundle or a video).")
        made = synthetic.SyntheticConfig(
            seconds=synthetic.SyntheticConfig.seconds if embodiment.scene is None
            else synthetic.SKILL_SECONDS)
        return (synthetic.load_or_make(embodiment, config.references_dir, made),
                synthetic.cache_path(embodiment, config.references_dir, made))
    path = pathlib.Path(config.reference)
    if not path.is_file():
        raise FileNotFoundError(
            f"Reference {path} does not exist. Pass a bundle made by "
            "`experiments/prepare_reference.py ingest`, or a video of the robot.")
    if path.suffix.lower() in VIDEO_SUFFIXES:
        # A video's bundle has no ground-truth poses: said before the (slow) ingest.
        sources.check_ground_truth(config.reward_source, None, str(path))
        ingest = dataclasses.replace(
            config.ingest, skill=config.skill, encoder_checkpoint=config.encoder_checkpoint,
            encoder=config.encoder if config.encoder != "random" else "none")
        # The bundle is cached under the video's digest and every ingest setting.
        views = [] if embodiment.camera == "side" else [embodiment.camera]
        settings = json.dumps([embodiment.name, dataclasses.asdict(ingest), *views],
                              sort_keys=True)
        digest = (assets.sha256_file(path)[:12] + "_"
                  + hashlib.sha256(settings.encode()).hexdigest()[:8])
        bundle_path = pathlib.Path(config.references_dir) / f"{path.stem}_{digest}.npz"
        if not bundle_path.exists():
            logger.warning("Preparing the reference bundle of %s (once) -> %s. Its settings "
                           "are --ingest.* (or use experiments/prepare_reference.py ingest).",
                           path, bundle_path)
            bundle_lib.save(ingest_lib.ingest(path, embodiment, ingest), bundle_path)
        path = bundle_path
    bundle = bundle_lib.load(path, embodiment=embodiment.name, nq=embodiment.nq,
                             camera=embodiment.camera)
    if embodiment.scene is not None and bundle.metadata.get("skill") != embodiment.scene.skill:
        raise EmbodimentMismatchError(
            f"The reference {path} shows skill {bundle.metadata.get('skill')!r}; this run's "
            f"scene is {embodiment.scene.skill!r}. Pass a reference of that skill, or none "
            "(its synthetic one).")
    return bundle, path


def video_encoder(config: TrainConfig, bundle: bundle_lib.ReferenceBundle
                  ) -> tuple[Optional[nil_reward.VideoEncoder], Optional[np.ndarray], list[str]]:
    """(encoder, reference embeddings, notes). The embeddings must come from the same encoder:
    the bundle's own when its encoder id matches, else computed here (slow on a CPU)."""
    notes = []
    if config.reward.video_weight == 0 or config.encoder == "none":
        return None, None, ["video stream off"]
    encoder, info = embed_lib.load(config.encoder, config.encoder_checkpoint,
                                   random_config=config.random_encoder, seed=config.seed,
                                   i3d_embedding=config.i3d)
    if encoder is None:
        notes.append("NO TimeSformer weights found: the video stream is OFF "
                     f"({info.get('note')}); IoU and regularizers only")
        return None, None, notes
    if encoder.id == embed_lib.RANDOM_ID:
        notes.append("RANDOM TimeSformer weights: the video stream is meaningless (smoke run)")
    if bundle.embeddings is not None and bundle.encoder_id == encoder.id \
            and encoder.id != embed_lib.RANDOM_ID:
        embeddings = bundle.embeddings
    else:
        notes.append(f"reference embeddings computed now with {encoder.id}")
        embeddings = embed_lib.embed_frames(encoder, bundle.frames)
    dtype = jnp.bfloat16 if config.encoder_dtype == "bfloat16" else jnp.float32
    video_encoder = encoder.video_encoder(dtype)
    if isinstance(encoder.config, i3d_lib.EmbeddingConfig) and encoder.config.center:
        center = np.mean(embeddings, axis=0)
        embeddings = embeddings - center
        video_encoder = dataclasses.replace(video_encoder, center=jnp.asarray(center))
    return video_encoder, embeddings, notes


def resize_masks(masks: np.ndarray, size: int) -> np.ndarray:
    """(T, H, W) bool -> (T, size, size) bool: pixel-area averages above one half. The tracking
    camera's field of view is the same at every size, so these are the masks a renderer of
    that size would draw."""
    if masks.shape[1:] == (size, size):
        return masks
    return video.resize_frames(masks.astype(np.float32), size) > 0.5


def build(config: TrainConfig, devices: Optional[Sequence[jax.Device]] = None) -> Setup:
    """Everything a run needs, split over `devices` (default: every device JAX sees)."""
    sources.check(config.reward_source)
    mesh = parallel.data_mesh(devices)
    parallel.check_divisible(config.agent, mesh)
    scene = config.skill if config.skill in envs.SKILLS else None
    embodiment = envs.embodiments.load(config.embodiment, skill=scene, camera=config.camera)
    bundle, reference_path = load_reference(config, embodiment)
    sources.check_ground_truth(config.reward_source, bundle.ground_truth_qpos,
                               str(reference_path))
    if bundle.num_frames < nil_reward.CLIP_FRAMES + 1:
        raise TooFewFramesError(f"The reference has {bundle.num_frames} frames: at least "
                         f"{nil_reward.CLIP_FRAMES + 1} are needed (one clip and one step).")
    encoder, embeddings, notes = video_encoder(config, bundle)
    if config.reward_source == "task":
        notes.append(f"RL upper bound: trained on the {config.skill} task reward, not NIL's")
    if config.reward_source == "pose":
        notes.append("Pose-tracking oracle: trained on the reference's ground-truth poses, "
                     "not NIL's reward")
    resets, dropped = bro.useful_resets(config.agent.reset_steps, config.env_steps)
    if dropped:
        notes.append(f"agent resets at {', '.join(f'{r:,}' for r in dropped)} transitions "
                     f"dropped: this run of {config.env_steps:,} would end before the reset "
                     "network caught up")
    reward = config.reward
    if encoder is None and reward.video_weight > 0:
        reward = dataclasses.replace(reward, video_weight=0.0)
    for note in notes:
        logger.warning("!! %s", note)
    size = config.render_size or bundle.frames.shape[1]
    sil = silhouettes.make(embodiment, size, size)
    reference = nil_reward.Reference(masks=jnp.asarray(resize_masks(bundle.masks, size)),
                                     embeddings=None if embeddings is None
                                     else jnp.asarray(embeddings))
    robot = envs.make(config.embodiment, task=scene or "walk", backend=config.backend,
                      actuation=config.actuation, pd_action_scale=config.pd_action_scale)
    truth = bundle.ground_truth_qpos
    env = NilEnv(robot, reference, sil, reward, encoder, observe_phase=config.observe_phase,
                 phase_harmonics=config.phase_harmonics,
                 reward_source=config.reward_source,
                 pose_reference=None if truth is None else jnp.asarray(truth, jnp.float32),
                 early_termination=config.early_termination)
    agent = dataclasses.replace(config.agent, episode_length=bundle.num_frames - 1,
                                reset_steps=resets)
    unseen = (envs.embodiments.unseen_actuators(embodiment)
              if config.action_l2_joints == "unseen" else None)
    if unseen is not None and not config.agent.action_l2:
        logger.warning("!! action_l2_joints=unseen does nothing: agent.action_l2 is 0")
    learner = bro.Bro(env, agent, batched=True, batch_sharding=parallel.batch_sharding(mesh),
                      action_l2_mask=unseen)
    return Setup(config, embodiment, bundle, env, learner, reward, str(reference_path),
                 tuple(notes), mesh, parallel.state_shardings(learner, mesh))


def train_chunk(learner: bro.Bro, state: bro.LearnerState, iterations: int
                ) -> tuple[bro.LearnerState, dict]:
    """`iterations` training iterations in one `lax.scan`, and their metrics averaged over the
    chunk. Pure: `jax.vmap` over a batch of states trains several seeds at once."""
    # The learner's diagnostics (losses, entropy, temperature...) are zeros while it warms up
    # (no updates): they are averaged over the iterations that updated.
    update_names = jax.eval_shape(learner.updates, state.agent, state.replay, state.key)[1]
    state, metrics = learner.train(state, iterations)
    finished = metrics["episodes_finished"]
    means = jax.tree.map(jnp.mean, metrics)
    learning = 1.0 - metrics["warming_up"]
    for name in update_names:
        means[name] = jnp.sum(metrics[name] * learning) / jnp.maximum(jnp.sum(learning), 1.0)
    # Episode statistics are per finished episode, not per iteration.
    for name in ("episode_return", "episode_length"):
        means[name] = jnp.sum(metrics[name] * finished) / jnp.maximum(jnp.sum(finished), 1.0)
    means["episodes_finished"] = jnp.sum(finished)
    return state, means


def chunk_function(setup: Setup, iterations: int):
    """`state -> (state, metrics averaged over the chunk)` (`train_chunk`), jitted, the state
    donated and kept in its shards (`setup.shardings`), the metrics replicated."""
    return jax.jit(lambda state: train_chunk(setup.learner, state, iterations), donate_argnums=0,
                   in_shardings=(setup.shardings,),
                   out_shardings=(setup.shardings, parallel.replicated(setup.mesh)))


CHECKPOINT_NAME = re.compile(r"step_(\d+)")


def checkpoints(run_dir: pathlib.Path) -> list[pathlib.Path]:
    """The run's complete checkpoints, oldest first. Orbax writes each to a temporary folder
    (step_N.orbax-checkpoint-tmp-...) and renames it when done; a save killed midway leaves
    only such a folder, which is not a checkpoint."""
    found = [p for p in (run_dir / "checkpoints").glob("step_*")
             if CHECKPOINT_NAME.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT_NAME.fullmatch(p.name).group(1)))


class CheckpointError(RuntimeError):
    """--resume found checkpoints and none of them could be restored."""


def init_or_resume(setup: Setup, run_dir: pathlib.Path, resume: bool) -> bro.LearnerState:
    """A fresh state, or with `resume` the newest checkpoint that restores. A damaged one (a
    data file truncated or deleted) is said loudly, renamed `step_N.damaged` (so that the run
    saves that step again) and the previous one is tried; a run folder with no complete
    checkpoint (a save killed midway leaves only its temporary folder) starts from step 0, said
    loudly too."""
    if not resume:
        return parallel.init(setup.learner, jax.random.PRNGKey(setup.config.seed),
                             setup.shardings)
    found = checkpoints(run_dir)
    if not found:
        unfinished = sorted(p.name for p in
                            (run_dir / "checkpoints").glob("step_*.orbax-checkpoint-tmp*"))
        logger.warning("!! --resume: %s holds no complete checkpoint%s: training starts from "
                       "step 0.", run_dir, f" (only {', '.join(unfinished)}, left by a save that "
                       "was killed)" if unfinished else "")
        return parallel.init(setup.learner, jax.random.PRNGKey(setup.config.seed),
                             setup.shardings)
    failures = []
    for path in reversed(found):
        try:
            state = checkpoint.restore(path, setup.learner, shardings=setup.shardings)
        except Exception as e:  # orbax and TensorStore raise many kinds for a damaged file
            lines = str(e).strip().splitlines()
            reason = f"{type(e).__name__}: {lines[0].split(' See full')[0][:200] if lines else ''}"
            failures.append(f"{path.name} ({reason})")
            aside = path.with_name(path.name + ".damaged")
            for number in itertools.count(2):  # an earlier session may have set one aside
                if not aside.exists():
                    break
                aside = path.with_name(f"{path.name}.damaged{number}")
            logger.warning("!! checkpoint %s cannot be restored, it is damaged (%s); it is kept "
                           "as %s and the previous checkpoint is tried.", path, reason, aside.name)
            if parallel.is_main_process():
                path.rename(aside)
            continue
        if failures:
            logger.warning("!! resumed from %s, the newest checkpoint that restores: the "
                           "iterations after it run again.", path)
        else:
            logger.info("Resuming from %s", path)
        return state
    raise CheckpointError(f"--resume: none of the checkpoints in {run_dir / 'checkpoints'} can "
                          f"be restored: {'; '.join(failures)}. Start a new run (another "
                          f"--run-name), or restore a backup of the run folder.")


def save_checkpoint(run_dir: pathlib.Path, state: bro.LearnerState, keep: int = 3
                    ) -> pathlib.Path:
    """Saves `state` as checkpoints/step_<iteration> and keeps the newest `keep`."""
    step = int(np.asarray(state.step))
    path = run_dir / "checkpoints" / f"step_{step}"
    if not path.exists():
        checkpoint.save(path, state)  # every process writes its shards
    if not parallel.is_main_process():
        return path
    for old in checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old)
    for unfinished in (run_dir / "checkpoints").glob("step_*.orbax-checkpoint-tmp*"):
        shutil.rmtree(unfinished)  # left by a save that was killed
    return path


class MetricsLog:
    """One row per chunk to `progress.csv` and TensorBoard. On resume, rows past the restored
    iteration (work lost since the last checkpoint) are dropped from both."""

    def __init__(self, run_dir: pathlib.Path, resume_iteration: int, resume: bool = False):
        self.path = run_dir / "progress.csv"
        self.rows = []
        if self.path.exists() and resume_iteration > 0:
            with open(self.path, newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["iteration"]) <= resume_iteration]
        # A resume from step 0 (no complete checkpoint) purges every earlier event too.
        self.writer = tensorboardX.SummaryWriter(str(run_dir / "tensorboard"),
                                                 purge_step=resume_iteration + 1
                                                 if resume or resume_iteration else None)

    def append(self, row: dict[str, float]) -> None:
        self.rows.append(row)
        for name, value in row.items():
            if name != "iteration":
                self.writer.add_scalar(name, value, int(row["iteration"]))
        # Rewritten whole through a temporary file: the log is never half a row.
        names = list(dict.fromkeys(k for r in self.rows for k in r))
        buffer = io.StringIO()
        out = csv.DictWriter(buffer, names)
        out.writeheader()
        out.writerows(self.rows)
        write_text(self.path, buffer.getvalue())

    def close(self) -> None:
        self.writer.close()


class StopRequest:
    """Ctrl-C during training: the first finishes the running chunk and checkpoints, the second
    interrupts at once."""

    def __init__(self):
        self.requested = False
        self.previous = None

    def __enter__(self):
        def handle(signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True
            logger.warning("Ctrl-C: stopping after this chunk and writing a checkpoint "
                           "(press again to stop at once).")
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, handle)
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def train(setup: Setup, run_dir: pathlib.Path, env_steps: int, *, resume: bool = False,
          progress: bool = True) -> tuple[bro.LearnerState, bool]:
    """Trains until `env_steps` transitions (rounded up to whole chunks). Returns the state and
    whether training finished (False when stopped by Ctrl-C; a checkpoint holds the state)."""
    config, learner = setup.config, setup.learner
    per_chunk = config.chunk_iterations * learner.config.num_envs
    total_chunks = max(1, math.ceil(env_steps / per_chunk))
    state = init_or_resume(setup, run_dir, resume)
    done_chunks = int(np.asarray(state.step)) // config.chunk_iterations
    main = parallel.is_main_process()  # one process writes the logs
    log = MetricsLog(run_dir, int(np.asarray(state.step)), resume) if main else None
    chunk = chunk_function(setup, config.chunk_iterations)
    # Named by phase: the first chunk compiles the training program before it runs.
    bar = tqdm.tqdm(total=total_chunks * per_chunk, initial=done_chunks * per_chunk,
                    unit="env step", disable=not (progress and main), dynamic_ncols=True,
                    desc="compiling")
    # progress.csv's wall_s counts every session's training, so a resumed run's total is true.
    started = time.perf_counter() - (float(log.rows[-1]["wall_s"]) if log and log.rows else 0.0)
    finished = True
    try:
        with StopRequest() as stop:
            for index in range(done_chunks, total_chunks):
                state, metrics = chunk(state)
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                iteration = int(np.asarray(state.step))
                if log is not None:
                    log.append({"iteration": iteration,
                                "env_steps": iteration * learner.config.num_envs,
                                "wall_s": time.perf_counter() - started, **metrics})
                if index == done_chunks:  # compiled: the rate and ETA leave the compile out
                    bar.set_description("training")
                    bar.reset(total=bar.total)
                    bar.initial = bar.n = (index + 1) * per_chunk
                    bar.refresh()
                else:
                    bar.update(per_chunk)
                bar.set_postfix(reward=f"{metrics['env_reward']:.3f}",
                                iou=f"{metrics.get('env/reward/iou', float('nan')):.3f}")
                if stop.requested:
                    finished = False
                    break
                if (index + 1) % config.checkpoint_every == 0:
                    save_checkpoint(run_dir, state)
            save_checkpoint(run_dir, state)  # a first Ctrl-C now does not cut it short
    finally:
        bar.close()
        if log is not None:
            log.close()
    return state, finished


PROTOCOL = ("Each policy runs `episodes` episodes from the reference's start (the same reset "
            "keys for every policy) for the reference's length, deterministic actions for the "
            "trained policy. An episode ends at its first fall, as in training, and the robot "
            "stays down: every later step of the reference is scored against the fallen state. "
            "mean_iou: mask IoU with the reference, mean over all steps (the fallen mask after a "
            "fall). mean_video: TimeSformer similarity, all steps (held from the fall on). "
            "pose_error_rad: mean |angle - ground truth| over the root's three rotations and "
            "every joint, all steps (the fallen pose after a fall). env_return_mean: LocoMujoco's walk "
            "reward summed until the first fall; env_reward_per_step_mean: that sum divided by "
            "the steps taken. fall_rate: episodes that fell before the reference ended. "
            "Skills (sit, hang, balance): env_* is the skill's task reward (0 to 1 per step) and "
            "a fall is the skill's failure; success_rate: episodes whose success predicate held "
            "for HOLD_STEPS (100) consecutive steps before any failure; normalized_task_reward: "
            "the task reward summed until the failure, divided by the reference's length.")
POLICIES = ("nil", "zero", "random")  # the trained policy (deterministic) and the two baselines


def evaluation_function(setup: Setup, num_episodes: int):
    """`(agent, policy index into POLICIES, key) -> per-step records (T, E)`, compiled once for
    all policies: the episodes run the reference's length from its start (steps after a fall
    are simulated but not scored: `summarize` holds the fallen state). Training's early
    termination is off: only a fall ends an evaluation episode."""
    env = setup.env.without_early_termination()
    learner, length = setup.learner, setup.bundle.num_frames - 1

    baselines = [jax.vmap(policy(env.action_size))
                 for policy in (evaluation.zero_policy, evaluation.random_policy)]

    def act(agent, kind, obs, key):
        keys = jax.random.split(key, num_episodes)
        return jax.lax.switch(kind, [lambda: learner.act(agent, obs)]
                              + [lambda policy=policy: policy(obs, keys).astype(obs.dtype)
                                 for policy in baselines])

    def run(agent, kind, key):
        key_reset, key_act = jax.random.split(key)
        state = env.reset(jax.random.split(key_reset, num_episodes))

        def step(state, key):
            state = env.step(state, act(agent, kind, state.obs, key))
            record = {name: state.metrics[name] for name in ("reward/iou", "reward/env")}
            for name in ("reward/video", "success"):  # if streamed / a skill
                if name in state.metrics:
                    record[name] = state.metrics[name]
            record.update(qpos=state.pipeline_state.qpos, done=state.done,
                          mask=state.info["mask"])
            return state, record

        _, records = jax.lax.scan(step, state, jax.random.split(key_act, length))
        return records

    # Replicated records: every process of a multi-host run can read them.
    return jax.jit(run, out_shardings=parallel.replicated(setup.mesh))


def after_falls_held(records: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Records (T, E) where every step after an episode's first fall shows the fallen state:
    the episode ends there, as in training, and the robot stays down for the rest of the
    reference. Also the steps taken (E,)."""
    done = records["done"] > 0
    length = done.shape[0]
    steps = np.where(done.any(0), np.argmax(done, 0) + 1, length)
    held = np.minimum(np.arange(length)[:, None], steps[None] - 1)  # (T, E) record index
    columns = np.arange(done.shape[1])[None]
    return {name: value[held, columns] for name, value in records.items()}, steps


def summarize(setup: Setup, records: dict[str, np.ndarray]) -> dict[str, Any]:
    """Means over the episodes of one policy (records (T, E) from `evaluation_function`); see
    PROTOCOL. Scores after a fall compare the fallen state with the reference as it goes on.
    With ground truth, also `pose_error_by_angle`: {joint name: mean |angle - ground truth|
    (rad)}, the angles whose mean is pose_error_rad."""
    length = records["done"].shape[0]
    held, steps = after_falls_held(records)
    alive = np.arange(length)[:, None] < steps[None]
    env_return = (records["reward/env"] * alive).sum(0)
    reference_masks = np.asarray(setup.env.reference.masks)[1:length + 1, None]
    iou = np.asarray(renderer.mask_iou(held["mask"], reference_masks))
    metrics = {"fall_rate": float((steps < length).mean()),
               "steps_to_fall_mean": float(steps.mean()),
               "env_return_mean": float(env_return.mean()),
               "env_reward_per_step_mean": float((env_return / steps).mean()),
               "mean_iou": float(iou.mean())}
    if "reward/video" in records:  # the fallen clip's similarity is held (no encoder here)
        metrics["mean_video"] = float(held["reward/video"].mean())
    if "success" in records:  # a skill: its predicate held long enough, before any failure
        succeeded = jax.device_get(skill_tasks.held(jnp.asarray((records["success"] * alive).T),
                                                    skill_tasks.HOLD_STEPS))
        metrics["success_rate"] = float(np.mean(succeeded))
        metrics["normalized_task_reward"] = float((env_return / length).mean())
    error = angle_errors(setup, held)
    if error is not None:
        metrics["pose_error_rad"] = float(error.mean())
        metrics["pose_error_by_angle"] = {name: float(value) for name, value in
                                          zip(angle_names(setup), error.mean((0, 1)))}
    return metrics


def angle_errors(setup: Setup, held: dict[str, np.ndarray]) -> Optional[np.ndarray]:
    """|angle - ground truth| (T, E, A) of every angle (`embodiments.angle_qpos`) at every step
    of records whose falls are held (`after_falls_held`); None without ground truth."""
    truth = setup.bundle.ground_truth_qpos
    if truth is None:
        return None
    angles = envs.embodiments.angle_qpos(setup.embodiment)
    length = held["qpos"].shape[0]
    return np.abs(held["qpos"][..., angles] - truth[1:length + 1, None, angles])


def angle_names(setup: Setup) -> list[str]:
    """The joint name of each angle of `angle_errors`, in the robot's order."""
    model = setup.embodiment.mj_model
    joint_of = {int(model.jnt_qposadr[j]): j for j in range(model.njnt)}
    return [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_JOINT, joint_of[int(q)])
            for q in envs.embodiments.angle_qpos(setup.embodiment)]


def evaluate(setup: Setup, agent, key: jax.Array, num_episodes: int = 5,
             policies: tuple[str, ...] = POLICIES) -> tuple[dict, dict]:
    """({policy: metrics}, {policy: records}) for the trained policy and the baselines, each on
    the same reset keys."""
    run = evaluation_function(setup, num_episodes)
    metrics, records = {}, {}
    for name in policies:
        records[name] = jax.device_get(run(agent, POLICIES.index(name), key))
        metrics[name] = summarize(setup, records[name])
    return metrics, records
