"""BRO, the learner of NIL: "Bigger, Regularized, Optimistic" (Nauman et al., NeurIPS 2024),
the algorithm of the official JAX code (`naumix/BiggerRegularizedOptimistic`, `jaxrl/bro`),
with the environments and the replay buffer on the device.

    learner = Bro(env, preset("bro_fast", num_envs=256))   # env: any single brax Env
    state = learner.init(key)                    # LearnerState: agent, replay, envs, rng, step
    state, metrics = learner.train_step(state)   # one iteration, jittable, vmappable over seeds
    state, metrics = learner.train(state, 1000)  # 1000 iterations in one lax.scan

One training iteration (`train_step`), for N environments and U updates:

    obs (N, obs) --optimistic actor (uniform random during the warm-up)--> actions
      --env.step--> transitions (true last obs, mask)
      --insert--> replay (capacity rows, circular)      done envs --env.reset--> new episodes
      --full reset of the agent on the schedule--> U x [sample batch --update--> agent]  (lax.scan)

With `normalize_observations` every network sees observations standardized by the running mean
and std of all those the envs acted on (`AgentState.obs_stats`, counted each iteration before
the updates); the replay keeps raw observations.

One update (`update`), as the official `_update`: critic (quantile Huber against the soft
distributional target of the target critics), target critic (Polyak), conservative actor,
optimistic actor, then the duals (temperature alpha, optimism beta_opt, KL weight beta_kl).
The losses are in `losses.py`, the networks in `networks.py`.

Episodes: the learner wraps `env` in brax's `VmapWrapper` and `EpisodeWrapper` and resets
finished environments itself (not with brax's `AutoResetWrapper`, which overwrites the last
observation of an episode with the first observation of the next one), so every transition
stores the true next observation, and `mask = 1 - termination` with
`termination = done and not truncation`: episodes cut at `episode_length` bootstrap, terminal
states do not.

Seeds: every function is written for one seed; `jax.vmap(learner.train_step)` over a batch of
states (`jax.vmap(learner.init)(keys)`) runs independent seeds, as the official code does.

The warm-up (2,500 transitions of uniform random actions, no updates) is the first
`config.warmup_iterations` iterations of `train_step`.

Jit `train_step` and `train` with `donate_argnums=0`: the replay is then written in
place (the insert is a scatter of N rows); without donation XLA copies the whole buffer into
the new state every call.

Settings: the paper's regime is one env and 10 updates per env step (`bro`; `bro_fast`: 2).
With thousands of envs (accelerators) use large batches and few updates per iteration (e.g.
N = 1024-4096, batch 1024-4096, U = 4-16). `reset_steps` counts transitions, as the official
code does, so with N envs the official schedule resets after few updates: multiply it by
N x 10 / U to keep the official number of updates between resets, or set `reset_steps=()`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from brax.envs.base import Env, State
from brax.envs.wrappers import training as brax_training
from brax.training.acme import running_statistics

from nil_jax.agents import losses, networks, nstep, replay
from nil_jax.agents.replay import ReplayState, Transition

# Standardized observations are clipped to this many stds; a std is never taken below
# OBS_STD_MIN (a feature constant so far would otherwise be divided by ~0 when it first moves).
OBS_CLIP = 10.0
OBS_STD_MIN = 1e-3

OFFICIAL_RESET_STEPS = (15_001, 50_001, 250_001, 500_001, 750_001, 1_000_001, 1_500_001,
                        2_000_001)


# Env metrics that flag a transition as diverged (RobotEnv: non-finite physics; NilEnv: a
# non-finite reward). Such transitions end their episode and never enter the replay.
INVALID_METRICS = ("nonfinite", "nonfinite_reward")


@dataclasses.dataclass(frozen=True)
class BroConfig:
    """Every BRO hyperparameter; the defaults are the official ones (`bro`)."""

    # networks
    critic_width: int = 512
    critic_depth: int = 2  # residual blocks
    num_quantiles: int = 100
    actor_width: int = 256
    actor_depth: int = 1
    # Observations standardized by their running mean and std before every network (not in the
    # official code; FastTD3's and FastSAC's humanoid recipes, brax's PPO and SAC): without it
    # the fastest features (joint velocities, tens of rad/s) drown the slow ones (root height
    # and tilt, centimetres and hundredths of a radian) in the first layer.
    normalize_observations: bool = False
    # Init scale of the actor's mean head (official: sqrt(2)). A small one starts the policy
    # near the zero action: for joint targets (PD actuation), near the home pose.
    actor_mean_init_scale: float = 2.0 ** 0.5
    # Weight of mean_i tanh(mean_i)^2, the squared deterministic action, in the actor's loss (not
    # in the official code; HER's DDPG `action_l2`). With joint targets it pulls the evaluated
    # policy's joints toward home wherever the critic's gradient does not say otherwise: an
    # action penalty in the reward reaches the actor only through the critic, whose gradient in
    # the joints the reward does not see is noise.
    action_l2: float = 0.0
    # Multiply action_l2 by the batch's mean |Q| (held constant, as TD3+BC scales its BC term):
    # the penalty then follows the reward's scale (a fixed weight that suits the NIL reward
    # swamps a smaller one) and grows as the critic learns that the policy survives, so it does
    # not hold a policy that cannot yet stand at the falling home pose.
    action_l2_by_q: bool = False
    # The action_l2 weight rises linearly from 0 to its value over the first this many
    # transitions (0: constant). A weight strong enough to hold the unseen joints home also
    # holds a policy that cannot yet stand at the home pose, which falls.
    action_l2_ramp_steps: int = 0
    # losses
    discount: float = 0.99
    # Steps of reward summed into each stored transition before bootstrapping (agents/nstep.py;
    # official: 1). More steps carry a reward back faster through a young critic.
    n_step: int = 1
    tau: float = 0.005  # target critic Polyak rate
    kappa: float = 1.0  # quantile Huber threshold
    pessimism: float = 0.0  # the critic target is the mean of the two critics
    std_multiplier: float = 0.75  # optimistic std = conservative std x this
    kl_target: float = 0.05  # per action dimension
    target_entropy: Optional[float] = None  # None: -|A| / 2
    init_temperature: float = 1.0
    init_optimism: float = 1.0  # beta_opt
    init_kl_weight: float = 0.25  # beta_kl
    dual_log_min: float = -10.0  # the duals' bounds: log beta in [dual_log_min, dual_log_max]
    dual_log_max: float = 7.5
    # optimizers
    learning_rate: float = 3e-4  # actor, optimistic actor and critic (AdamW)
    weight_decay: float = 1e-4
    temperature_learning_rate: float = 3e-4  # Adam, b1 = dual_b1
    dual_learning_rate: float = 3e-5  # beta_opt and beta_kl (Adam, b1 = dual_b1)
    dual_b1: float = 0.5
    # data
    num_envs: int = 1
    episode_length: int = 1000
    batch_size: int = 128
    updates_per_step: int = 10  # gradient updates per training iteration (N env steps)
    warmup_steps: int = 2_500  # transitions of uniform random actions before the first update
    replay_capacity: int = 1_000_000
    # Full resets of the agent (networks, optimizers, duals; the replay is kept) when the
    # number of transitions collected reaches each of these (the official "env step" counts).
    reset_steps: tuple[int, ...] = OFFICIAL_RESET_STEPS

    def __post_init__(self):
        if self.replay_capacity < max(self.num_envs, self.warmup_steps, 1):
            raise ValueError("replay_capacity must hold the warm-up and one step of every env.")
        if self.num_envs < 1 or self.batch_size < 1 or self.updates_per_step < 1:
            raise ValueError("num_envs, batch_size and updates_per_step must be positive.")
        if not self.action_l2 >= 0:
            raise ValueError(f"action_l2 must be >= 0 (0: off), got {self.action_l2}.")
        if self.action_l2_ramp_steps < 0:
            raise ValueError(f"action_l2_ramp_steps must be >= 0 (0: no ramp), got "
                             f"{self.action_l2_ramp_steps}.")
        if self.n_step < 1:
            raise ValueError(f"n_step must be >= 1 (1: one-step targets), got {self.n_step}.")

    @property
    def warmup_iterations(self) -> int:
        """The first iterations (of N env steps each), with random actions and no updates: at
        least one, so that the replay is never empty when the updates start."""
        return max(1, math.ceil(self.warmup_steps / self.num_envs))

    @property
    def reset_iterations(self) -> tuple[int, ...]:
        """The iteration (0-based) whose N transitions cross each reset step: the official
        reset happens before the update of env step r, i.e. after r transitions."""
        return tuple(sorted({math.ceil(r / self.num_envs) - 1 for r in self.reset_steps}))


# BRO-fast: 2 updates per step and one reset (the official code keeps the first reset when
# updates_per_step == 2).
PRESETS = {
    "bro": BroConfig(),
    "bro_fast": BroConfig(updates_per_step=2, reset_steps=OFFICIAL_RESET_STEPS[:1]),
}


def useful_resets(reset_steps: tuple[int, ...], total_steps: int
                  ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(kept, dropped) resets of a run of `total_steps` transitions. A reset at r is kept when
    the run trains at least as long after it as since the previous one (r - previous): a later
    reset leaves a network that never catches up, and the run ends on (and is evaluated with)
    an agent worse than the one it threw away."""
    kept, dropped, previous = [], [], 0
    for r in sorted(reset_steps):
        if total_steps - r >= r - previous:
            kept.append(r)
            previous = r
        else:
            dropped.append(r)
    return tuple(kept), tuple(dropped)


def preset(name: str, **overrides) -> BroConfig:
    """A preset with explicit overrides, e.g. `preset("bro_fast", num_envs=256)`."""
    if name not in PRESETS:
        raise ValueError(f"Unknown BRO preset {name!r}; choose one of {sorted(PRESETS)}.")
    return dataclasses.replace(PRESETS[name], **overrides)


@flax.struct.dataclass
class Trainable:
    """Parameters and the state of their optimizer (the optimizer itself lives in `Bro`)."""

    params: Any
    opt_state: Any


@flax.struct.dataclass
class AgentParams:
    actor: Any
    optimistic_actor: Any
    critic: Any
    log_temperature: jax.Array  # alpha = exp(log_temperature)
    optimism: jax.Array  # raw parameter of beta_opt (losses.bounded_exp)
    kl_weight: jax.Array  # raw parameter of beta_kl


@flax.struct.dataclass
class AgentState:
    actor: Trainable
    optimistic_actor: Trainable
    critic: Trainable
    target_critic: Any  # parameters only
    temperature: Trainable
    optimism: Trainable
    kl_weight: Trainable
    # Running mean and std of the observations the agent acted on (brax's running_statistics);
    # None without `normalize_observations`. Kept through resets: they describe the data.
    obs_stats: Optional[running_statistics.RunningStatisticsState] = None


@flax.struct.dataclass
class LearnerState:
    """Everything a run needs to continue bit-identically (`checkpoint.save` writes it all)."""

    agent: AgentState
    initial_params: AgentParams  # what a reset restores, as in the official code
    replay: ReplayState
    env_state: State  # N environments
    key: jax.Array
    step: jax.Array  # () int32: iterations done (warm-up and training), N transitions each
    # The N envs' last n_step transitions, folded into n-step ones (None when n_step == 1)
    window: Optional[nstep.Window] = None


class Optimizers(NamedTuple):
    actor: optax.GradientTransformation
    optimistic_actor: optax.GradientTransformation
    critic: optax.GradientTransformation
    temperature: optax.GradientTransformation
    optimism: optax.GradientTransformation
    kl_weight: optax.GradientTransformation


def apply_loss(trainable: Trainable, optimizer: optax.GradientTransformation, loss_fn: Callable,
               *inputs, name: Optional[str] = None) -> tuple[Trainable, dict]:
    """One gradient step of `loss_fn(params, *inputs) -> (loss, info)`; with `name`, the info
    also gets the gradient and parameter norms."""
    grads, info = jax.grad(loss_fn, has_aux=True)(trainable.params, *inputs)
    if name is not None:
        info = {**info, f"{name}_grad_norm": optax.tree.norm(grads),
                f"{name}_param_norm": optax.tree.norm(trainable.params)}
    updates, opt_state = optimizer.update(grads, trainable.opt_state, trainable.params)
    return Trainable(optax.apply_updates(trainable.params, updates), opt_state), info


def tree_where(condition: jax.Array, on_true, on_false):
    """Per-leaf `jnp.where`; `condition` broadcasts against each leaf's leading axes."""
    def select(x, y):
        c = jnp.reshape(condition, condition.shape + (1,) * (x.ndim - condition.ndim))
        return jnp.where(c, x, y)
    return jax.tree.map(select, on_true, on_false)


class Bro:
    """The BRO learner for one environment and config: networks, optimizers and pure functions
    of `LearnerState`. Its attributes are set once here and never change."""

    def __init__(self, env: Env, config: BroConfig = BroConfig(), *, batched: bool = False,
                 batch_sharding: Optional[jax.sharding.Sharding] = None,
                 action_l2_mask: Optional[np.ndarray] = None):
        """`batched`: `env` already steps a batch of environments (its `reset` takes
        `num_envs` keys), as `nil_jax.nil_env.NilEnv` does; otherwise it is vmapped here.
        `batch_sharding`: where each update's sampled batch lives; split over devices, each
        computes the gradients of its share (`nil_jax.parallel`). `action_l2_mask` (|A|,):
        the actions `config.action_l2` penalizes, as 0/1 weights (None: all of them)."""
        c = self.config = config
        self.batch_sharding = batch_sharding
        self.env = env  # the environment as given
        self.envs = brax_training.EpisodeWrapper(
            env if batched else brax_training.VmapWrapper(env), c.episode_length,
            action_repeat=1)
        self.action_size = env.action_size
        self.obs_size = env.observation_size
        self.critic_net = networks.DoubleCritic(c.critic_width, c.critic_depth, c.num_quantiles)
        self.actor_net = networks.Actor(self.action_size, c.actor_width, c.actor_depth,
                                        c.actor_mean_init_scale)
        self.optimistic_net = networks.OptimisticActor(self.action_size, c.actor_width,
                                                       c.actor_depth, c.std_multiplier)
        if action_l2_mask is not None and np.shape(action_l2_mask) != (self.action_size,):
            raise ValueError(f"action_l2_mask has shape {np.shape(action_l2_mask)}; the env has "
                             f"{self.action_size} actions.")
        self.action_l2_mask = action_l2_mask
        self.losses = losses.make_losses(self.critic_net, self.actor_net, self.optimistic_net, c,
                                         action_l2_mask)
        adamw = optax.adamw(c.learning_rate, weight_decay=c.weight_decay)
        dual = optax.adam(c.dual_learning_rate, b1=c.dual_b1)
        self.optimizers = Optimizers(
            actor=adamw, optimistic_actor=adamw, critic=adamw,
            temperature=optax.adam(c.temperature_learning_rate, b1=c.dual_b1),
            optimism=dual, kl_weight=dual)

    # ----- parameters -----

    def init_params(self, key: jax.Array) -> AgentParams:
        c = self.config
        key_actor, key_optimistic, key_critic = jax.random.split(key, 3)
        obs = jnp.zeros((1, self.obs_size))
        action = jnp.zeros((1, self.action_size))
        return AgentParams(
            actor=self.actor_net.init(key_actor, obs),
            optimistic_actor=self.optimistic_net.init(key_optimistic, obs, action, action),
            critic=self.critic_net.init(key_critic, obs, action),
            log_temperature=jnp.asarray(math.log(c.init_temperature), jnp.float32),
            optimism=jnp.asarray(losses.bounded_exp_inverse(
                c.init_optimism, c.dual_log_min, c.dual_log_max), jnp.float32),
            kl_weight=jnp.asarray(losses.bounded_exp_inverse(
                c.init_kl_weight, c.dual_log_min, c.dual_log_max), jnp.float32),
        )

    def fresh_agent(self, params: AgentParams, obs_stats=None) -> AgentState:
        """An agent at `params` with new optimizer states and the given observation statistics;
        the target critic starts equal to the critic."""
        def trainable(p, optimizer):
            return Trainable(p, optimizer.init(p))
        o = self.optimizers
        return AgentState(
            actor=trainable(params.actor, o.actor),
            optimistic_actor=trainable(params.optimistic_actor, o.optimistic_actor),
            critic=trainable(params.critic, o.critic),
            # A copy, so that the state never holds one buffer twice (buffer donation).
            target_critic=jax.tree.map(jnp.copy, params.critic),
            temperature=trainable(params.log_temperature, o.temperature),
            optimism=trainable(params.optimism, o.optimism),
            kl_weight=trainable(params.kl_weight, o.kl_weight),
            obs_stats=obs_stats,
        )

    def init_obs_stats(self) -> Optional[running_statistics.RunningStatisticsState]:
        """Statistics of no observation yet (mean 0, std 1), or None without normalization."""
        if not self.config.normalize_observations:
            return None
        # Arrays throughout (brax starts some leaves as Python numbers), so that the state's
        # leaves keep their types through lax.scan, checkpoints and resets.
        return jax.tree.map(jnp.asarray,
                            running_statistics.init_state(jnp.zeros((self.obs_size,))))

    def normalize(self, agent: AgentState, obs: jax.Array) -> jax.Array:
        """The networks' input: `obs` standardized and clipped to +-OBS_CLIP (or as is)."""
        if agent.obs_stats is None:
            return obs
        return running_statistics.normalize(obs, agent.obs_stats, max_abs_value=OBS_CLIP)

    def observe(self, agent: AgentState, obs: jax.Array) -> AgentState:
        """`agent` whose observation statistics also count `obs` (N, obs_size)."""
        if agent.obs_stats is None:
            return agent
        return agent.replace(obs_stats=running_statistics.update(
            agent.obs_stats, obs, std_min_value=OBS_STD_MIN))

    def init(self, key: jax.Array) -> LearnerState:
        key_params, key_env, key = jax.random.split(key, 3)
        params = self.init_params(key_params)
        env_state = self.envs.reset(jax.random.split(key_env, self.config.num_envs))
        obs = jnp.zeros((self.obs_size,), jnp.float32)
        example = Transition(obs=obs, action=jnp.zeros((self.action_size,), jnp.float32),
                             reward=jnp.zeros(()), mask=jnp.zeros(()), next_obs=obs)
        window = None
        if self.config.n_step > 1:
            window = nstep.init(jax.tree.map(
                lambda x: jnp.broadcast_to(x, (self.config.num_envs,) + x.shape), example),
                self.config.n_step)
        return LearnerState(agent=self.fresh_agent(params, self.init_obs_stats()),
                            initial_params=params,
                            replay=replay.init(self.config.replay_capacity, example),
                            env_state=env_state, key=key, step=jnp.zeros((), jnp.int32),
                            window=window)

    # ----- acting -----

    def explore(self, agent: AgentState, obs: jax.Array, key: jax.Array) -> jax.Array:
        """Actions of the optimistic actor (the data-collection policy), clipped to [-1, 1]."""
        obs = self.normalize(agent, obs)
        mean, std = self.actor_net.apply(agent.actor.params, obs)
        mean, std = self.optimistic_net.apply(agent.optimistic_actor.params, obs, mean, std)
        action, _ = networks.tanh_gaussian_sample(key, mean, std)
        return jnp.clip(action, -1.0, 1.0)

    def act(self, agent: AgentState, obs: jax.Array) -> jax.Array:
        """The deterministic evaluation action: tanh of the conservative actor's mean."""
        mean, _ = self.actor_net.apply(agent.actor.params, self.normalize(agent, obs))
        return networks.tanh_gaussian_mode(mean)

    def policy(self, agent: AgentState, deterministic: bool = True):
        """`(obs, key) -> action`, for `envs.evaluation.evaluate`."""
        if deterministic:
            return lambda obs, key: self.act(agent, obs)
        return lambda obs, key: self.explore(agent, obs, key)

    # ----- learning -----

    def update(self, agent: AgentState, batch: Transition, key: jax.Array,
               action_l2: Optional[jax.Array] = None) -> tuple[AgentState, dict]:
        """One BRO update on one batch, in the official order (critic first; the actors see
        the new critic; the duals use the statistics of this update's actor losses).
        `action_l2`: the actor's action L2 weight now (`action_l2_weight`); None: the config's."""
        c, o, fn = self.config, self.optimizers, self.losses
        key_next, key_actor, key_optimistic = jax.random.split(key, 3)
        batch = batch.replace(obs=self.normalize(agent, batch.obs),
                              next_obs=self.normalize(agent, batch.next_obs))
        temperature = jnp.exp(agent.temperature.params)

        mean, std = self.actor_net.apply(agent.actor.params, batch.next_obs)
        next_action, next_log_prob = networks.tanh_gaussian_sample(key_next, mean, std)
        next_quantiles = self.critic_net.apply(agent.target_critic, batch.next_obs, next_action)
        target = losses.critic_target(batch.reward, batch.mask, next_quantiles, next_log_prob,
                                      temperature, c.discount, c.pessimism)
        critic, info = apply_loss(agent.critic, o.critic, fn.critic, batch, target, name="critic")
        target_critic = optax.incremental_update(critic.params, agent.target_critic, c.tau)

        actor, info_actor = apply_loss(agent.actor, o.actor, fn.actor, batch, critic.params,
                                       temperature, key_actor, action_l2, name="actor")
        optimism = losses.bounded_exp(agent.optimism.params, c.dual_log_min, c.dual_log_max)
        kl_weight = losses.bounded_exp(agent.kl_weight.params, c.dual_log_min, c.dual_log_max)
        optimistic_actor, info_optimistic = apply_loss(
            agent.optimistic_actor, o.optimistic_actor, fn.optimistic_actor, batch, actor.params,
            critic.params, optimism, kl_weight, key_optimistic, name="optimistic_actor")

        kl_per_dim = info_optimistic["kl"] / self.action_size
        temperature_state, info_temperature = apply_loss(
            agent.temperature, o.temperature, fn.temperature, info_actor["entropy"])
        optimism_state, info_optimism = apply_loss(agent.optimism, o.optimism, fn.optimism,
                                                   kl_per_dim)
        kl_weight_state, info_kl_weight = apply_loss(agent.kl_weight, o.kl_weight, fn.kl_weight,
                                                     kl_per_dim)
        agent = AgentState(actor=actor, optimistic_actor=optimistic_actor, critic=critic,
                           target_critic=target_critic, temperature=temperature_state,
                           optimism=optimism_state, kl_weight=kl_weight_state,
                           obs_stats=agent.obs_stats)
        return agent, {**info, **info_actor, **info_optimistic, **info_temperature,
                       **info_optimism, **info_kl_weight}

    def updates(self, agent: AgentState, buffer: ReplayState, key: jax.Array,
                action_l2: Optional[jax.Array] = None) -> tuple[AgentState, dict]:
        """`updates_per_step` updates, each on its own uniform batch; info averaged over them."""
        def one(agent, key):
            key_sample, key_update = jax.random.split(key)
            batch = replay.sample(buffer, key_sample, self.config.batch_size)
            if self.batch_sharding is not None:
                batch = jax.lax.with_sharding_constraint(batch, self.batch_sharding)
            return self.update(agent, batch, key_update, action_l2)

        keys = jax.random.split(key, self.config.updates_per_step)
        agent, info = jax.lax.scan(one, agent, keys)
        return agent, jax.tree.map(jnp.mean, info)

    # ----- environment iterations -----

    def env_step(self, env_state: State, action: jax.Array,
                 key: jax.Array) -> tuple[State, Transition, dict]:
        """Steps the N envs, records the transitions, restarts the finished episodes."""
        next_state = self.envs.step(env_state, action)
        done = next_state.done
        termination = done * (1.0 - next_state.info["truncation"])
        transition = Transition(obs=env_state.obs, action=action, reward=next_state.reward,
                                mask=1.0 - termination, next_obs=next_state.obs)
        fresh = self.envs.reset(jax.random.split(key, self.config.num_envs))
        finished = jnp.sum(done)
        episodes = next_state.info["episode_metrics"]
        info = {"env_reward": jnp.mean(next_state.reward), "episodes_finished": finished,
                "episode_return": jnp.sum(done * episodes["sum_reward"]) / jnp.maximum(finished, 1.0),
                "episode_length": jnp.sum(done * episodes["length"]) / jnp.maximum(finished, 1.0)}
        # The env's own metrics (reward terms, falls), averaged over the N envs.
        info.update({f"env/{name}": jnp.mean(value) for name, value in next_state.metrics.items()})
        # Transitions the env flagged as diverged are counted, never stored or trained on.
        invalid = sum(next_state.metrics[name] for name in INVALID_METRICS
                      if name in next_state.metrics)
        info["valid"] = jnp.asarray(invalid == 0) & jnp.isfinite(next_state.reward)
        info["invalid_transitions"] = jnp.sum(~info["valid"]).astype(jnp.float32)
        info["done"] = done
        return tree_where(done > 0, fresh, next_state), transition, info

    def action_l2_weight(self, step: jax.Array) -> Optional[jax.Array]:
        """The action L2 weight of iteration `step` (0-based) under `action_l2_ramp_steps`;
        None without a ramp (the constant `action_l2`)."""
        c = self.config
        if not c.action_l2_ramp_steps:
            return None
        transitions = (step + 1).astype(jnp.float32) * c.num_envs
        return c.action_l2 * jnp.minimum(1.0, transitions / c.action_l2_ramp_steps)

    def maybe_reset(self, agent: AgentState, initial_params: AgentParams,
                    step: jax.Array) -> tuple[AgentState, jax.Array]:
        """The agent of iteration `step`: a fresh one at `initial_params` on the reset
        schedule, else `agent`; and whether it was reset."""
        reset = jnp.any(step == jnp.asarray(self.config.reset_iterations, jnp.int32))
        # A select, not a cond: under vmap over seeds a cond would run both branches anyway.
        return tree_where(reset, self.fresh_agent(initial_params, agent.obs_stats), agent), reset

    def train_step(self, state: LearnerState) -> tuple[LearnerState, dict]:
        """One iteration: act in the N envs (uniform random actions during the warm-up, then
        the optimistic actor), insert, reset the agent if the schedule says so, then
        `updates_per_step` updates (none during the warm-up)."""
        c = self.config
        key, key_random, key_action, key_reset, key_update = jax.random.split(state.key, 5)
        warming_up = state.step < c.warmup_iterations
        action = jnp.where(warming_up,
                           jax.random.uniform(key_random, (c.num_envs, self.action_size),
                                              minval=-1.0, maxval=1.0),
                           self.explore(state.agent, state.env_state.obs, key_action))
        env_state, transition, env_info = self.env_step(state.env_state, action, key_reset)
        valid, done, window = env_info.pop("valid"), env_info.pop("done"), state.window
        if window is not None:
            window, transition, valid = nstep.push(window, transition, done, valid, c.discount)
        buffer = replay.insert(state.replay, transition, valid)
        agent, reset = self.maybe_reset(self.observe(state.agent, state.env_state.obs),
                                        state.initial_params, state.step)

        action_l2 = self.action_l2_weight(state.step)

        def learn(agent):
            return self.updates(agent, buffer, key_update, action_l2)

        def wait(agent):
            _, info = jax.eval_shape(learn, agent)
            return agent, jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), info)

        # Unbatched, the cond skips the updates of the warm-up; under vmap over seeds it becomes
        # a select, and the warm-up's updates are computed and dropped (a short phase).
        agent, info = jax.lax.cond(warming_up, wait, learn, agent)
        state = state.replace(agent=agent, replay=buffer, env_state=env_state, key=key,
                              step=state.step + 1, window=window)
        if action_l2 is not None:
            info = {**info, "action_l2_weight": action_l2}
        return state, {**info, **env_info, "agent_reset": reset.astype(jnp.float32),
                       "warming_up": warming_up.astype(jnp.float32), "replay_size": buffer.size}

    def train(self, state: LearnerState, num_steps: int) -> tuple[LearnerState, dict]:
        """`num_steps` training iterations in one `lax.scan`; metrics stacked over them."""
        return jax.lax.scan(lambda s, _: self.train_step(s), state, None, length=num_steps)

    def env_steps(self, state: LearnerState) -> int:
        """Not jitted: transitions collected so far (a Python int, free of int32 overflow)."""
        return int(np.asarray(state.step).reshape(-1)[0]) * self.config.num_envs
