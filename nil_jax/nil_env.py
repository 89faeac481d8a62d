"""The NIL environment: a batch of robots rewarded for looking like the reference video.

    reset(keys (N, 2)) -> State      robots at the home pose (+ the task's reset noise), t = 0,
                                     the clip buffer holding 8 copies of the home frame
    step(state, actions (N, A)) -> State
        actions --RobotEnv.step (vmapped; the physics backend batches itself)--> qpos, qvel
          --MJX kinematics--> body and camera poses --silhouette renderer (the batch at once,
            chunked within its memory budget)--> mask, shade (N, H, W)
          --clip buffer--> streams: IoU with reference mask t, TimeSformer similarity with
            reference embedding t (every `video_stride`-th step for the whole batch, held in
            between) --+ penalties--> R_t = zeta S_v + beta S_M + eta P_t

With `observe_phase` the observation ends with tau = t / (T - 1), the fraction of the reference
played, as imitation policies usually get (the reference is a function of time), and with
`phase_harmonics` K > 0 also sin(2 pi k tau) and cos(2 pi k tau) for k = 1..K: a Fourier basis of
time on the reference. A small MLP is slow to fit a function that oscillates several times over
its input's range (spectral bias; Tancik et al. 2020's Fourier features), and a gait is one: the
synthetic H1 walk makes 2.7 cycles in its 3 s. K cycles per reference is the highest frequency
the basis holds (8 over 3 s: 2.7 Hz); it assumes nothing about the motion's period.

This env is already batched (`reset` takes N keys): the video stream's stride is one
condition for the whole batch, which a per-environment env under `vmap` could not express.
Episodes end when the robot falls (termination: the task's fall limits) or when the reference
ends (truncation, through brax's `EpisodeWrapper` with `episode_length = reference.length - 1`,
so that step t always has a reference frame t). A non-finite reward (a diverged step) is
replaced by 0, counted in `metrics["nonfinite_reward"]`, and ends the episode.

Early termination (`EarlyTermination`, off by default) is DeepMimic's, with the video as its
only witness: an episode also ends, as a fall does (no bootstrap), once its mask IoU has stayed
below a threshold for a number of steps in a row (`metrics["early_termination"]`). Drifting
from the reference then costs the rest of the episode, where a robot that merely stands would
otherwise go on collecting its standing IoU. Evaluation scores whole episodes with it off
(`without_early_termination`): only falls end them there.

The environment's own task reward (LocoMujoco's walk reward, or a skill's task reward) is kept
as `metrics["reward/env"]` for evaluation; it is never part of the NIL reward. Given the
reference's ground-truth poses (`pose_reference` (T, nq)), the pose-tracking reward of step t
against pose t is kept as `metrics["reward/pose"]`. `reward_source` (`reward.sources`) picks
the reward trained on: "nil", "task" (`reward/env`) or "pose" (`reward/pose`); the others are
only logged.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from brax.envs.base import Env, State

from nil_jax.envs.embodiments import angle_qpos
from nil_jax.envs.robot_env import RobotEnv
from nil_jax.reward import nil_reward, regularizers, renderer, silhouettes, sources


@dataclasses.dataclass(frozen=True)
class EarlyTermination:
    """End an episode once its mask IoU < `iou` for `steps` consecutive steps (iou 0: off)."""

    iou: float = 0.0
    steps: int = 10

    def __post_init__(self):
        if not 0.0 <= self.iou < 1.0:
            raise ValueError(f"early termination iou must be in [0, 1) (0 switches it off), got "
                             f"{self.iou}")
        if not (isinstance(self.steps, int) and self.steps >= 1):
            raise ValueError(f"early termination steps must be an integer >= 1, got "
                             f"{self.steps!r}")

    @property
    def enabled(self) -> bool:
        return self.iou > 0


def check_phase_harmonics(phase_harmonics: int, observe_phase: bool) -> None:
    """The harmonics are features of the observed phase: K >= 0, and K > 0 only with the phase."""
    if not (isinstance(phase_harmonics, int) and phase_harmonics >= 0):
        raise ValueError(f"phase_harmonics must be an integer >= 0, got {phase_harmonics!r}")
    if phase_harmonics and not observe_phase:
        raise ValueError(f"phase_harmonics={phase_harmonics} needs the phase observed "
                         f"(observe_phase; on the command line drop --no-observe-phase or set "
                         f"--phase-harmonics 0)")


class NilEnv(Env):
    def __init__(self, robot: RobotEnv, reference: nil_reward.Reference,
                 silhouette: silhouettes.Silhouettes, config: nil_reward.RewardConfig,
                 encoder: Optional[nil_reward.VideoEncoder] = None, observe_phase: bool = False,
                 phase_harmonics: int = 0,
                 reward_source: sources.RewardSource = "nil",
                 pose_reference: Optional[jax.Array] = None,
                 early_termination: EarlyTermination = EarlyTermination()):
        spec = silhouette.spec
        if reference.masks.shape[1:] != (spec.height, spec.width):
            raise ValueError(f"reference masks are {reference.masks.shape[1:]}, the renderer draws "
                             f"{(spec.height, spec.width)}: render at the reference's resolution")
        if reference.length < nil_reward.CLIP_FRAMES:
            raise ValueError(f"the reference has {reference.length} frames, fewer than one "
                             f"{nil_reward.CLIP_FRAMES}-frame clip")
        check_phase_harmonics(phase_harmonics, observe_phase)
        sources.check(reward_source)
        sources.check_ground_truth(reward_source, pose_reference, "this NilEnv's reference")
        if pose_reference is not None and pose_reference.shape != (reference.length,
                                                                   robot.embodiment.nq):
            raise ValueError(f"pose_reference is {pose_reference.shape}, not (reference length, "
                             f"nq) = {(reference.length, robot.embodiment.nq)}")
        self.robot = robot
        self.reference = reference
        self.silhouette = silhouette
        self.config = config
        self.encoder = encoder
        self.observe_phase = observe_phase
        self.phase_harmonics = phase_harmonics
        self.reward_source = reward_source
        self.pose_reference = pose_reference
        self.early_termination = early_termination
        self.angles = angle_qpos(robot.embodiment)
        self.indices = regularizers.BodyIndices.of(robot.embodiment)
        self.home_frame, self.home_mask = self._home_frame()

    def _home_frame(self) -> tuple[np.ndarray, np.ndarray]:
        """The encoder's view (H, W) uint8 and the mask (H, W) bool of the home pose: every
        episode's first frame (the reset noise, 0.01 rad, changes a few pixels at most)."""
        qpos = jnp.asarray(self.robot.embodiment.init_qpos, jnp.float32)
        frame = jax.jit(lambda q: renderer.render_exhaustive(
            self.silhouette.spec, *silhouettes.poses(self.silhouette, q)))(qpos)
        frame = jax.tree.map(lambda x: x[None], frame)
        return (np.asarray(nil_reward.encoder_frame(self.config, frame)[0]),
                np.asarray(frame["mask"][0]))

    def without_early_termination(self) -> "NilEnv":
        """The same env (reference, renderer, reward) whose episodes end only at falls."""
        env = copy.copy(self)
        env.early_termination = EarlyTermination()
        return env

    @property
    def observation_size(self) -> int:
        return (self.robot.observation_size + int(self.observe_phase)
                + 2 * self.phase_harmonics)

    def _observe(self, robot_obs: jax.Array, t: jax.Array) -> jax.Array:
        """The robot's observation, and with `observe_phase` the fraction of the reference
        played (tau = t / (T - 1)) and its K harmonics [sin 2 pi k tau, cos 2 pi k tau]_k: the
        policy knows which reference frame it is matched against."""
        if not self.observe_phase:
            return robot_obs
        phase = t.astype(robot_obs.dtype)[:, None] / max(self.reference.length - 1, 1)
        angles = 2 * jnp.pi * phase * jnp.arange(1, self.phase_harmonics + 1, dtype=phase.dtype)
        return jnp.concatenate([robot_obs, phase, jnp.sin(angles), jnp.cos(angles)], axis=-1)

    @property
    def action_size(self) -> int:
        return self.robot.action_size

    @property
    def backend(self) -> str:
        return self.robot.backend

    def _poses(self, qpos: jax.Array):
        return jax.vmap(lambda q: silhouettes.poses(self.silhouette, q))(qpos)

    def reset(self, rng: jax.Array) -> State:
        state = jax.vmap(self.robot.reset)(rng)
        batch = rng.shape[0]
        xpos, _, _, _ = self._poses(state.pipeline_state.qpos)
        dtype = state.reward.dtype
        clip = jnp.broadcast_to(jnp.asarray(self.home_frame),
                                (batch, nil_reward.CLIP_FRAMES) + self.home_frame.shape)
        info = dict(state.info, t=jnp.zeros(batch, jnp.int32),
                    previous_action=jnp.zeros((batch, self.action_size), dtype),
                    xpos=xpos.astype(dtype), clip=clip,
                    video_similarity=jnp.zeros(batch, dtype),
                    global_step=jnp.zeros(batch, jnp.int32),
                    low_iou_steps=jnp.zeros(batch, jnp.int32),
                    mask=jnp.broadcast_to(jnp.asarray(self.home_mask),
                                          (batch,) + self.home_mask.shape))
        metrics = dict(self._without_task_reward(state.metrics),
                       **{name: jnp.zeros(batch, dtype) for name in self.metric_names()})
        return state.replace(obs=self._observe(state.obs, info["t"]), info=info,
                             metrics=metrics)

    def _without_task_reward(self, metrics: dict) -> dict:
        """The robot env's metrics without its task reward (`reward/walk`, `reward/sit`, ...),
        which is `reward/env` here: one column, not two."""
        return {k: v for k, v in metrics.items() if k != f"reward/{self.robot.task.name}"}

    def metric_names(self) -> tuple[str, ...]:
        names = ["reward/env", "reward/iou", "nonfinite_reward"]
        if self.pose_reference is not None:
            names.append("reward/pose")
        if self.config.video_weight > 0:
            names.append("reward/video")
        names += [f"penalty/{t}" for t in regularizers.TERMS
                  if getattr(self.config.regularizers, t) > 0]
        names.append("penalty/total")
        if self.early_termination.enabled:
            names.append("early_termination")
        return tuple(names)

    def step(self, state: State, action: jax.Array) -> State:
        info = state.info
        next_state = jax.vmap(self.robot.step)(state, action)
        physics = next_state.pipeline_state
        xpos, xmat, cam_xpos, cam_xmat = self._poses(physics.qpos)
        frames = renderer.render_batch(self.silhouette.spec, xpos, xmat, cam_xpos, cam_xmat)
        t = info["t"] + 1
        clip = nil_reward.push_frame(info["clip"], nil_reward.encoder_frame(self.config, frames),
                                     jnp.zeros_like(t, bool))
        # One clock for the batch, read as its max: an env that restarts its episode gets a
        # fresh state (clock 0) from the learner's auto-reset, the others keep counting. It
        # restarts only when every env restarts at once (the stride's phase then restarts).
        clock = jnp.max(info["global_step"])
        run_video = clock % self.config.video_stride == 0
        terms = nil_reward.streams(self.config, self.reference, self.encoder, step=t,
                                   frames=frames, clips=clip,
                                   previous_similarity=info["video_similarity"],
                                   run_video=run_video)
        dtype = next_state.reward.dtype
        xpos = xpos.astype(dtype)
        terms.update(regularizers.penalties(
            self.config.regularizers, self.indices, action=action,
            previous_action=info["previous_action"], qvel=physics.qvel, xpos=xpos,
            previous_xpos=info["xpos"], xmat=xmat))
        rewards = {"nil": nil_reward.combine(self.config, terms).astype(dtype),
                   "task": next_state.reward}
        if self.pose_reference is not None:
            target = self.pose_reference[nil_reward.reference_index(self.reference, t)]
            terms["reward/pose"] = sources.pose_reward(physics.qpos, target,
                                                       self.angles).astype(dtype)
            rewards["pose"] = terms["reward/pose"]
        reward = rewards[self.reward_source]
        finite = jnp.isfinite(reward)
        low_iou_steps = jnp.where(terms["reward/iou"] < self.early_termination.iou,
                                  info["low_iou_steps"] + 1, 0)
        early = (self.early_termination.enabled
                 & (low_iou_steps >= self.early_termination.steps)).astype(dtype)
        if self.early_termination.enabled:
            terms["early_termination"] = early
        metrics = self._without_task_reward(next_state.metrics)
        metrics.update({k: jnp.where(finite, v, 0.0).astype(dtype) for k, v in terms.items()
                        if k in metrics})
        metrics.update({"reward/env": next_state.reward,
                        "nonfinite_reward": (~finite).astype(dtype)})
        info = dict(next_state.info, t=t, previous_action=action.astype(dtype), xpos=xpos,
                    clip=clip, global_step=jnp.full_like(t, clock + 1), mask=frames["mask"],
                    low_iou_steps=low_iou_steps,
                    video_similarity=terms.get("reward/video", info["video_similarity"]))
        return next_state.replace(obs=self._observe(next_state.obs, t),
                                  reward=jnp.where(finite, reward, 0.0),
                                  done=jnp.maximum(jnp.maximum(next_state.done, early),
                                                   (~finite).astype(dtype)),
                                  metrics=metrics, info=info)
