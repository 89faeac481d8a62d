"""Data-parallel training (nil_jax.parallel) on 8 virtual CPU devices against 1 device.

The whole NIL program (H1 on MJX, the silhouette renderer, the IoU reward, BRO with its replay)
trains the same total batch, 8 environments and 16-transition update batches, once on 1 device
and once split over 8, from the same seed. Splitting must not change what is computed: the
same actions, the same physics, the same sampled batches; only the order of floating-point
sums in the all-reduced gradients, and XLA's rounding of the per-environment physics at another
batch size, may differ. Tolerances after 8 updates (absolute below 1, relative above), with what
was measured when they were set: network parameters and duals 1e-6 (6e-8; one Adam step is up
to 3e-4, so a wrong gradient shows at once), robot states 1e-5 (3e-7), the replay 1e-4 (2e-5:
velocities), Adam's moments 1e-2 (7e-4: the optimistic actor's gradients are sums of large
terms that cancel, so their rounding shows most).

JAX fixes its device count when it starts, so the comparison runs in a child process with
XLA_FLAGS=--xla_force_host_platform_device_count=8 (this file is its script).
"""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

DEVICES = 8
TOLERANCE = {"params": 1e-6, "qpos": 1e-5, "replay": 1e-4, "agent": 1e-2}


def _differences(a, b) -> dict[str, float]:
    """Largest |a - b| / max(1, |b|) of every leaf (absolute below 1, relative above: Adam's
    second moments of the critic reach 1e8), by its path in the tree."""
    import jax

    def difference(x, y):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        return float(np.max(np.abs(x - y) / np.maximum(1.0, np.abs(y)))) if x.size else 0.0

    paths = jax.tree_util.tree_flatten_with_path(a)[0]
    return {jax.tree_util.keystr(path): difference(x, y)
            for (path, x), y in zip(paths, jax.tree.leaves(b))}


def _max_difference(a, b) -> float:
    return max(_differences(a, b).values())


def child(folder: pathlib.Path) -> dict:
    import jax
    from nil_jax import envs, parallel, training
    from nil_jax.agents import bro, checkpoint
    from nil_jax.references import bundle as bundle_lib
    from nil_jax.references import ingest as ingest_lib
    from nil_jax.references import synthetic

    assert len(jax.devices()) == DEVICES
    fast = ingest_lib.IngestConfig(segmenter="background", interpolator="linear", encoder="none",
                                   resolution=64)
    bundle, _ = synthetic.make(envs.load("h1"), folder,
                               synthetic.SyntheticConfig(seconds=0.3, video_size=64), fast)
    reference = bundle_lib.save(bundle, folder / "h1_walk.npz")
    agent = bro.preset("bro_fast", num_envs=8, batch_size=16, replay_capacity=64,
                       warmup_steps=16, critic_width=32, actor_width=32, num_quantiles=4,
                       normalize_observations=True)  # as the presets: statistics of all envs
    config = training.TrainConfig(reference=str(reference), references_dir=str(folder),
                                  backend="mjx", actuation="pd", pd_action_scale=0.3,
                                  render_size=16, encoder="none", agent=agent,
                                  chunk_iterations=3)
    out, states = {}, {}
    for devices in (1, DEVICES):
        started = time.perf_counter()
        setup = training.build(config, jax.devices()[:devices])
        state = training.init_or_resume(setup, folder / "none", resume=False)
        chunk = training.chunk_function(setup, config.chunk_iterations)
        for _ in range(2):  # 6 iterations: 2 of warm-up, 4 with updates
            state, metrics = chunk(state)
        states[devices] = state
        qpos = state.env_state.pipeline_state.qpos
        rows = state.replay.data.obs
        out[devices] = {
            "qpos_devices": len(qpos.sharding.device_set),
            "qpos_shard_shape": list(qpos.addressable_shards[0].data.shape),
            "replay_shard_rows": rows.addressable_shards[0].data.shape[0],
            "params_devices": len(jax.tree.leaves(state.agent.actor.params)[0].sharding.device_set),
            "critic_loss": float(metrics["critic_loss"]),
            "updates": int(state.agent.critic.opt_state[0].count),
            "seconds": time.perf_counter() - started,
        }
    one, many = states[1], states[DEVICES]
    params = lambda agent: [agent.actor.params, agent.optimistic_actor.params,
                            agent.critic.params, agent.target_critic, agent.temperature.params,
                            agent.optimism.params, agent.kl_weight.params]
    out["difference"] = {"params": _max_difference(params(one.agent), params(many.agent)),
                         "agent": _max_difference(one.agent, many.agent),
                         "qpos": _max_difference(one.env_state.pipeline_state.qpos,
                                                 many.env_state.pipeline_state.qpos),
                         "replay": _max_difference(one.replay, many.replay),
                         "step": int(one.step) - int(many.step),
                         "worst_params": sorted(_differences(one.agent, many.agent).items(),
                                                key=lambda item: -item[1])[:3]}
    # A checkpoint written on 8 devices restores onto 1, exactly.
    checkpoint.save(folder / "ckpt", many)
    setup_one = training.build(config, jax.devices()[:1])
    restored = checkpoint.restore(folder / "ckpt", setup_one.learner,
                                  shardings=setup_one.shardings)
    out["restored_difference"] = _max_difference(restored, many)
    out["restored_devices"] = len(restored.env_state.pipeline_state.qpos.sharding.device_set)
    try:
        training.build(dataclasses.replace(config, agent=bro.preset(
            "bro_fast", num_envs=6, batch_size=16, replay_capacity=64, warmup_steps=6)),
            jax.devices())
    except parallel.DeviceSplitError as e:
        out["split_error"] = str(e)
    return out


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    folder = tmp_path_factory.mktemp("parallel")
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES}",
               JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, __file__, str(folder)], env=env, capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_run_is_split_over_eight_devices(result):
    one, many = result["1"], result[str(DEVICES)]
    assert one["qpos_devices"] == 1 and many["qpos_devices"] == DEVICES
    assert one["qpos_shard_shape"][0] == 8 and many["qpos_shard_shape"][0] == 1  # 1 env each
    assert many["replay_shard_rows"] == 64 // DEVICES
    assert many["params_devices"] == DEVICES  # replicated
    assert one["updates"] == many["updates"] == 4 * 2  # 4 iterations x 2 updates (bro_fast)


def test_eight_devices_train_what_one_device_trains(result):
    difference = result["difference"]
    assert difference["step"] == 0
    for name, tolerance in TOLERANCE.items():
        assert difference[name] < tolerance, (name, difference)
    assert result["1"]["critic_loss"] == pytest.approx(result[str(DEVICES)]["critic_loss"],
                                                       rel=1e-4)


def test_checkpoints_move_between_device_counts(result):
    assert result["restored_devices"] == 1
    assert result["restored_difference"] == 0.0


def test_sizes_that_do_not_split_say_what_to_change(result):
    message = result["split_error"]
    assert "num_envs=6" in message and "multiple of 8" in message


if __name__ == "__main__":
    print(json.dumps(child(pathlib.Path(sys.argv[1]))))
