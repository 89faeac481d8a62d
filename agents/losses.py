"""BRO's losses, one small pure function each (the official code's `critic.py`, `actor.py`,
`temperature.py`), and `make_losses`, which binds them to the networks.

One BRO update (`bro.Bro.update`) applies them in this order, each with its own optimizer:

    critic_target       r + gamma * mask * (mean of the 2 target critics' quantiles
                        - alpha * log pi(a'|s')), a' ~ conservative actor(s')
    critic              quantile Huber loss of both critics against that target
    actor               alpha * log pi(a|s) - mean Q(s, a) + action_l2 * mean_i m_i tanh(mu_i(s))^2,
                        a ~ conservative actor (new critic), mu its mean, m the per-action
                        mask (default all ones); with action_l2_by_q the weight is
                        action_l2 * mean |Q| (a constant)
    optimistic_actor    -(mean Q + beta_opt * |Q1 - Q2| / 2) + beta_kl * KL(optimistic || cons.)
    temperature         alpha * (entropy - target entropy)                        (dual: alpha)
    optimism            (beta_opt - pessimism) * (KL / |A| - KL target)        (dual: beta_opt)
    kl_weight           -beta_kl * (KL / |A| - KL target)                       (dual: beta_kl)

Quantile axes: critic outputs are (2 critics, B, N quantiles); a TD error matrix is
(B, N predicted, N target), and the quantile Huber loss sums over the predicted quantiles and
averages over the batch and the target samples, as the official code does.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from nil_jax.agents import networks


def quantile_midpoints(num_quantiles: int) -> np.ndarray:
    """tau_i = (2i + 1) / 2N, the quantile levels the critic outputs estimate."""
    return (np.arange(num_quantiles, dtype=np.float32) + 0.5) / num_quantiles


def huber(x: jax.Array, kappa: float = 1.0) -> jax.Array:
    return jnp.where(jnp.abs(x) <= kappa, 0.5 * x ** 2, kappa * (jnp.abs(x) - 0.5 * kappa))


def quantile_huber_loss(td_errors: jax.Array, taus: jax.Array, kappa: float = 1.0) -> jax.Array:
    """QR-DQN's loss (Dabney et al. 2018, eq. 10). td_errors (B, N predicted, M target samples)
    = target_j - prediction_i; taus (N,) the levels of the predicted quantiles."""
    below = jax.lax.stop_gradient((td_errors < 0).astype(td_errors.dtype))
    weight = jnp.abs(taus[:, None] - below)
    return (weight * huber(td_errors, kappa) / kappa).sum(axis=1).mean()


def bounded_exp(raw: jax.Array, log_min: float, log_max: float) -> jax.Array:
    """The official code's parametrization of the duals beta_opt and beta_kl: a tanh-squashed
    log value, so that a dual stays within [exp(log_min), exp(log_max)]."""
    return jnp.exp(log_min + (log_max - log_min) * 0.5 * (1.0 + jnp.tanh(raw)))


def bounded_exp_inverse(value: float, log_min: float, log_max: float) -> float:
    """The raw parameter whose `bounded_exp` is `value` (the duals' initial parameters)."""
    return float(np.arctanh((np.log(value) - log_min) / ((log_max - log_min) * 0.5) - 1.0))


def gaussian_kl(mean_p: jax.Array, std_p: jax.Array, mean_q: jax.Array,
                std_q: jax.Array) -> jax.Array:
    """KL(N(mean_p, std_p^2) || N(mean_q, std_q^2)), summed over the last axis."""
    return (jnp.log(std_q / std_p) + (std_p ** 2 + (mean_p - mean_q) ** 2) / (2.0 * std_q ** 2)
            - 0.5).sum(-1)


def ensemble_value(quantiles: jax.Array, spread_weight: float) -> jax.Array:
    """mean(Q1, Q2) + spread_weight * |Q1 - Q2| / 2 per quantile: (2, B, N) -> (B, N).
    spread_weight = -pessimism gives BRO's lower bound, +beta_opt its optimistic upper bound."""
    return quantiles.mean(0) + spread_weight * jnp.abs(quantiles[0] - quantiles[1]) / 2.0


def critic_target(reward: jax.Array, mask: jax.Array, next_quantiles: jax.Array,
                  next_log_prob: jax.Array, temperature: jax.Array, discount: float,
                  pessimism: float) -> jax.Array:
    """Soft distributional TD target (B, N). mask = 1 - termination: truncated episodes
    bootstrap, terminated ones do not."""
    next_value = ensemble_value(next_quantiles, -pessimism) - temperature * next_log_prob[:, None]
    return reward[:, None] + discount * mask[:, None] * next_value


def critic_loss(quantiles: jax.Array, target: jax.Array, taus: jax.Array,
                kappa: float) -> jax.Array:
    """Sum over the critics of the quantile Huber loss against the shared target (B, N)."""
    td_errors = target[None, :, None, :] - quantiles[..., :, None]  # (2, B, N pred, N target)
    return jax.vmap(quantile_huber_loss, (0, None, None))(td_errors, taus, kappa).sum()


def actor_loss(log_prob: jax.Array, quantiles: jax.Array, temperature: jax.Array,
               pessimism: float, deterministic_action: jax.Array,
               action_l2: float = 0.0, action_l2_by_q: bool = False,
               action_l2_mask: Optional[jax.Array] = None) -> jax.Array:
    """deterministic_action (B, |A|) = tanh(mean): the action evaluation takes, penalized by
    action_l2 * the mean over actions of its square (0 in the official code), each action's
    square times its entry of action_l2_mask (|A|,) (None: every action). With action_l2_by_q
    the weight is action_l2 * the batch's mean |Q|, held constant (TD3+BC's normalizer): the
    penalty keeps its share of the loss whatever the reward's scale, and is small while the
    critic still expects early falls."""
    q = ensemble_value(quantiles, -pessimism).mean(-1)
    weight = action_l2 * (jax.lax.stop_gradient(jnp.abs(q).mean()) if action_l2_by_q else 1.0)
    square = jnp.square(deterministic_action)
    if action_l2_mask is not None:
        square = square * action_l2_mask
    penalty = weight * square.mean(-1)
    return (temperature * log_prob - q + penalty).mean()


def optimistic_actor_loss(quantiles: jax.Array, kl: jax.Array, optimism: jax.Array,
                          kl_weight: jax.Array) -> jax.Array:
    q_upper = ensemble_value(quantiles, optimism).mean(-1)
    return -q_upper.mean() + kl_weight * kl.mean()


def temperature_loss(log_temperature: jax.Array, entropy: jax.Array,
                     target_entropy: float) -> jax.Array:
    return jnp.exp(log_temperature) * (entropy - target_entropy)


def optimism_loss(optimism: jax.Array, kl_per_dim: jax.Array, kl_target: float,
                  pessimism: float) -> jax.Array:
    """Lowers beta_opt while the optimistic policy strays further than the KL target."""
    return (optimism - pessimism) * (kl_per_dim - kl_target)


def kl_weight_loss(kl_weight: jax.Array, kl_per_dim: jax.Array, kl_target: float) -> jax.Array:
    """Raises beta_kl while the optimistic policy strays further than the KL target."""
    return -kl_weight * (kl_per_dim - kl_target)


class Losses(NamedTuple):
    """Each loss as `(params, *inputs) -> (loss, info)`, differentiated in its first argument."""

    critic: Callable
    actor: Callable
    optimistic_actor: Callable
    temperature: Callable
    optimism: Callable
    kl_weight: Callable


def make_losses(critic_net: networks.DoubleCritic, actor_net: networks.Actor,
                optimistic_net: networks.OptimisticActor, config,
                action_l2_mask: Optional[np.ndarray] = None) -> Losses:
    """Binds the losses to the networks, to `config` (a `bro.BroConfig`) and to the actions
    the action L2 penalty applies to (`action_l2_mask` (|A|,), None: all)."""
    mask = None if action_l2_mask is None else jnp.asarray(action_l2_mask, jnp.float32)
    taus = jnp.asarray(quantile_midpoints(config.num_quantiles))
    action_size = actor_net.action_size
    target_entropy = (-action_size / 2.0 if config.target_entropy is None
                      else config.target_entropy)

    def critic(params, batch, target):
        quantiles = critic_net.apply(params, batch.obs, batch.action)
        loss = critic_loss(quantiles, target, taus, config.kappa)
        return loss, {"critic_loss": loss, "q_mean": quantiles.mean(),
                      "q_std": quantiles.mean(-1).std(), "reward_mean": batch.reward.mean()}

    def actor(params, batch, critic_params, temperature, key, action_l2=None):
        mean, std = actor_net.apply(params, batch.obs)
        action, log_prob = networks.tanh_gaussian_sample(key, mean, std)
        quantiles = critic_net.apply(critic_params, batch.obs, action)
        deterministic = networks.tanh_gaussian_mode(mean)
        loss = actor_loss(log_prob, quantiles, temperature, config.pessimism, deterministic,
                          config.action_l2 if action_l2 is None else action_l2,
                          config.action_l2_by_q, mask)
        return loss, {"actor_loss": loss, "entropy": -log_prob.mean(), "actor_std": std.mean(),
                      "action_square": jnp.square(deterministic).mean()}

    def optimistic_actor(params, batch, actor_params, critic_params, optimism, kl_weight, key):
        mean_c, std_c = actor_net.apply(actor_params, batch.obs)
        mean_o, std_o = optimistic_net.apply(params, batch.obs, mean_c, std_c)
        action, _ = networks.tanh_gaussian_sample(key, mean_o, std_o)
        quantiles = critic_net.apply(critic_params, batch.obs, action)
        # The official KL compares the means only: std_o / std_multiplier is std_c.
        kl = gaussian_kl(mean_o, std_o / config.std_multiplier, mean_c, std_c)
        loss = optimistic_actor_loss(quantiles, kl, optimism, kl_weight)
        return loss, {"optimistic_actor_loss": loss, "kl": kl.mean(),
                      "optimistic_std": std_o.mean(),
                      "q_upper_spread": (jnp.abs(quantiles[0] - quantiles[1]) / 2.0).mean()}

    def temperature(log_temperature, entropy):
        loss = temperature_loss(log_temperature, entropy, target_entropy)
        return loss, {"temperature": jnp.exp(log_temperature), "temperature_loss": loss}

    def bounded(raw):
        return bounded_exp(raw, config.dual_log_min, config.dual_log_max)

    def optimism(raw, kl_per_dim):
        loss = optimism_loss(bounded(raw), kl_per_dim, config.kl_target, config.pessimism)
        return loss, {"optimism": bounded(raw)}

    def kl_weight(raw, kl_per_dim):
        loss = kl_weight_loss(bounded(raw), kl_per_dim, config.kl_target)
        return loss, {"kl_weight": bounded(raw)}

    return Losses(critic, actor, optimistic_actor, temperature, optimism, kl_weight)
