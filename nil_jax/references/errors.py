"""Errors of the reference pipeline: each names the problem and what to do about it.

All derive from `ReferenceDataError`, so a caller can catch every bad-input case at once; each is
also a `ValueError` (bad input); `VideoReadError` is an `OSError` as well.
"""

from __future__ import annotations


class ReferenceDataError(ValueError):
    """Base class: a video or bundle that cannot become (or is not) a valid ReferenceBundle."""


class VideoReadError(ReferenceDataError, OSError):
    """The video file is missing, unreadable, corrupt or truncated."""


class MissingFpsError(ReferenceDataError):
    """The video file does not say its frame rate (pass it explicitly: fps=... / --fps)."""


class TooFewFramesError(ReferenceDataError):
    """Too few source frames, or fewer control-rate frames than one clip of the video encoder."""


class MaskGapError(ReferenceDataError):
    """The agent was not found on a run of consecutive frames longer than allowed."""


class BackgroundError(ReferenceDataError):
    """The weight-free segmenter needs a plain background, and this video has none."""


class EmbodimentMismatchError(ReferenceDataError):
    """The video or bundle shows another embodiment than the one asked for."""


class BundleFormatError(ReferenceDataError):
    """A bundle file has the wrong format version, keys, shapes, dtypes or metadata."""
