"""Reference videos, offline: `python experiments/prepare_reference.py COMMAND [--flags]`.

    stage1     render an embodiment's initial frame e0 (background removed) and print the
               prompt, for any image-to-video generator (Kling, Runway, an open model, ...)
    ingest     a generated video -> ReferenceBundle (.npz): segment, resample to 100 Hz, frame
               at 224 x 224, TimeSformer clip embeddings (when weights exist)
    synthetic  procedural walks rendered with MuJoCo, ingested the same way, with ground truth
    embed      (re)compute a bundle's embeddings, e.g. once TimeSformer weights are available
    info       print a bundle's metadata and arrays

Examples:
    python experiments/prepare_reference.py stage1 --embodiment h1 --out references/stage1
    python experiments/prepare_reference.py ingest --video kling_h1.mp4 --embodiment h1 \\
        --out references/h1_walk.npz --segmenter sam2 --sam2-checkpoint sam2.1_hiera_tiny.pt
    python experiments/prepare_reference.py synthetic --embodiments h1 talos g1 a1
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import sys
from typing import Annotated, Literal, Optional

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; must precede `import mujoco`

import imageio.v3 as iio  # noqa: E402
import numpy as np  # noqa: E402
import tyro  # noqa: E402

from nil_jax import envs  # noqa: E402
from nil_jax.io_utils import write_bytes, write_text  # noqa: E402
from nil_jax.references import bundle as bundle_lib  # noqa: E402
from nil_jax.references import ingest as ingest_lib  # noqa: E402
from nil_jax.references import sim_frames, synthetic as synthetic_lib  # noqa: E402
from nil_jax.references.errors import ReferenceDataError  # noqa: E402

Flat = tyro.conf.OmitArgPrefixes  # --segmenter, not --config.segmenter


def _png(image: np.ndarray) -> bytes:
    return iio.imwrite("<bytes>", image, extension=".png")


def stage1(embodiment: str = "h1", skill: str = sim_frames.DEFAULT_SKILL,
           out: str = "references/stage1", height: int = 224, width: Optional[int] = None,
           transparent: bool = False, shadows: bool = True,
           background: tuple[int, int, int] = sim_frames.DEFAULT_BACKGROUND,
           camera: Literal["side", "oblique"] = "side") -> None:
    """Write <out>/<name>_e0.png (+ _e0_mask.png, _prompt.txt) and print the prompt.

    SKILL: free text for the prompt, or a skill scene (sit, hang, balance): the robot is then
    drawn in its scene's start pose with the scene's objects (the mask is the robot's alone),
    and <name> is <embodiment>_<skill> instead of <embodiment>.
    width > height (e.g. 1280 x 720 for 16:9 generators) keeps the simulation view as the
    central square. --transparent writes RGBA with alpha 0 around the robot. --camera: the
    tracking camera's view (side or oblique); ingest and train with the same view."""
    scene = skill if skill in envs.SKILLS else None
    body = envs.load(embodiment, skill=scene, camera=camera)
    frame, mask = sim_frames.initial_frame(body, height, width or height,
                                           None if transparent else background, shadows)
    folder = pathlib.Path(out)
    text = sim_frames.prompt(body, skill)
    name = embodiment if scene is None else f"{embodiment}_{scene}"
    write_bytes(folder / f"{name}_e0.png", _png(frame))
    write_bytes(folder / f"{name}_e0_mask.png", _png(mask.astype(np.uint8) * 255))
    write_text(folder / f"{name}_prompt.txt", text + "\n")
    print(f"initial frame: {folder / f'{name}_e0.png'}")
    print(f"prompt: {text}")


def ingest(video: str, embodiment: str, out: str,
           config: Annotated[ingest_lib.IngestConfig, Flat] = ingest_lib.IngestConfig(),
           camera: Literal["side", "oblique"] = "side") -> None:
    """Turn a generated video of EMBODIMENT into a ReferenceBundle written to OUT (.npz). A
    skill scene's video (--skill sit|hang|balance) is checked against that scene's e0;
    --camera: the view its e0 was rendered from (stage1 --camera)."""
    scene = config.skill if config.skill in envs.SKILLS else None
    bundle = ingest_lib.ingest(video, envs.load(embodiment, skill=scene, camera=camera), config)
    path = bundle_lib.save(bundle, out)
    _summary(bundle, path)


def synthetic(embodiments: tuple[str, ...] = ("h1", "talos", "g1", "a1"),
              out: str = "references",
              config: Annotated[synthetic_lib.SyntheticConfig, Flat] =
              synthetic_lib.SyntheticConfig(),
              ingest_config: Annotated[ingest_lib.IngestConfig, Flat] =
              ingest_lib.IngestConfig(segmenter="background"),
              camera: Literal["side", "oblique"] = "side") -> None:
    """Procedural walks: <out>/<name>_walk.mp4 and <out>/<name>_walk.npz with ground truth.
    --skill sit|hang|balance: that skill's key-pose motion in its scene instead
    (<name>_<skill>.*; H1 and G1). --camera: the tracking camera's view (oblique: the files
    end in _oblique)."""
    skill = ingest_config.skill
    scene = skill if skill in envs.SKILLS else None
    if scene is None and skill not in ("walk", sim_frames.DEFAULT_SKILL):
        raise SystemExit(f"synthetic makes the walk (--skill {sim_frames.DEFAULT_SKILL}) or a "
                         f"scene's motion (--skill {'|'.join(envs.SKILLS)}), not {skill!r}.")
    limbless = sorted(set(embodiments) - set(envs.scenes.LIMBS))
    if scene is not None and limbless:
        raise SystemExit(f"--skill {scene} needs a humanoid's hips, knees and arms: "
                         f"--embodiments {' '.join(sorted(envs.scenes.LIMBS))}, not "
                         f"{' '.join(limbless)}.")
    for name in embodiments:
        body = envs.load(name, skill=scene, camera=camera)
        bundle, video = synthetic_lib.make(body, out, config, ingest_config)
        path = bundle_lib.save(bundle, pathlib.Path(out)
                               / f"{synthetic_lib.file_stem(body)}.npz")
        print(f"{video}")
        _summary(bundle, path)


def embed(bundle: str, encoder: str = "pretrained", checkpoint: Optional[str] = None,
          random_encoder: str = "base", out: Optional[str] = None, batch_size: int = 8) -> None:
    """(Re)compute the clip embeddings of BUNDLE with ENCODER; writes OUT (default: in place)."""
    reference = ingest_lib.add_embeddings(bundle_lib.load(bundle), encoder, checkpoint,
                                          random_encoder, batch_size)
    _summary(reference, bundle_lib.save(reference, out or bundle))


def info(bundle: str) -> None:
    """Print a bundle's metadata and array shapes (after validating it)."""
    reference = bundle_lib.load(bundle)
    print(json.dumps(reference.metadata, indent=2, sort_keys=True))
    _summary(reference, pathlib.Path(bundle))


def _summary(reference: bundle_lib.ReferenceBundle, path: pathlib.Path) -> None:
    meta = reference.metadata
    arrays = {f.name: getattr(reference, f.name) for f in dataclasses.fields(reference)
              if isinstance(getattr(reference, f.name), np.ndarray)}
    print(f"{path}: {meta['embodiment']}, {reference.num_frames} frames at {meta['fps_out']:g} "
          f"Hz from {meta['fps_in']:g} fps, segmenter {meta['segmenter']['name']}, "
          f"interpolator {meta['interpolator']['name']}, encoder {reference.encoder_id}")
    for name, array in arrays.items():
        print(f"  {name:20s} {str(array.shape):22s} {array.dtype}")
    if "synthetic" in meta:
        print(f"  mask IoU vs ground truth: mean {meta['synthetic']['mask_iou_mean']:.3f}, "
              f"min {meta['synthetic']['mask_iou_min']:.3f}")
    if reference.encoder_id is None:
        print(f"  no embeddings: {meta['encoder'].get('note', '')}")


COMMANDS = {"stage1": stage1, "ingest": ingest, "synthetic": synthetic, "embed": embed,
            "info": info}


def main(argv: Optional[list[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        tyro.extras.subcommand_cli_from_dict(COMMANDS, args=argv, description=__doc__)
    except ReferenceDataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
