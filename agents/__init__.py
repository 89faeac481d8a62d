"""Learners: BRO and its on-device replay (`nil_jax.agents`)."""
