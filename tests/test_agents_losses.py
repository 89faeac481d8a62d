"""BRO's losses and dual updates on hand-computed values (agents/losses.py, agents/networks.py)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nil_jax import envs
from nil_jax.agents import bro, losses, networks

TOL = 1e-6
STEP_TOL = 2e-7  # float32 parameters near 0.1-1: one Adam step (3e-5) resolved to <1%


def test_quantile_midpoints():
    np.testing.assert_allclose(losses.quantile_midpoints(4), [0.125, 0.375, 0.625, 0.875])


def test_quantile_huber_loss_hand_computed():
    # Two predicted quantiles (tau 0.25, 0.75) at 0 and 1, two target samples 0.5 and 3.
    # td[i, j] = target_j - prediction_i = [[0.5, 3], [-0.5, 2]]
    # huber (kappa 1): [[0.125, 2.5], [0.125, 1.5]]
    # weight |tau_i - 1{td < 0}|: [[0.25, 0.25], [0.25, 0.75]]
    # weighted: [[0.03125, 0.625], [0.03125, 1.125]]; sum over i: [0.0625, 1.75]; mean: 0.90625
    td = jnp.asarray([[[0.5, 3.0], [-0.5, 2.0]]])
    taus = jnp.asarray([0.25, 0.75])
    assert float(losses.quantile_huber_loss(td, taus, 1.0)) == pytest.approx(0.90625, abs=TOL)
    # kappa 2 (the loss is divided by kappa): huber [[0.125, 4.0], [0.125, 2.0]] / 2
    # weighted: [[0.015625, 0.5], [0.015625, 0.75]]; sums [0.03125, 1.25]; mean 0.640625
    assert float(losses.quantile_huber_loss(td, taus, kappa=2.0)) == pytest.approx(0.640625,
                                                                                   abs=TOL)


def test_quantile_huber_gradient_pulls_quantiles_toward_their_levels():
    # d loss / d prediction_i = -mean_j tau-weighted clipped td: one prediction, levels 0.9.
    prediction = jnp.asarray([0.0])
    targets = jnp.asarray([-5.0, 5.0])  # both |td| > kappa: gradient -(tau) and +(1 - tau)

    def loss(p):
        return losses.quantile_huber_loss((targets[None, :] - p[:, None])[None],
                                          jnp.asarray([0.9]))

    # mean over targets of d/dp: target 5 -> -0.9 * 1, target -5 -> +0.1 * 1
    assert float(jax.grad(loss)(prediction)[0]) == pytest.approx((-0.9 + 0.1) / 2, abs=TOL)


def test_critic_loss_sums_both_critics():
    target = jnp.asarray([[0.5, 3.0]])
    quantiles = jnp.asarray([[[0.0, 1.0]], [[0.0, 1.0]]])  # (2 critics, B 1, N 2)
    taus = jnp.asarray([0.25, 0.75])
    assert float(losses.critic_loss(quantiles, target, taus, 1.0)) == pytest.approx(2 * 0.90625,
                                                                                    abs=TOL)


def test_critic_target_masks_terminal_states_only():
    next_quantiles = jnp.asarray([[[1.0, 3.0]] * 2, [[3.0, 5.0]] * 2])  # mean (2, 4)
    reward = jnp.asarray([1.0, 1.0])
    mask = jnp.asarray([1.0, 0.0])  # a bootstrapped and a terminal transition
    log_prob = jnp.asarray([-1.0, -1.0])
    target = losses.critic_target(reward, mask, next_quantiles, log_prob, jnp.asarray(0.5),
                                  discount=0.9, pessimism=0.0)
    # 1 + 0.9 * ((2, 4) - 0.5 * -1) = (3.25, 5.05); terminal: the reward alone
    np.testing.assert_allclose(target, [[3.25, 5.05], [1.0, 1.0]], atol=TOL)


def test_actor_loss_action_l2_penalizes_the_deterministic_action():
    log_prob = jnp.asarray([-1.0, -2.0])
    quantiles = jnp.asarray([[[1.0, 3.0], [0.0, 2.0]]] * 2)  # Q (2, 1)
    mean = jnp.asarray([[0.5, -1.0], [0.0, 2.0]])
    off = losses.actor_loss(log_prob, quantiles, jnp.asarray(0.1), 0.0, jnp.tanh(mean))
    on = losses.actor_loss(log_prob, quantiles, jnp.asarray(0.1), 0.0, jnp.tanh(mean), 3.0)
    # (0.1 * (-1, -2) - (2, 1)) averaged; the penalty 3 * mean_i tanh(mean_i)^2 averaged
    assert float(off) == pytest.approx(-1.65, abs=TOL)
    penalty = 3.0 * np.mean(np.square(np.tanh(np.asarray(mean))))
    assert float(on - off) == pytest.approx(penalty, abs=1e-5)
    # with Q flat in the action, its gradient moves every mean toward 0 (home for joint targets)
    grad = jax.grad(lambda m: losses.actor_loss(log_prob, quantiles, jnp.asarray(0.1), 0.0,
                                                jnp.tanh(m), 3.0))(mean)
    assert np.all(np.sign(grad) == np.sign(mean))
    # relative to Q: the weight is 3 * mean |Q| = 3 * 1.5, and Q's scale gets no gradient
    by_q = losses.actor_loss(log_prob, quantiles, jnp.asarray(0.1), 0.0, jnp.tanh(mean), 3.0,
                             action_l2_by_q=True)
    assert float(by_q - off) == pytest.approx(1.5 * penalty, abs=1e-5)
    q_grad = jax.grad(lambda q: losses.actor_loss(log_prob, q, jnp.asarray(0.1), 0.0,
                                                  jnp.tanh(mean), 3.0, True))(quantiles)
    np.testing.assert_allclose(q_grad, jax.grad(lambda q: losses.actor_loss(
        log_prob, q, jnp.asarray(0.1), 0.0, jnp.tanh(mean)))(quantiles), atol=1e-7)
    with pytest.raises(ValueError, match="action_l2"):
        bro.BroConfig(action_l2=-1.0)


def test_action_l2_mask_penalizes_only_the_masked_actions():
    log_prob = jnp.asarray([-1.0, -2.0])
    quantiles = jnp.asarray([[[1.0, 3.0], [0.0, 2.0]]] * 2)
    mean = jnp.asarray([[0.5, -1.0], [0.3, 2.0]])
    mask = jnp.asarray([0.0, 1.0])
    off = losses.actor_loss(log_prob, quantiles, jnp.asarray(0.1), 0.0, jnp.tanh(mean))
    on = losses.actor_loss(log_prob, quantiles, jnp.asarray(0.1), 0.0, jnp.tanh(mean), 3.0,
                           action_l2_mask=mask)
    # the weight keeps its meaning per action: 3 * (0 + tanh(m_1)^2) / 2, averaged over the batch
    penalty = 3.0 * np.mean(np.square(np.tanh(np.asarray(mean[:, 1]))) / 2)
    assert float(on - off) == pytest.approx(penalty, abs=1e-5)
    grad = jax.grad(lambda m: losses.actor_loss(log_prob, quantiles, jnp.asarray(0.1), 0.0,
                                                jnp.tanh(m), 3.0, action_l2_mask=mask))(mean)
    np.testing.assert_array_equal(grad[:, 0], 0.0)
    assert np.all(np.sign(grad[:, 1]) == np.sign(mean[:, 1]))
    env = envs.make("h1", backend="cpu")
    with pytest.raises(ValueError, match="action_l2_mask has shape"):
        bro.Bro(env, bro.BroConfig(action_l2=1.0), action_l2_mask=np.ones(3))


def test_action_l2_ramps_in_by_transitions():
    """The weight of iteration k (N envs): action_l2 * min(1, (k + 1) N / ramp steps)."""
    env = envs.make("h1", backend="cpu")
    ramped = bro.Bro(env, bro.BroConfig(num_envs=4, action_l2=15.0, action_l2_ramp_steps=100))
    weights = [float(ramped.action_l2_weight(jnp.asarray(k, jnp.int32))) for k in (0, 12, 24, 99)]
    np.testing.assert_allclose(weights, [0.6, 7.8, 15.0, 15.0], rtol=1e-6)
    assert bro.Bro(env, bro.BroConfig(action_l2=15.0)).action_l2_weight(jnp.asarray(3)) is None
    with pytest.raises(ValueError, match="action_l2_ramp_steps"):
        bro.BroConfig(action_l2_ramp_steps=-1)


def test_gaussian_kl_hand_computed():
    # KL(N(1, 1) || N(0, 2^2)) = log 2 + (1 + 1) / 8 - 1/2
    kl = losses.gaussian_kl(jnp.asarray([1.0]), jnp.asarray([1.0]), jnp.asarray([0.0]),
                            jnp.asarray([2.0]))
    assert float(kl) == pytest.approx(math.log(2.0) + 0.25 - 0.5, abs=TOL)


def test_dual_initial_values():
    for value in (1.0, 0.25):
        raw = losses.bounded_exp_inverse(value, -10.0, 7.5)
        assert float(losses.bounded_exp(jnp.asarray(raw), -10.0, 7.5)) == pytest.approx(value,
                                                                                       rel=1e-5)


def _dual_step(loss_fn, raw, *inputs, learning_rate):
    """One Adam(b1=0.5) step of a scalar dual, through the learner's own update helper."""
    optimizer = optax.adam(learning_rate, b1=0.5)
    trainable = bro.Trainable(jnp.asarray(raw), optimizer.init(jnp.asarray(raw)))
    grad = jax.grad(lambda p: loss_fn(p, *inputs)[0])(jnp.asarray(raw))
    new, info = bro.apply_loss(trainable, optimizer, loss_fn, *inputs)
    return float(grad), float(new.params), info


def test_dual_updates_hand_computed():
    config = bro.BroConfig()
    nets = (networks.DoubleCritic(), networks.Actor(4), networks.OptimisticActor(4))
    fn = losses.make_losses(*nets, config)
    lo, hi = config.dual_log_min, config.dual_log_max
    kl_per_dim = 0.15  # above the target 0.05 by 0.1

    # beta_opt = exp(lo + (hi - lo)/2 (1 + tanh p)); d beta/dp = beta (hi - lo)/2 (1 - tanh^2 p)
    p = losses.bounded_exp_inverse(1.0, lo, hi)
    dbeta = 1.0 * (hi - lo) / 2 * (1 - math.tanh(p) ** 2)
    grad, new, info = _dual_step(fn.optimism, p, kl_per_dim, learning_rate=3e-5)
    assert grad == pytest.approx(dbeta * 0.1, rel=1e-5)
    # Adam's first step is lr * g / (|g| + eps): beta_opt goes down by exactly lr in raw units.
    assert new == pytest.approx(p - 3e-5, abs=STEP_TOL)
    assert float(info["optimism"]) == pytest.approx(1.0, rel=1e-5)

    p = losses.bounded_exp_inverse(0.25, lo, hi)
    dbeta = 0.25 * (hi - lo) / 2 * (1 - math.tanh(p) ** 2)
    grad, new, info = _dual_step(fn.kl_weight, p, kl_per_dim, learning_rate=3e-5)
    assert grad == pytest.approx(-dbeta * 0.1, rel=1e-5)
    assert new == pytest.approx(p + 3e-5, abs=STEP_TOL)  # beta_kl goes up
    assert float(info["kl_weight"]) == pytest.approx(0.25, rel=1e-5)

    # Below the target both move the other way.
    _, new, _ = _dual_step(fn.optimism, 0.3, 0.0, learning_rate=3e-5)
    assert new == pytest.approx(0.3 + 3e-5, abs=STEP_TOL)

    # alpha: loss = exp(log alpha) (entropy - target); target entropy -|A|/2 = -2.
    grad, new, info = _dual_step(fn.temperature, 0.0, -1.5, learning_rate=3e-4)
    assert grad == pytest.approx(0.5, rel=1e-6)
    assert new == pytest.approx(-3e-4, abs=STEP_TOL)  # too much entropy: alpha goes down
    assert float(info["temperature"]) == pytest.approx(1.0)


def test_tanh_gaussian_log_prob_matches_change_of_variables():
    mean, std = jnp.asarray([[0.3, -1.0, 2.0]]), jnp.asarray([[0.5, 1.0, 0.2]])
    action, log_prob = networks.tanh_gaussian_sample(jax.random.PRNGKey(0), mean, std)
    u = jnp.arctanh(action)
    gaussian = -0.5 * ((u - mean) / std) ** 2 - jnp.log(std) - 0.5 * math.log(2 * math.pi)
    expected = jnp.sum(gaussian - jnp.log(1 - action ** 2), -1)
    np.testing.assert_allclose(log_prob, expected, rtol=1e-4)
    assert np.all(np.abs(action) < 1)


def test_networks_shapes_and_initial_optimistic_actor():
    obs, action = jnp.ones((5, 7)), jnp.zeros((5, 3))
    key = jax.random.PRNGKey(0)
    critic = networks.DoubleCritic(width=32, depth=2, num_quantiles=10)
    params = jax.jit(critic.init)(key, obs, action)  # one compile, not one per eager op
    q1, q2 = jax.jit(critic.apply)(params, obs, action)
    assert q1.shape == q2.shape == (5, 10)
    # 2 critics: input layer + 2 blocks x 2 layers + head, each Dense with its LayerNorms
    dense_kernels = [x for path, x in jax.tree_util.tree_leaves_with_path(params)
                     if "kernel" in jax.tree_util.keystr(path)]
    assert len(dense_kernels) == 6 and all(k.shape[0] == 2 for k in dense_kernels)
    assert not np.allclose(q1, q2)  # independent initializations

    actor, optimistic = networks.Actor(3, width=16), networks.OptimisticActor(3, width=16)

    @jax.jit
    def actors(key):
        mean, std = actor.apply(actor.init(key, obs), obs)
        return (mean, std) + optimistic.apply(optimistic.init(key, obs, mean, std), obs, mean, std)

    mean, std, mean_o, std_o = actors(key)
    assert np.all(std >= math.exp(networks.LOG_STD_MIN)) and np.all(std <= math.exp(2.0))
    np.testing.assert_allclose(std_o, 0.75 * std, rtol=1e-6)
    assert np.max(np.abs(mean_o - mean)) < 0.2  # the shift starts small (init scale 0.01)
