"""The NIL reward: silhouette renderer, mask IoU, TimeSformer, regularizers (`nil_jax.reward`)."""
