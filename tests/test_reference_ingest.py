"""Reference ingest end to end on small videos made here: synthetic walks rendered with MuJoCo
(ground truth known: masks checked against MuJoCo's segmentation), the weight-free segmenter,
both interpolators, landscape framing, the cached default reference, stage 1, the command
line, and every bad input of issue 5. SAM 2's code path: tests/test_reference_sam2.py."""

import hashlib
import json
import pathlib
import runpy

import imageio.v2 as imageio
import mujoco
import numpy as np
import pytest
from PIL import Image

from nil_jax import envs
from nil_jax.envs.embodiments import geom_lowest_z
from nil_jax.references import bundle as bundle_lib
from nil_jax.references import ingest as ingest_lib
from nil_jax.references import sim_frames, synthetic
from nil_jax.references.errors import (BackgroundError, EmbodimentMismatchError, MaskGapError,
                                       MissingFpsError, TooFewFramesError, VideoReadError)
from nil_jax.references.video_io import read_video
from nil_jax.video import write_video

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Mean mask IoU of the ingested reference (background segmenter, 25 -> 100 Hz) against MuJoCo's
# segmentation of the true poses, 112 px videos upscaled to 224 (issue 5). Measured values are
# printed by the tests and listed in README.md.
MIN_MASK_IOU = {"flow": 0.80, "linear": 0.75}
FPS, VIDEO_SIZE, SECONDS = 25.0, 112, 1.2
TINY = ingest_lib.IngestConfig(segmenter="background", interpolator="flow", encoder="random",
                               random_encoder="tiny")
FAST = ingest_lib.IngestConfig(segmenter="background", interpolator="linear", encoder="none")


@pytest.fixture(scope="module")
def h1():
    return envs.load("h1")


@pytest.fixture(scope="module")
def walk(h1, tmp_path_factory):
    """The synthetic H1 walk (1.2 s, 25 fps, 112 px) ingested with flow and a tiny encoder."""
    folder = tmp_path_factory.mktemp("walk")
    config = synthetic.SyntheticConfig(seconds=SECONDS, video_fps=FPS, video_size=VIDEO_SIZE)
    bundle, video = synthetic.make(h1, folder, config, TINY)
    return bundle, video


@pytest.fixture(scope="module")
def frames(h1):
    """Rendered frames of the walk (16 frames at 25 fps, 112 px) to build bad videos from."""
    qpos = synthetic.walking_qpos(h1, np.arange(16) / FPS)
    return sim_frames.render_agent(h1, qpos, VIDEO_SIZE, VIDEO_SIZE)[0]


def test_synthetic_walk_matches_ground_truth(walk, h1, tmp_path):
    bundle, video = walk
    num_source = round(SECONDS * FPS) + 1
    num = 4 * (num_source - 1) + 1  # 25 -> 100 Hz, first and last frames kept
    assert bundle.frames.shape == (num, 224, 224, 3) and bundle.frames.dtype == np.uint8
    assert bundle.masks.shape == (num, 224, 224) and bundle.masks.dtype == bool
    assert not bundle.frames[~bundle.masks].any()  # masked RGB on black
    assert bundle.frames[bundle.masks].mean() > 20  # the robot is not black
    meta = bundle.metadata
    assert (meta["fps_in"], meta["fps_out"], meta["control_dt"]) == (FPS, 100.0, 0.01)
    assert meta["source"]["sha256"] == hashlib.sha256(video.read_bytes()).hexdigest()
    assert meta["source"]["frames"] == num_source
    assert meta["segmenter"]["name"] == "background"
    assert meta["interpolator"]["name"] == "flow"
    assert meta["encoder"]["id"] == "random" and "RANDOM" in meta["encoder"]["note"]
    assert meta["prompt"] == ("The Unitree H1 humanoid robot agent is walking, camera follows "
                              "the agent.")
    assert meta["initial_iou"] > 0.8 and meta["mask_gaps_filled"] == []
    assert bundle.embeddings.shape == (num, 32) and np.isfinite(bundle.embeddings).all()
    assert np.std(bundle.embeddings, axis=0).mean() > 1e-4  # clips differ over time

    # Ground truth: the walk at the control rate, its masks from MuJoCo's segmentation.
    truth = bundle.ground_truth_qpos
    assert truth.shape == (num, h1.nq)
    x = truth[:, h1.root_xy_qpos[0]]
    np.testing.assert_allclose(np.diff(x) / 0.01, h1.spec.walk_speed, rtol=1e-9)
    ious = [np.sum(a & b) / np.sum(a | b) for a, b in zip(bundle.masks, bundle.ground_truth_masks)]
    print(f"h1 synthetic walk, flow: mask IoU vs ground truth mean {np.mean(ious):.3f} "
          f"min {np.min(ious):.3f}; timings {meta['timings']}")
    assert np.mean(ious) >= MIN_MASK_IOU["flow"]
    assert meta["synthetic"]["mask_iou_mean"] == pytest.approx(np.mean(ious))

    path = bundle_lib.save(bundle, tmp_path / "h1_walk.npz")
    loaded = bundle_lib.load(path, embodiment="h1", encoder_id="random", nq=h1.nq)
    np.testing.assert_array_equal(loaded.masks, bundle.masks)
    np.testing.assert_array_equal(loaded.ground_truth_qpos, truth)


def test_linear_interpolator_and_no_encoder(walk, h1):
    bundle = ingest_lib.ingest(walk[1], h1, FAST)
    assert bundle.metadata["interpolator"] == {"name": "linear"}
    assert bundle.embeddings is None and bundle.encoder_id is None
    assert "frames only" in bundle.metadata["encoder"]["note"]
    ious = [np.sum(a & b) / np.sum(a | b) for a, b in zip(bundle.masks, walk[0].ground_truth_masks)]
    print(f"h1 synthetic walk, linear: mask IoU vs ground truth mean {np.mean(ious):.3f}")
    assert np.mean(ious) >= MIN_MASK_IOU["linear"]


@pytest.mark.parametrize("name", sorted(synthetic.GAITS))
def test_gaits_stay_in_joint_ranges(name):
    body = envs.load(name)
    model = body.mj_model
    qpos = synthetic.walking_qpos(body, np.arange(200) * body.control_dt)  # 2 s at 100 Hz
    for j in range(model.njnt):
        if model.jnt_limited[j]:
            q = qpos[:, model.jnt_qposadr[j]]
            assert q.min() >= model.jnt_range[j, 0] - 1e-9 and q.max() <= model.jnt_range[j, 1]
    moving = [n for n in synthetic.pitch_offsets(synthetic.GAITS[name], np.zeros(1))]
    spread = [np.ptp(qpos[:, model.joint(n).qposadr[0]]) for n in moving]
    assert min(spread) > 0.05, dict(zip(moving, spread))  # every gait joint moves
    data = mujoco.MjData(model)
    for q in qpos[::20]:  # the lowest foot touches the floor
        data.qpos[:] = q
        mujoco.mj_kinematics(model, data)
        low = min(geom_lowest_z(model, data, g) for g in body.foot_geom_ids)
        assert abs(low) < 1e-6


@pytest.mark.parametrize("name", ["talos", "g1", "a1"])
def test_synthetic_reference_every_embodiment(name, tmp_path):
    body = envs.load(name)
    config = synthetic.SyntheticConfig(seconds=0.6, video_fps=FPS, video_size=VIDEO_SIZE)
    bundle, _ = synthetic.make(body, tmp_path, config, FAST)
    iou = bundle.metadata["synthetic"]["mask_iou_mean"]
    print(f"{name} synthetic walk, linear: mask IoU vs ground truth mean {iou:.3f}")
    assert bundle.ground_truth_qpos.shape == (61, body.nq)
    assert iou >= MIN_MASK_IOU["linear"]


def test_load_or_make_caches_the_default_reference(h1, tmp_path, monkeypatch):
    config = synthetic.SyntheticConfig(seconds=0.32, video_size=64)  # 9 frames at 25 fps
    made = synthetic.load_or_make(h1, tmp_path, config, FAST)
    [cached] = tmp_path.glob("h1_walk_*.npz")

    def fail(*args):
        raise AssertionError("made again")
    monkeypatch.setattr(synthetic, "make", fail)
    again = synthetic.load_or_make(h1, tmp_path, config, FAST)
    np.testing.assert_array_equal(again.masks, made.masks)
    cached.write_bytes(b"damaged")
    monkeypatch.undo()
    assert synthetic.load_or_make(h1, tmp_path, config, FAST).num_frames == made.num_frames == 33


def test_stage1_initial_frame(h1):
    frame, mask = sim_frames.initial_frame(h1, 96, 96)
    assert frame.shape == (96, 96, 3) and mask.shape == (96, 96) and 300 < mask.sum() < 96 * 40
    assert (frame[~mask] == 255).all()  # plain white background
    rgba, alpha_mask = sim_frames.initial_frame(h1, 96, 96, background=None)
    np.testing.assert_array_equal(rgba[..., 3], np.where(mask, 255, 0))
    np.testing.assert_array_equal(alpha_mask, mask)
    # Landscape: the central square is the square view (the camera's field of view is vertical).
    _, wide = sim_frames.initial_frame(h1, 96, 160)
    assert np.mean(wide[:, 32:128] == mask) > 0.995 and not wide[:, :20].any()
    with pytest.raises(ValueError, match="portrait"):
        sim_frames.initial_frame(h1, 160, 96)
    # The floor is in MuJoCo's picture but never in the mask.
    model = h1.mj_model
    data = mujoco.MjData(model)
    data.qpos[:] = h1.init_qpos
    mujoco.mj_forward(model, data)
    with mujoco.Renderer(model, 96, 96) as renderer:
        renderer.enable_segmentation_rendering()
        renderer.update_scene(data, camera=h1.camera_id)
        ids = renderer.render()[..., 0]
    planes = [g for g in range(model.ngeom) if model.geom_type[g] == mujoco.mjtGeom.mjGEOM_PLANE]
    floor = np.isin(ids, planes)
    assert floor.sum() > 1000 and not (floor & mask).any()
    assert sim_frames.prompt(h1, "sitting on a chair") == (
        "The Unitree H1 humanoid robot agent is sitting on a chair, camera follows the agent.")


def test_landscape_video_is_framed_like_the_simulation(h1, tmp_path):
    """A 16:9-like video (central square = the simulation view) ingests like a square one."""
    qpos = synthetic.walking_qpos(h1, np.arange(13) / FPS)
    write_video(tmp_path / "wide.mp4", sim_frames.render_agent(h1, qpos, 112, 192)[0], FPS)
    bundle = ingest_lib.ingest(tmp_path / "wide.mp4", h1, FAST)
    assert bundle.metadata["source"]["crop"] == [0, 40, 112]  # top, left, side
    truth = sim_frames.agent_masks(
        h1, synthetic.walking_qpos(h1, np.arange(bundle.num_frames) * h1.control_dt))
    ious = [np.sum(a & b) / np.sum(a | b) for a, b in zip(bundle.masks, truth)]
    assert np.mean(ious) >= MIN_MASK_IOU["linear"], np.mean(ious)


# --- bad inputs -------------------------------------------------------------------------------


def test_unreadable_videos(h1, tmp_path, frames):
    with pytest.raises(VideoReadError, match="does not exist"):
        ingest_lib.ingest(tmp_path / "missing.mp4", h1, FAST)
    (tmp_path / "junk.mp4").write_bytes(b"\x00\x01garbage" * 500)
    with pytest.raises(VideoReadError, match="unreadable, corrupt or truncated"):
        ingest_lib.ingest(tmp_path / "junk.mp4", h1, FAST)
    good = write_video(tmp_path / "good.mp4", frames, FPS).read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(good[:len(good) // 3])
    with pytest.raises(VideoReadError, match="corrupt or truncated"):
        ingest_lib.ingest(tmp_path / "truncated.mp4", h1, FAST)
    (tmp_path / "empty.webm").write_bytes(b"")
    with pytest.raises(VideoReadError):
        ingest_lib.ingest(tmp_path / "empty.webm", h1, FAST)


def test_too_few_frames(h1, tmp_path, frames):
    write_video(tmp_path / "five.mp4", frames[:5], FPS)
    with pytest.raises(TooFewFramesError, match="5 frames; at least 8"):
        ingest_lib.ingest(tmp_path / "five.mp4", h1, FAST)
    write_video(tmp_path / "fast.mp4", frames[:10], 200.0)  # 45 ms: 5 frames at 100 Hz
    with pytest.raises(TooFewFramesError, match="fewer than one 8-frame clip"):
        ingest_lib.ingest(tmp_path / "fast.mp4", h1, FAST)


def test_video_formats_and_missing_fps(h1, tmp_path, frames):
    imageio.mimwrite(tmp_path / "walk.webm", list(frames), fps=30, codec="libvpx",
                     macro_block_size=1)
    video = read_video(tmp_path / "walk.webm")
    assert video.fps == 30.0 and video.frames.shape == (16, VIDEO_SIZE, VIDEO_SIZE, 3)
    images = [Image.fromarray(f) for f in frames]
    images[0].save(tmp_path / "nodelay.gif", save_all=True, append_images=images[1:])
    with pytest.raises(MissingFpsError, match="does not state its frame rate"):
        ingest_lib.ingest(tmp_path / "nodelay.gif", h1, FAST)
    video = read_video(tmp_path / "nodelay.gif", fps=FPS)
    assert video.fps == FPS and video.frames.shape == (16, VIDEO_SIZE, VIDEO_SIZE, 3)
    images[0].save(tmp_path / "timed.gif", save_all=True, append_images=images[1:], duration=40)
    assert read_video(tmp_path / "timed.gif").fps == pytest.approx(25.0)


def test_empty_masks_short_gap_filled_long_gap_fails(h1, tmp_path, frames):
    blank = frames.copy()
    blank[6:8] = 255  # the agent vanishes for 2 frames
    write_video(tmp_path / "gap2.mp4", blank, FPS)
    bundle = ingest_lib.ingest(tmp_path / "gap2.mp4", h1, FAST)
    assert bundle.metadata["mask_gaps_filled"] == [[6, 7]]
    assert all(bundle.masks[k].sum() > 500 for k in range(24, 32))  # 100 Hz frames 24-31
    blank[5:11] = 255  # six frames
    write_video(tmp_path / "gap6.mp4", blank, FPS)
    with pytest.raises(MaskGapError, match=r"frames 5-10 \(0.20-0.40 s, 6 frames\)"):
        ingest_lib.ingest(tmp_path / "gap6.mp4", h1, FAST)


@pytest.fixture
def segmented_lengths(monkeypatch):
    """The number of frames the weight-free segmenter segmented, per call."""
    lengths, segment = [], ingest_lib.segment.iter_background_masks

    def spy(*args, **kwargs):
        lengths.append(0)
        for mask in segment(*args, **kwargs):
            lengths[-1] += 1
            yield mask
    monkeypatch.setattr(ingest_lib.segment, "iter_background_masks", spy)
    return lengths


def test_embodiment_mismatch_at_ingest(h1, tmp_path, segmented_lengths):
    """Another robot is refused as such, on the first frames, before the rest is segmented."""
    a1 = envs.load("a1")
    qpos = synthetic.walking_qpos(a1, np.arange(12) / FPS)
    write_video(tmp_path / "a1.mp4", sim_frames.render_agent(a1, qpos, 96, 96)[0], FPS)
    with pytest.raises(EmbodimentMismatchError, match="do not match.*another embodiment.*"
                       "--ingest.min-initial-iou for experiments/run.py"):
        ingest_lib.ingest(tmp_path / "a1.mp4", h1, FAST)
    assert segmented_lengths == [FAST.initial_frames, 1]  # the first frames, frame 0's diagnosis


def test_a_reframed_video_is_told_apart(h1, tmp_path, frames, segmented_lengths):
    """The right robot, shifted by the generator's camera: the same silhouette once aligned."""
    shifted = np.full_like(frames, 255)
    shifted[:, :, 30:] = frames[:, :, :-30]  # 30 of 112 px to the right
    write_video(tmp_path / "shifted.mp4", shifted, FPS)
    with pytest.raises(EmbodimentMismatchError, match=r"moved and scaled onto it they match "
                       r"\(IoU 0\.[6-9].*re-framed"):
        ingest_lib.ingest(tmp_path / "shifted.mp4", h1, FAST)
    assert segmented_lengths == [FAST.initial_frames, 1]


def test_large_videos_are_segmented_at_the_working_size(h1, tmp_path, segmented_lengths):
    """A 448 px video is segmented at 224 px (a quarter of the pixels), and its masks are
    those of the simulator's segmentation."""
    qpos = synthetic.walking_qpos(h1, np.arange(10) / FPS)
    video, truth = sim_frames.render_agent(h1, qpos, 448, 448)
    write_video(tmp_path / "large.mp4", video, FPS)
    bundle = ingest_lib.ingest(tmp_path / "large.mp4", h1, FAST)
    assert bundle.metadata["segmenter"]["side"] == 224
    assert segmented_lengths == [10]  # each frame once, the first ones checked on the way
    truth = ingest_lib.video_io.resize_masks(truth, 224)
    ious = [np.sum(a & b) / np.sum(a | b) for a, b in zip(bundle.masks[::4], truth)]
    # Shrunk by area averaging: 0.955 here; Pillow's antialiased bilinear smeared the edges
    # into masks 14% too large (0.875).
    assert np.mean(ious) > 0.92, ious


def test_background_that_is_not_plain(h1, tmp_path, frames):
    noisy = frames.copy()
    rng = np.random.default_rng(0)
    white = (noisy == 255).all(-1)
    noisy[white] = rng.integers(0, 256, (white.sum(), 3))
    write_video(tmp_path / "noisy.mp4", noisy, FPS)
    with pytest.raises(BackgroundError, match="not plain"):
        ingest_lib.ingest(tmp_path / "noisy.mp4", h1, FAST)


# --- command line -----------------------------------------------------------------------------


def test_command_line(walk, tmp_path, capsys):
    main = runpy.run_path(str(ROOT / "experiments" / "prepare_reference.py"))["main"]
    assert main(["stage1", "--embodiment", "g1", "--out", str(tmp_path / "s1"),
                     "--height", "64", "--transparent"]) == 0
    e0 = np.asarray(Image.open(tmp_path / "s1" / "g1_e0.png"))
    assert e0.shape == (64, 64, 4) and e0[..., 3].any()
    assert (tmp_path / "s1" / "g1_prompt.txt").read_text() == (
        "The Unitree G1 humanoid robot agent is walking, camera follows the agent.\n")
    out = tmp_path / "h1.npz"
    assert main(["ingest", "--video", str(walk[1]), "--embodiment", "h1", "--out", str(out),
                     "--segmenter", "background", "--interpolator", "linear",
                     "--encoder", "none", "--skill", "strolling"]) == 0
    assert bundle_lib.load(out).metadata["skill"] == "strolling"
    assert main(["embed", "--bundle", str(out), "--encoder", "random",
                     "--random-encoder", "tiny"]) == 0
    assert bundle_lib.load(out).embeddings.shape[1] == 32
    capsys.readouterr()
    assert main(["info", "--bundle", str(out)]) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed[:printed.rindex("}") + 1])["encoder"]["id"] == "random"
    # A synthetic skill reference: the scene's motion, its skill recorded, ground truth kept.
    assert main(["synthetic", "--embodiments", "h1", "--skill", "sit", "--out",
                 str(tmp_path / "synthetic"), "--seconds", "0.4", "--video-size", "64",
                 "--resolution", "64", "--interpolator", "linear", "--encoder", "none"]) == 0
    sit = bundle_lib.load(tmp_path / "synthetic" / "h1_sit.npz")
    assert sit.metadata["skill"] == "sit" and sit.ground_truth_qpos is not None
    for flags, message in ((["--skill", "sti"], "not 'sti'"),
                           (["--skill", "sit", "--embodiments", "h1", "a1"], "not a1")):
        with pytest.raises(SystemExit, match=message):
            main(["synthetic", *flags, "--out", str(tmp_path / "refused")])
    assert not (tmp_path / "refused").exists()
    (tmp_path / "bad.mp4").write_bytes(b"nope")
    assert main(["ingest", "--video", str(tmp_path / "bad.mp4"), "--embodiment", "h1",
                     "--out", str(tmp_path / "bad.npz")]) == 2
    assert "corrupt" in capsys.readouterr().err
