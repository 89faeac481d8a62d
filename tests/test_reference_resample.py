"""Resampling to the control rate and filling mask gaps, on synthetic arrays with known answers."""

import numpy as np
import pytest

from nil_jax.references import resample, segment
from nil_jax.references.errors import MaskGapError

SIZE = 64


def disk_frames(centres_x, radius=8, size=SIZE):
    """A textured disk moving along x on black: frames (N, size, size, 3) and masks."""
    y, x = np.mgrid[:size, :size]
    masks = np.stack([(x - cx) ** 2 + (y - size / 2) ** 2 <= radius ** 2 for cx in centres_x])
    texture = np.stack([((x * 7 + y * 13) % 255), (x * 3) % 255, (y * 5) % 255], -1)
    frames = np.zeros(masks.shape + (3,), np.uint8)
    for t, cx in enumerate(centres_x):  # the texture moves with the disk
        shifted = np.roll(texture, int(round(cx - centres_x[0])), axis=1)
        frames[t][masks[t]] = shifted[masks[t]]
    return frames, masks


def test_source_positions_25_to_100_hz():
    positions = resample.source_positions(5, 25.0, 100.0)
    np.testing.assert_allclose(positions, np.arange(17) / 4)  # 4x, first and last coincide
    assert len(resample.source_positions(31, 30.0, 100.0)) == 101  # 1 s at 30 fps -> 101


def test_linear_resampling_blends_exactly():
    frames = np.stack([np.full((4, 4, 3), v, np.uint8) for v in (0, 100, 200)])
    masks = np.zeros((3, 4, 4), bool)
    masks[1:] = True
    out_frames, out_masks = resample.resample(frames, masks, 25.0, 100.0,
                                              resample.interpolate_linear)
    assert out_frames.shape == (9, 4, 4, 3) and out_masks.shape == (9, 4, 4)
    np.testing.assert_array_equal(out_frames[:, 0, 0, 0], [0, 25, 50, 75, 100, 125, 150, 175, 200])
    np.testing.assert_array_equal(out_masks[:, 0, 0], [0, 0, 1, 1, 1, 1, 1, 1, 1])  # >= 0.5


@pytest.mark.parametrize("name", ["flow", "linear"])
def test_moving_disk_interpolation(name):
    """A disk moving 12 px per source frame: flow puts the in-between disk where it is."""
    if name == "flow":
        pytest.importorskip("cv2")
    _, interpolate, info = resample.choose(name)
    assert info["name"] == name
    frames, masks = disk_frames([20.0, 32.0])
    _, truth = disk_frames([20.0, 23.0, 26.0, 29.0, 32.0])
    out_frames, out_masks = resample.resample(frames, masks, 25.0, 100.0, interpolate)
    ious = [np.sum(a & b) / np.sum(a | b) for a, b in zip(out_masks, truth)]
    print(f"{name}: IoU of interpolated disks {np.round(ious, 3)}")
    assert ious[0] == ious[-1] == 1.0
    if name == "flow":
        assert min(ious) > 0.95
    else:  # a cross-fade keeps the overlap only (disks 12 px apart, radius 8)
        assert min(ious) < 0.7


def test_fill_gaps():
    frames, masks = disk_frames(np.linspace(10, 50, 12))
    holed = masks.copy()
    holed[[0, 4, 5, 11]] = False  # a leading, an inner (2 frames) and a trailing gap
    filled, runs = segment.fill_gaps(frames, holed, 25.0, max_gap=2, min_pixels=5,
                                     interpolate=resample.interpolate_linear)
    assert runs == [(0, 0), (4, 5), (11, 11)]
    np.testing.assert_array_equal(filled[0], masks[1])  # held from the next found mask
    np.testing.assert_array_equal(filled[11], masks[10])
    assert filled[4].sum() > 50 and filled[5].sum() > 50
    np.testing.assert_array_equal(filled[[1, 2, 3, 6]], masks[[1, 2, 3, 6]])  # untouched

    holed[3] = False  # now frames 3-5: three frames
    with pytest.raises(MaskGapError, match=r"frames 3-5 \(0.12-0.20 s, 3 frames\)"):
        segment.fill_gaps(frames, holed, 25.0, max_gap=2, min_pixels=5,
                          interpolate=resample.interpolate_linear)
    with pytest.raises(MaskGapError, match="any of the 12 frames"):
        segment.fill_gaps(frames, np.zeros_like(masks), 25.0, max_gap=20, min_pixels=5,
                          interpolate=resample.interpolate_linear)


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="Unknown interpolator"):
        resample.choose("rife")
    with pytest.raises(ValueError, match="Unknown segmenter"):
        segment.choose("grabcut", None)
    assert segment.choose("auto", None) == "background"
