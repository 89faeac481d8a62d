"""ReferenceBundle: a reference video as the arrays training reads, plus JSON metadata.

    frames      (T, H, W, 3) uint8   masked RGB on black, one frame per control step (100 Hz)
    masks       (T, H, W)    bool    the agent's silhouette
    embeddings  (T, D)       float32 optional: TimeSformer embedding of the clip ending at t
                                     (frames t-7..t, frame 0 repeated before the start)
    ground_truth_qpos  (T, nq) float64  optional (synthetic references): the poses shown
    ground_truth_masks (T, H, W) bool   optional (synthetic references): MuJoCo's segmentation
    metadata    dict (JSON): format version, embodiment, skill, prompt, source file hash, fps in
                and out, control dt, resolution, segmenter, interpolator, encoder id, ...

File format: one `.npz` file (numpy, zip-deflated) holding the arrays above and the metadata as
a UTF-8 JSON string in the uint8 array `metadata_json`. One file means one atomic write (a
temporary file renamed into place, `nil_jax.io_utils`): a reader never sees a half-written
bundle, and arrays and metadata cannot drift apart. `load` validates the format version, the
keys, every shape and dtype against each other and against the metadata, and (optionally) the
embodiment and encoder the caller expects. Host-side, not jitted.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pathlib
import zipfile
from typing import Any, Optional

import numpy as np

from nil_jax.io_utils import write_bytes
from nil_jax.references.errors import BundleFormatError, EmbodimentMismatchError

FORMAT = "nil-jax-reference"
FORMAT_VERSION = 1  # bump on any change of keys, shapes or metadata meaning
CLIP_FRAMES = 8  # TimeSformer clip length n_T (NIL: 8 frames at 224x224)
# Metadata every bundle has (more keys are allowed and kept).
REQUIRED_METADATA = ("format", "format_version", "embodiment", "skill", "prompt", "control_dt",
                     "fps_out", "resolution", "num_frames", "source", "segmenter",
                     "interpolator", "encoder")
_OPTIONAL_ARRAYS = ("embeddings", "ground_truth_qpos", "ground_truth_masks")


@dataclasses.dataclass(frozen=True, eq=False)
class ReferenceBundle:
    """One reference video at the control rate, ready for the NIL reward (host-side arrays)."""

    frames: np.ndarray  # (T, H, W, 3) uint8, masked RGB on black
    masks: np.ndarray  # (T, H, W) bool
    metadata: dict[str, Any]
    embeddings: Optional[np.ndarray] = None  # (T, D) float32, clip ending at each frame
    ground_truth_qpos: Optional[np.ndarray] = None  # (T, nq) float64, synthetic references
    ground_truth_masks: Optional[np.ndarray] = None  # (T, H, W) bool, synthetic references

    def __post_init__(self):
        validate(self)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def embodiment(self) -> str:
        return self.metadata["embodiment"]

    @property
    def camera(self) -> str:
        """The view of the tracking camera the video was made from (envs.embodiments.
        CAMERA_VIEWS); bundles that do not say are from the side view, the only one then."""
        return self.metadata.get("camera", "side")

    @property
    def control_dt(self) -> float:
        return float(self.metadata["control_dt"])

    @property
    def encoder_id(self) -> Optional[str]:
        """The checkpoint the embeddings come from; "random" for random weights; None: no
        embeddings (frames only)."""
        return self.metadata["encoder"].get("id")


def _fail(problem: str) -> None:
    raise BundleFormatError(f"Invalid reference bundle: {problem}")


def _check_array(name: str, array: Any, dtype: type, ndim: int) -> None:
    if not isinstance(array, np.ndarray):
        _fail(f"{name} is a {type(array).__name__}, not a numpy array")
    if array.dtype != dtype:
        _fail(f"{name} has dtype {array.dtype}, expected {np.dtype(dtype)}")
    if array.ndim != ndim:
        _fail(f"{name} has shape {array.shape}, expected {ndim} dimensions")


def validate(bundle: ReferenceBundle) -> None:
    """Raises BundleFormatError unless arrays and metadata are consistent. Not jitted."""
    meta = bundle.metadata
    missing = [k for k in REQUIRED_METADATA if k not in meta]
    if missing:
        _fail(f"metadata lacks {missing}")
    if meta["format"] != FORMAT:
        _fail(f"metadata format is {meta['format']!r}, expected {FORMAT!r}")
    if meta["format_version"] != FORMAT_VERSION:
        _fail(f"format version {meta['format_version']} is not supported (this nil-jax reads "
              f"version {FORMAT_VERSION}); ingest the video again with this version")
    _check_array("frames", bundle.frames, np.uint8, 4)
    _check_array("masks", bundle.masks, np.bool_, 3)
    t, h, w, c = bundle.frames.shape
    if c != 3:
        _fail(f"frames have {c} channels, expected 3 (RGB)")
    if bundle.masks.shape != (t, h, w):
        _fail(f"masks have shape {bundle.masks.shape}, frames {bundle.frames.shape}")
    if [h, w] != list(meta["resolution"]):
        _fail(f"frames are {h}x{w}, metadata says {meta['resolution']}")
    if t != meta["num_frames"]:
        _fail(f"{t} frames, metadata says {meta['num_frames']}")
    if t < CLIP_FRAMES:
        _fail(f"{t} frames, fewer than one {CLIP_FRAMES}-frame clip")
    if not np.isclose(meta["fps_out"] * meta["control_dt"], 1.0):
        _fail(f"fps_out {meta['fps_out']} is not 1 / control_dt ({meta['control_dt']})")
    if bundle.embeddings is not None:
        _check_array("embeddings", bundle.embeddings, np.float32, 2)
        if bundle.embeddings.shape[0] != t:
            _fail(f"{bundle.embeddings.shape[0]} embeddings for {t} frames")
        if not meta["encoder"].get("id"):
            _fail("embeddings are present but metadata names no encoder id")
        if not np.all(np.isfinite(bundle.embeddings)):
            _fail("embeddings contain NaN or inf")
    elif meta["encoder"].get("id"):
        _fail(f"metadata names encoder {meta['encoder']['id']!r} but there are no embeddings")
    if bundle.ground_truth_qpos is not None:
        _check_array("ground_truth_qpos", bundle.ground_truth_qpos, np.float64, 2)
        if bundle.ground_truth_qpos.shape[0] != t:
            _fail(f"{bundle.ground_truth_qpos.shape[0]} ground-truth poses for {t} frames")
    if bundle.ground_truth_masks is not None:
        _check_array("ground_truth_masks", bundle.ground_truth_masks, np.bool_, 3)
        if bundle.ground_truth_masks.shape != bundle.masks.shape:
            _fail(f"ground_truth_masks have shape {bundle.ground_truth_masks.shape}, masks "
                  f"{bundle.masks.shape}")


def check_embodiment(bundle: ReferenceBundle, embodiment: str, nq: Optional[int] = None,
                     camera: Optional[str] = None) -> None:
    """Raises EmbodimentMismatchError unless the bundle was made for `embodiment` (and, when
    given, from the camera view `camera`)."""
    if bundle.embodiment != embodiment:
        raise EmbodimentMismatchError(
            f"The reference bundle was made for embodiment {bundle.embodiment!r} "
            f"({bundle.metadata['prompt']!r}), not {embodiment!r}: its video shows another "
            f"robot. Ingest a video of {embodiment!r} (experiments/prepare_reference.py).")
    if nq is not None and bundle.ground_truth_qpos is not None \
            and bundle.ground_truth_qpos.shape[1] != nq:
        raise EmbodimentMismatchError(
            f"The bundle's ground-truth poses have {bundle.ground_truth_qpos.shape[1]} "
            f"coordinates, the {embodiment!r} model has nq={nq}: the model changed since the "
            "bundle was made.")
    if camera is not None and bundle.camera != camera:
        raise EmbodimentMismatchError(
            f"The reference bundle shows {embodiment!r} from the {bundle.camera!r} camera view; "
            f"this run renders the simulation from the {camera!r} view, so their masks would "
            f"never match. Train with --camera {bundle.camera}, or make the reference from the "
            f"{camera!r} view (experiments/prepare_reference.py stage1/ingest --camera {camera}).")


def to_bytes(bundle: ReferenceBundle) -> bytes:
    """The bundle as the bytes of one compressed .npz file."""
    arrays = {"frames": bundle.frames, "masks": bundle.masks}
    for name in _OPTIONAL_ARRAYS:
        if getattr(bundle, name) is not None:
            arrays[name] = getattr(bundle, name)
    text = json.dumps(bundle.metadata, indent=2, sort_keys=True)
    arrays["metadata_json"] = np.frombuffer(text.encode(), np.uint8)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def save(bundle: ReferenceBundle, path: str | os.PathLike) -> pathlib.Path:
    """Writes the bundle to `path` (.npz) atomically: temporary file, then rename."""
    validate(bundle)
    path = pathlib.Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"A reference bundle is one .npz file; got {path}")
    return write_bytes(path, to_bytes(bundle))


def load(path: str | os.PathLike, *, embodiment: Optional[str] = None,
         encoder_id: Optional[str] = None, nq: Optional[int] = None,
         camera: Optional[str] = None) -> ReferenceBundle:
    """Reads and validates a bundle; with `embodiment` (and `nq`, `camera`) / `encoder_id` also
    checks that it fits.

    `encoder_id`: the TimeSformer checkpoint training will use; the bundle's embeddings must
    come from the same one (a bundle without embeddings fails too)."""
    path = pathlib.Path(path)
    if path.is_file() and not zipfile.is_zipfile(path):  # numpy would speak of pickles
        raise BundleFormatError(
            f"{path} is not an .npz reference bundle (a zip archive of arrays): make one with "
            "experiments/prepare_reference.py, or pass a video of the robot by its own suffix "
            "(.mp4, .gif, ...).")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise BundleFormatError(f"{path} is not a readable .npz reference bundle ({e}).") from e
    unknown = set(arrays) - {"frames", "masks", "metadata_json", *_OPTIONAL_ARRAYS}
    lacking = {"frames", "masks", "metadata_json"} - set(arrays)
    if unknown or lacking:
        raise BundleFormatError(f"{path}: arrays {sorted(lacking)} missing, "
                                f"{sorted(unknown)} unexpected.")
    try:
        metadata = json.loads(arrays.pop("metadata_json").tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleFormatError(f"{path}: metadata is not valid JSON ({e}).") from e
    if not isinstance(metadata, dict):
        raise BundleFormatError(f"{path}: metadata is a {type(metadata).__name__}, not an object.")
    try:
        bundle = ReferenceBundle(metadata=metadata, **arrays)
    except BundleFormatError as e:
        raise BundleFormatError(f"{path}: {e}") from e
    if embodiment is not None:
        check_embodiment(bundle, embodiment, nq, camera)
    if encoder_id is not None and bundle.encoder_id != encoder_id:
        raise BundleFormatError(
            f"{path}: embeddings come from encoder {bundle.encoder_id!r}, training uses "
            f"{encoder_id!r}; ingest the video again with that encoder "
            "(experiments/prepare_reference.py embed).")
    return bundle


def clip_indices(num_frames: int, clip_frames: int = CLIP_FRAMES) -> np.ndarray:
    """(T, clip_frames) frame indices of the clip ending at each t: t-7..t, clamped at 0."""
    offsets = np.arange(-clip_frames + 1, 1)
    return np.maximum(np.arange(num_frames)[:, None] + offsets, 0)
