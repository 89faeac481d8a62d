"""What the simulator shows: MuJoCo renders of the agent from its tracking camera, background
removed, and the stage-1 prompt.

    qpos (T, nq) --mujoco.Renderer, camera `nil_track`--> RGB (T, H, W, 3)
                 --segmentation rendering (geom ids)--> agent mask (T, H, W): the robot's body
                   geoms (`reward.renderer.body_geoms`), never the floor or the sky
    composite: RGB where the mask is (and a skill scene's objects: chair, bar, board), a plain
               colour (or transparency) elsewhere

Stage 1 of NIL: the initial frame e0 (home pose) with the background removed
and the prompt "The {embodiment} agent is {skill}, camera follows the agent." go to any
image-to-video generator. The same renders give the ingest its prompt mask (SAM2) and the
synthetic references their frames and ground-truth masks. Host-side, MUJOCO_GL=egl on headless
machines.
"""

from __future__ import annotations

import copy
from typing import Optional

import mujoco
import numpy as np

from nil_jax.envs import scenes
from nil_jax.envs.embodiments import Embodiment
from nil_jax.reward.renderer import body_geoms

PROMPT = "The {embodiment} agent is {skill}, camera follows the agent."
DEFAULT_SKILL = "walking"
# What the prompt says of each skill scene's skill (envs.scenes.SKILLS).
SKILL_PHRASES = {"walk": "walking", "sit": "sitting down on the chair behind it",
                 "hang": "hanging from the horizontal bar",
                 "balance": "standing balanced on the balance board"}
# e0's plain background. White: generators continue it as a plain studio background, and the
# robots are dark to mid grey (Talos has the lightest parts, and the lowest mask IoU of the four
# with the weight-free segmenter: README), so that segmenter separates them.
DEFAULT_BACKGROUND = (255, 255, 255)


def prompt(embodiment: Embodiment, skill: str = DEFAULT_SKILL) -> str:
    """The stage-1 prompt; a skill name of SKILL_PHRASES becomes its phrase."""
    return PROMPT.format(embodiment=embodiment.spec.display_name,
                         skill=SKILL_PHRASES.get(skill, skill))


def _model_for(model: mujoco.MjModel, height: int, width: int) -> mujoco.MjModel:
    """The model, or a copy with an offscreen buffer large enough for height x width (the
    shared model is never modified)."""
    offscreen = model.vis.global_
    if height <= offscreen.offheight and width <= offscreen.offwidth:
        return model
    model = copy.deepcopy(model)
    model.vis.global_.offheight = max(height, offscreen.offheight)
    model.vis.global_.offwidth = max(width, offscreen.offwidth)
    return model


def render(embodiment: Embodiment, qpos: np.ndarray, height: int = 224, width: int = 224, *,
           rgb: bool = True, shadows: bool = False
           ) -> tuple[Optional[np.ndarray], np.ndarray]:
    """RGB frames (T, H, W, 3) uint8 (None unless `rgb`) and agent masks (T, H, W) bool.
    (`render_scene` also gives the masks of a skill scene's objects.)"""
    frames, masks, _ = render_scene(embodiment, qpos, height, width, rgb=rgb, shadows=shadows)
    return frames, masks


def render_scene(embodiment: Embodiment, qpos: np.ndarray, height: int = 224, width: int = 224,
                 *, rgb: bool = True, shadows: bool = False
                 ) -> tuple[Optional[np.ndarray], np.ndarray, np.ndarray]:
    """RGB frames (T, H, W, 3) uint8 (None unless `rgb`), agent masks and the masks of the skill
    scene's objects (chair, bar, board; all False without a scene), each (T, H, W) bool.

    One renderer draws each pose twice: lit colour, then segmentation (geom ids), whose body
    geoms are the mask. Floor reflections and the skybox are off (the background is replaced),
    and so are shadows unless asked for: with Mesa's software EGL they triple the cost of a
    frame (G1 at 224 px: 0.84 s with, 0.28 s without) and only shade the robot's own parts.
    (`nil_jax.video.render_trajectory` renders with the scene's defaults, for rollouts.)"""
    model = _model_for(embodiment.mj_model, height, width)
    agent = np.array(body_geoms(model))
    scene = np.array([g for g in range(model.ngeom) if model.geom_group[g] < 3
                      and scenes.is_scene_body(model, model.geom_bodyid[g])], int)
    data = mujoco.MjData(model)
    frames = np.empty((len(qpos), height, width, 3), np.uint8) if rgb else None
    masks = np.empty((len(qpos), height, width), bool)
    scene_masks = np.empty((len(qpos), height, width), bool)
    with mujoco.Renderer(model, height, width) as renderer:
        for t, q in enumerate(qpos):
            data.qpos[:] = q
            mujoco.mj_forward(model, data)
            renderer.update_scene(data, camera=embodiment.camera_id)
            flags = renderer.scene.flags
            flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = 0
            flags[mujoco.mjtRndFlag.mjRND_SHADOW] = int(shadows)
            if rgb:
                frames[t] = renderer.render()
            renderer.enable_segmentation_rendering()
            segmentation = renderer.render()  # (object id, object type), -1 background
            renderer.disable_segmentation_rendering()
            is_geom = segmentation[..., 1] == int(mujoco.mjtObj.mjOBJ_GEOM)
            masks[t] = np.isin(segmentation[..., 0], agent) & is_geom
            scene_masks[t] = np.isin(segmentation[..., 0], scene) & is_geom
    return frames, masks, scene_masks


def agent_masks(embodiment: Embodiment, qpos: np.ndarray, height: int = 224,
                width: int = 224) -> np.ndarray:
    """(T, height, width) bool: pixels where MuJoCo's segmentation shows a body geom."""
    return render(embodiment, qpos, height, width, rgb=False)[1]


def render_agent(embodiment: Embodiment, qpos: np.ndarray, height: int = 224, width: int = 224,
                 background: tuple[int, int, int] = DEFAULT_BACKGROUND, shadows: bool = False
                 ) -> tuple[np.ndarray, np.ndarray]:
    """RGB frames of the poses with the background replaced by a plain colour, and the masks.
    A skill scene's objects stay in the picture (a generator must see the chair), not in the
    masks.

    Returns frames (T, H, W, 3) uint8 and masks (T, H, W) bool."""
    frames, masks, scene_masks = render_scene(embodiment, qpos, height, width, shadows=shadows)
    frames[~(masks | scene_masks)] = np.asarray(background, np.uint8)
    return frames, masks


def initial_frame(embodiment: Embodiment, height: int = 224, width: int = 224,
                  background: tuple[int, int, int] | None = DEFAULT_BACKGROUND,
                  shadows: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """e0: the home pose from the tracking camera, background removed, and its mask.

    `background=None` gives RGBA with alpha 0 outside the agent (a transparent PNG); otherwise
    RGB on the plain colour. Landscape sizes (width > height) keep the simulation view as their
    central square (the camera's field of view is vertical); portrait sizes are refused."""
    if height > width:
        raise ValueError(f"e0 of {width}x{height} (portrait) would not contain the simulation "
                         "view; use a square or landscape size.")
    frames, masks, scene_masks = render_scene(embodiment, embodiment.init_qpos[None], height,
                                              width, shadows=shadows)
    frame, mask, shown = frames[0], masks[0], masks[0] | scene_masks[0]
    frame[~shown] = np.asarray(background or (0, 0, 0), np.uint8)
    if background is None:
        frame = np.concatenate([frame, np.where(shown, 255, 0).astype(np.uint8)[..., None]], -1)
    return frame, mask
