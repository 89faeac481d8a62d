"""BRO's networks (Nauman et al., "Bigger, Regularized, Optimistic", NeurIPS 2024), in Flax linen.

    BroNet      x --Dense-LN-ReLU--> h --depth x [ h + LN(Dense(ReLU(LN(Dense(h))))) ]--> h
    Critics     (obs, action) --2 independent BroNets (512 wide, 2 blocks)--> Dense(100)
                = 2 x 100 quantiles of the return, shape (2, B, 100)
    Actor       obs --BroNet (256 wide, 1 block)--> mean, std; log std squashed into [-10, 2]
    Optimistic  (obs, conservative mean) --BroNet--> shift (no bias, init scale 0.01);
    actor       mean = conservative mean + shift, std = conservative std x 0.75

Actions are tanh-squashed Gaussians (`tanh_gaussian_*`). Every Dense layer is orthogonally
initialized with scale sqrt(2), as in the official code, except the log-std head (scale 1) and
the optimistic shift (scale 0.01, so the optimistic actor starts at the conservative one).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

LOG_STD_MIN, LOG_STD_MAX = -10.0, 2.0


def orthogonal(scale: float = math.sqrt(2.0)):
    return nn.initializers.orthogonal(scale)


class BroNet(nn.Module):
    """The BRO trunk: a LayerNorm'd input layer, then `depth` residual blocks (no output head)."""

    width: int
    depth: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.LayerNorm()(nn.Dense(self.width, kernel_init=orthogonal())(x)))
        for _ in range(self.depth):
            residual = nn.relu(nn.LayerNorm()(nn.Dense(self.width, kernel_init=orthogonal())(x)))
            x = x + nn.LayerNorm()(nn.Dense(self.width, kernel_init=orthogonal())(residual))
        return x


class QuantileCritic(nn.Module):
    """One critic: (obs, action) -> `num_quantiles` quantiles of the return."""

    width: int = 512
    depth: int = 2
    num_quantiles: int = 100

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        x = BroNet(self.width, self.depth)(jnp.concatenate([obs, action], -1))
        return nn.Dense(self.num_quantiles, kernel_init=orthogonal())(x)


class DoubleCritic(nn.Module):
    """Two independent critics with their own parameters, evaluated as one batched network
    (`nn.vmap` over a leading axis of size `num_critics`): (..., ) -> (num_critics, ..., N)."""

    width: int = 512
    depth: int = 2
    num_quantiles: int = 100
    num_critics: int = 2

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        ensemble = nn.vmap(QuantileCritic, variable_axes={"params": 0},
                           split_rngs={"params": True}, in_axes=None, out_axes=0,
                           axis_size=self.num_critics)
        return ensemble(self.width, self.depth, self.num_quantiles)(obs, action)


class Actor(nn.Module):
    """The conservative actor: obs -> (mean, std) of the Gaussian before the tanh."""

    action_size: int
    width: int = 256
    depth: int = 1
    mean_init_scale: float = math.sqrt(2.0)  # the official init; small: start near a = 0

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = BroNet(self.width, self.depth)(obs)
        mean = nn.Dense(self.action_size, kernel_init=orthogonal(self.mean_init_scale))(x)
        raw = nn.Dense(self.action_size, kernel_init=orthogonal(1.0))(x)
        # A smooth squash into [LOG_STD_MIN, LOG_STD_MAX] instead of a clip: gradients never vanish.
        log_std = LOG_STD_MIN + (LOG_STD_MAX - LOG_STD_MIN) * 0.5 * (1.0 + jnp.tanh(raw))
        return mean, jnp.exp(log_std)


class OptimisticActor(nn.Module):
    """The exploration policy: shifts the conservative mean and narrows its std (BRO sec. 3)."""

    action_size: int
    width: int = 256
    depth: int = 1
    std_multiplier: float = 0.75
    shift_init_scale: float = 0.01

    @nn.compact
    def __call__(self, obs: jax.Array, mean: jax.Array,
                 std: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = BroNet(self.width, self.depth)(jnp.concatenate([obs, mean], -1))
        shift = nn.Dense(self.action_size, use_bias=False,
                         kernel_init=orthogonal(self.shift_init_scale))(x)
        return mean + shift, std * self.std_multiplier


def tanh_gaussian_sample(key: jax.Array, mean: jax.Array,
                         std: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(action, log-prob) of tanh(N(mean, std^2)), summed over the action dimensions."""
    noise = jax.random.normal(key, mean.shape, mean.dtype)
    pre_tanh = mean + std * noise
    gaussian = -0.5 * noise ** 2 - jnp.log(std) - 0.5 * math.log(2.0 * math.pi)
    # log |d tanh(u)/du| = log(1 - tanh(u)^2), in a form that is finite for large |u|.
    log_det = 2.0 * (math.log(2.0) - pre_tanh - jax.nn.softplus(-2.0 * pre_tanh))
    return jnp.tanh(pre_tanh), jnp.sum(gaussian - log_det, axis=-1)


def tanh_gaussian_mode(mean: jax.Array) -> jax.Array:
    """The deterministic action of evaluation (the official code samples with std x 0)."""
    return jnp.tanh(mean)
