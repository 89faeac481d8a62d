"""What a run shows a person: reward curves, the side-by-side evaluation video, a metrics table.

    progress.csv (one row per training chunk) --plot_progress--> reward_curves.png
                                              --training_summary--> totals for metrics.json
    evaluation records of one policy (T, E) + the reference bundle
        --evaluation_video--> evaluation.mp4: reference frame | MuJoCo rendering of the
          simulation | masks (reference green, simulation red, overlap yellow)
    metrics.json's dict --metrics_table--> a markdown table (policy x metric)

Every file is written through a temporary file and renamed (`io_utils`, `video.write_video`).
"""

from __future__ import annotations

import csv
import io
import pathlib

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

from nil_jax.io_utils import write_bytes  # noqa: E402
from nil_jax.reward import regularizers, sources  # noqa: E402
from nil_jax.video import render_trajectory, resize_frames, write_video  # noqa: E402

# The curves of reward_curves.png: (title, CSV columns), columns absent from a run are skipped.
PANELS = (
    ("reward trained on, per step", ("env_reward",)),
    ("reward streams", ("env/reward/iou", "env/reward/video")),
    ("penalties", ("env/penalty/total",) + tuple(f"env/penalty/{t}" for t in regularizers.TERMS)),
    ("episodes", ("episode_length",)),
    ("env's task reward per step", ("env/reward/env",)),
    (f"pose tracking, exp(-mean |q - q*| / {sources.POSE_SCALE})", ("env/reward/pose",)),
    ("critic loss", ("critic_loss",)),
)


def read_progress(path: pathlib.Path) -> dict[str, np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    return {name: np.array([float(r[name]) if r.get(name) not in (None, "") else np.nan
                            for r in rows]) for name in rows[0]}


def plot_progress(csv_path: pathlib.Path, png_path: pathlib.Path) -> None:
    """A grid of one labelled panel per group of PANELS, sharing the env-step axis."""
    if not csv_path.exists():
        return
    columns = read_progress(csv_path)
    if not columns:
        return
    panels = [(title, [c for c in names if c in columns]) for title, names in PANELS]
    panels = [(title, names) for title, names in panels if names]
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 2.9 * nrows), sharex=True,
                             squeeze=False)
    for ax, (title, names) in zip(axes.flat, panels):
        for name in names:
            ax.plot(columns["env_steps"], columns[name], label=name.split("/")[-1])
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(names[0].split("/")[-1] if len(names) == 1 else "per step", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_thousands))
        if len(names) > 1:
            ax.legend(fontsize=7)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax in axes.flat[len(panels) - ncols:len(panels)]:  # the lowest panel of each column
        ax.xaxis.set_tick_params(labelbottom=True)
        ax.set_xlabel("environment steps", fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    write_bytes(png_path, buffer.getvalue())


def _thousands(value: float, _position=None) -> str:
    """Tick labels that stay short: 150k, 1.5M."""
    if abs(value) >= 1e6:
        return f"{value / 1e6:g}M"
    return f"{value / 1e3:g}k" if abs(value) >= 1e3 else f"{value:g}"


def training_summary(csv_path: pathlib.Path) -> dict[str, float]:
    """Totals over the whole run (every chunk, including those before a resume)."""
    columns = read_progress(csv_path) if csv_path.exists() else {}
    if not columns:
        return {}
    chunk_iterations = np.diff(columns["iteration"], prepend=0)
    summary = {"train_wall_s": float(columns["wall_s"][-1]),  # every session's
               "episodes_finished": float(np.nansum(columns["episodes_finished"]))}
    if "invalid_transitions" in columns:  # diverged physics or reward: never trained on
        summary["invalid_transitions"] = float(np.nansum(
            columns["invalid_transitions"] * chunk_iterations))
    tail = max(1, len(columns["env_reward"]) // 10)
    summary["env_reward_last_tenth"] = float(np.nanmean(columns["env_reward"][-tail:]))
    summary["env_reward_first_tenth"] = float(np.nanmean(columns["env_reward"][:tail]))
    return summary


def _grey_to_rgb(frames: np.ndarray) -> np.ndarray:
    return frames if frames.ndim == 4 else np.repeat(frames[..., None], 3, -1)


def mask_overlay(reference: np.ndarray, simulation: np.ndarray) -> np.ndarray:
    """(T, H, W) bool x 2 -> (T, H, W, 3) uint8: reference green, simulation red, both yellow."""
    out = np.zeros(reference.shape + (3,), np.uint8)
    out[..., 0] = simulation * 255
    out[..., 1] = reference * 255
    return out


def evaluation_video(setup, records: dict[str, np.ndarray], path: pathlib.Path,
                     size: int = 224, episode: int = 0, fps: float = 25.0) -> pathlib.Path:
    """The first evaluation episode beside the reference, at `fps` (every k-th control step)."""
    bundle, embodiment = setup.bundle, setup.embodiment
    length = records["qpos"].shape[0]
    stride = max(1, int(round(1.0 / (fps * embodiment.control_dt))))
    steps = np.arange(0, length, stride)
    reference = resize_frames(_grey_to_rgb(bundle.frames[steps + 1]), size)
    simulation = render_trajectory(embodiment.mj_model, records["qpos"][steps, episode],
                                   embodiment.camera_id, size, size)
    sim_masks = records["mask"][steps, episode].astype(np.uint8)
    ref_masks = np.asarray(setup.env.reference.masks)[steps + 1].astype(np.uint8)
    overlay = mask_overlay(resize_frames(ref_masks, size, nearest=True) > 0,
                           resize_frames(sim_masks, size, nearest=True) > 0)
    return write_video(path, np.concatenate([reference, simulation, overlay], axis=2),
                       fps=1.0 / (stride * embodiment.control_dt))


TABLE_METRICS = ("mean_iou", "mean_video", "pose_error_rad", "fall_rate", "steps_to_fall_mean",
                 "env_return_mean", "env_reward_per_step_mean", "success_rate",
                 "normalized_task_reward")


def metrics_table(metrics: dict) -> str:
    """Markdown: one row per evaluated policy, one column per metric it has."""
    policies = [name for name, value in metrics.items()
                if isinstance(value, dict) and "mean_iou" in value]
    columns = [c for c in TABLE_METRICS if any(c in metrics[p] for p in policies)]
    lines = ["| policy | " + " | ".join(columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for name in policies:
        cells = [f"{metrics[name][c]:.3f}" if c in metrics[name] else "" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
