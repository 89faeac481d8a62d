"""Learners: BRO and its on-device replay (`nil_jax.agents`).

    bro.py         config (presets `bro`, `bro_fast`), learner state, the jitted training step
    networks.py    BroNet, quantile critics, tanh-Gaussian and optimistic actors
    losses.py      one function per loss (quantile Huber, critic, actors, temperature, duals)
    replay.py      the circular replay buffer on the device
    checkpoint.py  orbax save/restore of a whole run
"""
