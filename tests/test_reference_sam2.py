"""SAM 2's code path in the ingest, with a tiny randomly initialised SAM 2.1 (hiera-t config at
256 px instead of 1024 px): no checkpoint exists offline, and random weights give meaningless
masks, so this checks the wiring (prompt from the simulator's mask, shapes, dtypes, metadata,
gaps filled), not mask quality; mask quality is checked on the weight-free segmenter against
ground truth (tests/test_reference_ingest.py). Skipped when `sam2` is not installed
(pip install -e '.[sam2]')."""

import numpy as np
import pytest

pytest.importorskip("sam2")
torch = pytest.importorskip("torch")

from nil_jax import envs  # noqa: E402
from nil_jax.references import ingest as ingest_lib  # noqa: E402
from nil_jax.references import sim_frames, synthetic  # noqa: E402
from nil_jax.references.video_io import resize_masks  # noqa: E402
from nil_jax.video import write_video  # noqa: E402

SMALL_SAM2 = ("++model.image_size=256",)  # 16x16 image features: fast on a CPU
FPS, SIZE, FRAMES = 25.0, 64, 3  # 3 frames at 25 fps = 9 frames at 100 Hz, one clip


def test_ingest_with_sam2(tmp_path):
    h1 = envs.load("h1")
    qpos = synthetic.walking_qpos(h1, np.arange(FRAMES) / FPS)
    path = write_video(tmp_path / "h1.mp4", sim_frames.render_agent(h1, qpos, SIZE, SIZE)[0], FPS)
    config = ingest_lib.IngestConfig(
        segmenter="sam2", sam2_overrides=SMALL_SAM2, interpolator="linear", encoder="none",
        min_source_frames=FRAMES, min_initial_iou=0.0, max_mask_gap=FRAMES)
    torch.manual_seed(0)  # the random SAM 2 weights
    bundle = ingest_lib.ingest(path, h1, config)
    assert bundle.frames.shape == (9, 224, 224, 3) and bundle.masks.shape == (9, 224, 224)
    assert bundle.frames.dtype == np.uint8 and bundle.masks.dtype == bool
    assert not bundle.frames[~bundle.masks].any()
    meta = bundle.metadata
    assert meta["segmenter"]["name"] == "sam2" and meta["segmenter"]["checkpoint"] is None
    assert "RANDOM" in meta["segmenter"]["note"]
    assert meta["segmenter"]["overrides"] == list(SMALL_SAM2)
    # SAM 2.1 returns the prompt on the prompted frame (use_mask_input_as_output_without_sam):
    # frame 0 is the simulator's e0 mask, scaled to the video (the prompt) and back.
    _, e0 = sim_frames.initial_frame(h1, 224, 224)
    e0 = resize_masks(resize_masks(e0[None], SIZE), 224)[0]
    iou = np.sum(bundle.masks[0] & e0) / np.sum(bundle.masks[0] | e0)
    assert iou > 0.9, iou
    # Random SAM 2 may lose the agent after frame 0; runs of empty frames were filled
    # (max_mask_gap allows all of them), so every frame has a mask.
    assert all(m.sum() > 0 for m in bundle.masks)
    print(f"SAM 2 (random, 256 px): frame-0 IoU with e0 {iou:.3f}, gaps filled "
          f"{meta['mask_gaps_filled']}, segmentation {meta['timings']['segment_s']:.1f} s")
