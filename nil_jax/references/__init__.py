"""Reference videos: everything offline that turns a video into the arrays training reads.

    stage 1    sim_frames.initial_frame + sim_frames.prompt  -> e0.png, prompt for a generator
    ingest     ingest.ingest(video, embodiment, IngestConfig) -> ReferenceBundle
               (video_io: read + framing, segment: SAM 2 / background model + gap filling,
                resample: flow / linear to the control rate, embed: TimeSformer clip embeddings)
    synthetic  synthetic.make(embodiment, folder) -> procedural walk video + bundle + ground truth
    bundle     ReferenceBundle, bundle.save / bundle.load (one validated, versioned .npz)

The command line is experiments/prepare_reference.py. (`references.ingest` is the module; its
function is `references.ingest.ingest`.)
"""

from nil_jax.references.bundle import FORMAT_VERSION, ReferenceBundle, clip_indices, load, save
from nil_jax.references.errors import (BackgroundError, BundleFormatError,
                                       EmbodimentMismatchError, MaskGapError, MissingFpsError,
                                       ReferenceDataError, TooFewFramesError, VideoReadError)
from nil_jax.references.ingest import IngestConfig

__all__ = [
    "FORMAT_VERSION", "ReferenceBundle", "clip_indices", "load", "save", "IngestConfig",
    "BackgroundError", "BundleFormatError", "EmbodimentMismatchError", "MaskGapError",
    "MissingFpsError", "ReferenceDataError", "TooFewFramesError", "VideoReadError",
]
