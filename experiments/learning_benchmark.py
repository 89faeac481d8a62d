"""The `learning` suite of experiments/benchmark.py: does a run's policy imitate its reference?

Every claim about learning cites this suite. For each case (what the policy trains on) and
`--learning-seeds` seeds trained at once (`jax.vmap` over `Bro.init` and the jitted training
chunk, `training.train_chunk`; `jax.lax.map` with a strided video stream: `over_seeds`),
starting from a `run.py` preset (`--learning-preset`, default the default run) for its env
steps:

    case            trains on
    nil             NIL's reward as the run resolves it (IoU + regularizers, + video when an
                    encoder is found)
    pose            the mocap-tracking oracle (reward/sources.py): the cost of learning from
                    pixels is nil -> pose
    task            LocoMujoco's walk reward (or the skill's): the RL upper bound
    iou_only        the IoU stream alone (paper ablation)
    no_regularizers IoU (+ video) without the physical regularizers (paper ablation)
    video_only      the video stream alone (paper ablation; needs an encoder)

A case that resolves to the same training as an earlier one (without an encoder,
no_regularizers is iou_only) or that needs a stream the run does not have is skipped and said.

Every `--learning-eval-every` env steps (rounded up to whole chunks; also at 0 and at the end)
each seed's deterministic policy is evaluated with the run's protocol (`training.PROTOCOL`,
`--learning-eval-episodes` episodes, the same reset keys for every seed and point); zero and
random actions are evaluated once on the same resets, as lines. Curves: mean IoU, pose error,
walk return and steps to the first fall against env steps and against the training wall time
(all seeds together, evaluation not counted), mean over seeds with the band of min..max.

Reproduce (writes benchmarks/learning.{json,md,png}; about 30 min per case of 3 seeds at the
default preset on a 2-core CPU):

    python experiments/benchmark.py --suite learning
    python experiments/benchmark.py --suite learning --learning-cases nil pose
    python experiments/benchmark.py --suite learning --learning-preset quick --learning-seeds 2
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import math
import pathlib
import textwrap
import time

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

import run as run_script  # noqa: E402  (experiments/, next to this script)
from nil_jax import training  # noqa: E402
from nil_jax.io_utils import write_bytes, write_json, write_text  # noqa: E402

# Each case: (reward_source, RewardConfig overrides, needs the video stream)
CASES = {
    "nil": ("nil", {}, False),
    "pose": ("pose", {}, False),
    "task": ("task", {}, False),
    "iou_only": ("nil", dict(video_weight=0.0, regularizer_weight=0.0), False),
    "no_regularizers": ("nil", dict(regularizer_weight=0.0), False),
    "video_only": ("nil", dict(iou_weight=0.0, regularizer_weight=0.0), True),
}
DEFAULT_CASES = tuple(CASES)
# The evaluation metrics plotted: (key in training.summarize's dict, axis label, better)
CURVES = (("mean_iou", "mean IoU with the reference", "higher"),
          ("pose_error_rad", "pose error (rad)", "lower"),
          ("env_return_mean", "walk return until the fall", "higher"),
          ("steps_to_fall_mean", "steps to the first fall", "higher"))


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--learning-cases", nargs="+", default=list(DEFAULT_CASES),
                       choices=list(CASES))
    group.add_argument("--learning-preset", default="default",
                       choices=sorted(set(run_script.PRESETS) - {"paper"}),
                       help="the run.py preset each case starts from")
    group.add_argument("--learning-seeds", type=int, default=3)
    group.add_argument("--learning-env-steps", type=int, default=None,
                       help="per seed (default: the preset's)")
    group.add_argument("--learning-eval-every", type=int, default=25_000,
                       help="env steps between evaluations (rounded up to whole chunks)")
    group.add_argument("--learning-eval-episodes", type=int, default=5)
    group.add_argument("--learning-seed", type=int, default=0, help="the first seed")
    group.add_argument("--learning-set", nargs="+", action="extend", default=[],
                       metavar="FIELD=VALUE",
                       help="change the preset's TrainConfig fields, dotted for nested ones: "
                       "agent.updates_per_step=8 agent.reset_steps= reward.iou_weight=2 "
                       "backend=cpu (recipes; tiny checks of the gpu preset on a CPU); "
                       "repeated flags add up")


def parse_like(current, text: str, name: str):
    """`text` as a value of `current`'s type (a field's present value)."""
    try:
        if isinstance(current, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError("not true/false")
            return text.lower() in ("true", "1")
        if isinstance(current, (int, float)):
            return type(current)(text)
        if isinstance(current, tuple):  # resets: comma-separated integers, empty for none
            return tuple(int(x) for x in text.split(",") if x)
        if current is None:  # optional fields: a number, a name, or none
            if text.lower() == "none":
                return None
            for kind in (int, float):
                try:
                    return kind(text)
                except ValueError:
                    pass
        return text
    except ValueError as e:
        raise SystemExit(f"--learning-set {name}={text}: expected a value like {current!r} "
                         f"({e})")


def with_settings(config, assignments: list[str]):
    """`config` with each FIELD=VALUE of `assignments` applied (validated by the configs)."""
    for assignment in assignments:
        path, equals, text = assignment.partition("=")
        if not equals:
            raise SystemExit(f"--learning-set {assignment!r}: write FIELD=VALUE.")

        def replaced(obj, names):
            fields = {f.name for f in dataclasses.fields(obj)}
            if names[0] not in fields:
                raise SystemExit(f"--learning-set {path}: {type(obj).__name__} has no field "
                                 f"{names[0]!r}; it has {sorted(fields)}.")
            current = getattr(obj, names[0])
            value = (replaced(current, names[1:]) if len(names) > 1
                     else parse_like(current, text, path))
            return dataclasses.replace(obj, **{names[0]: value})
        try:
            config = replaced(config, path.split("."))
        except (ValueError, TypeError) as e:
            raise SystemExit(f"--learning-set {assignment}: {e}") from e
    return config


def case_config(base: training.TrainConfig, case: str, env_steps: int) -> training.TrainConfig:
    source, reward, _ = CASES[case]
    return dataclasses.replace(base, reward_source=source, env_steps=env_steps,
                               reward=dataclasses.replace(base.reward, **reward))


def spread(values: np.ndarray) -> dict:
    """Mean, standard deviation, min and max over seeds (axis 0), NaN-free inputs."""
    return dict(mean=float(values.mean()), std=float(values.std()), min=float(values.min()),
                max=float(values.max()))


def over_seeds(setup: training.Setup, function):
    """`function` of one seed mapped over a leading seed axis: `jax.vmap`, or `jax.lax.map`
    (one seed after another inside the program) when the video stream runs every k > 1 steps.
    Under vmap the stride's `lax.cond` turns into a select whose predicate is batched, and the
    encoder would run at every step."""
    strided_video = setup.reward.video_weight > 0 and setup.reward.video_stride > 1
    if not strided_video:
        return jax.vmap(function)
    return lambda *batched: jax.lax.map(lambda args: function(*args), batched)


def seeds_evaluation(setup: training.Setup, episodes: int):
    """`(agents, key) -> one metrics dict per seed`: each seed's deterministic policy by the
    run's protocol, the episodes of all seeds in one compiled call."""
    run = training.evaluation_function(setup, episodes)
    policy = training.POLICIES.index("nil")
    records_of = jax.jit(lambda agents, key: over_seeds(
        setup, lambda agent: run(agent, policy, key))(agents))  # the same key for every seed

    def evaluate(agents, key):
        return summarize_seeds(setup, jax.device_get(records_of(agents, key)))
    return evaluate


def summarize_seeds(setup: training.Setup, records: dict) -> list[dict]:
    seeds = len(jax.tree.leaves(records)[0])
    return [training.summarize(setup, jax.tree.map(lambda x, i=i: x[i], records))
            for i in range(seeds)]


def train_case(setup: training.Setup, seeds: list[int], env_steps: int, eval_every: int,
               episodes: int, eval_key: jax.Array) -> dict:
    """Trains `seeds` at once; returns the case's record (curves per seed, training streams)."""
    config, learner = setup.config, setup.learner
    per_chunk = config.chunk_iterations * learner.config.num_envs
    total_chunks = max(1, math.ceil(env_steps / per_chunk))
    eval_chunks = max(1, math.ceil(eval_every / per_chunk))
    evaluate_seeds = seeds_evaluation(setup, episodes)
    chunk = jax.jit(over_seeds(setup, lambda s: training.train_chunk(learner, s,
                                                                     config.chunk_iterations)),
                    donate_argnums=0)
    start = time.perf_counter()
    state = jax.jit(jax.vmap(learner.init))(jax.numpy.stack([jax.random.PRNGKey(s)
                                                             for s in seeds]))
    jax.block_until_ready(state)
    compile_start = time.perf_counter()
    chunk = chunk.lower(state).compile()
    compile_s = time.perf_counter() - compile_start
    points, streams = [], []
    wall = 0.0

    def evaluate(done_chunks):
        metrics = evaluate_seeds(state.agent, eval_key)
        points.append(dict(env_steps=done_chunks * per_chunk, wall_s=wall, seeds=metrics))
        means = {name: np.mean([m[name] for m in metrics]) for name, _, _ in CURVES
                 if name in metrics[0]}
        print(f"  {done_chunks * per_chunk:>8,d} env steps, {wall / 60:5.1f} min: "
              + ", ".join(f"{name} {value:.3f}" for name, value in means.items()), flush=True)

    evaluate(0)
    for index in range(total_chunks):
        begin = time.perf_counter()
        state, metrics = chunk(state)
        metrics = jax.device_get(metrics)
        wall += time.perf_counter() - begin
        streams.append(dict(env_steps=(index + 1) * per_chunk,
                            **{k: np.asarray(v, np.float64).tolist() for k, v in metrics.items()
                               if k in STREAMS}))
        if (index + 1) % eval_chunks == 0 or index + 1 == total_chunks:
            evaluate(index + 1)
    return dict(seeds=seeds, env_steps=total_chunks * per_chunk, compile_s=compile_s,
                train_wall_s=wall, total_wall_s=time.perf_counter() - start,
                points=points, training_streams=streams)


# Per-chunk training means kept in the record (per seed): what the policy was rewarded for
STREAMS = ("env_reward", "env/reward/iou", "env/reward/video", "env/reward/pose",
           "env/reward/env", "env/penalty/total", "episode_length", "temperature",
           "critic_loss")


def baselines(setup: training.Setup, episodes: int, eval_key: jax.Array) -> dict:
    """Zero and random actions on the evaluation's resets (the agent is not used: fresh
    networks stand in, without the replay and envs of a whole learner state)."""
    learner = setup.learner
    unused = learner.fresh_agent(learner.init_params(jax.random.PRNGKey(0)))
    metrics, _ = training.evaluate(setup, unused, eval_key, episodes,
                                   policies=("zero", "random"))
    return metrics


def final_table(record: dict) -> list[str]:
    names = [name for name, _, _ in CURVES]
    labels = {"mean_iou": "IoU", "pose_error_rad": "pose error (rad)",
              "env_return_mean": "walk return", "steps_to_fall_mean": "steps to fall"}
    lines = ["| policy | seeds | env steps | train min | "
             + " | ".join(labels[n] for n in names) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(names)]
    for case, result in record["cases"].items():
        final = result["points"][-1]["summary"]
        cells = [f"{final[n]['mean']:.3f} ± {final[n]['std']:.3f} "
                 f"[{final[n]['min']:.3f}, {final[n]['max']:.3f}]" if n in final else "-"
                 for n in names]
        lines.append(f"| {case} | {len(result['seeds'])} | {result['env_steps']:,} "
                     f"| {result['train_wall_s'] / 60:.1f} | " + " | ".join(cells) + " |")
    for policy, metrics in record["baselines"].items():
        cells = [f"{metrics[n]:.3f}" if n in metrics else "-" for n in names]
        lines.append(f"| {policy} action | - | - | - | " + " | ".join(cells) + " |")
    return lines


def curve_tables(record: dict) -> list[str]:
    lines = []
    for name, label, better in CURVES:
        cases = {c: r for c, r in record["cases"].items() if name in r["points"][0]["summary"]}
        if not cases:
            continue
        steps = sorted({p["env_steps"] for r in cases.values() for p in r["points"]})
        lines += ["", f"{label} ({better} is better), mean over seeds, by env steps:", "",
                  "| policy | " + " | ".join(f"{s:,}" for s in steps) + " |",
                  "|---|" + "---:|" * len(steps)]
        for case, result in cases.items():
            at = {p["env_steps"]: p["summary"][name]["mean"] for p in result["points"]}
            lines.append(f"| {case} | " + " | ".join(
                f"{at[s]:.3f}" if s in at else "-" for s in steps) + " |")
    return lines


def angle_table(record: dict) -> list[str]:
    """Pose error (rad) by angle at the end of training, mean over seeds, beside the baselines':
    which joints a policy holds away from the reference."""
    columns = {case: result["points"][-1]["summary"]["pose_error_by_angle"]
               for case, result in record["cases"].items()
               if "pose_error_by_angle" in result["points"][-1]["summary"]}
    if not columns:
        return []
    baselines = {f"{policy} action": metrics["pose_error_by_angle"]
                 for policy, metrics in record["baselines"].items()
                 if "pose_error_by_angle" in metrics}
    # The robot's order (root, left leg, right leg, torso, arms); JSON keeps keys sorted.
    angles = record.get("angles") or list(next(iter(columns.values())))
    lines = ["", "pose error (rad) by angle at the end of training, mean over seeds (the pose "
             "error is their mean):", "",
             "| angle | " + " | ".join([*columns, *baselines]) + " |",
             "|---|" + "---:|" * (len(columns) + len(baselines))]
    for angle in angles:
        cells = ([f"{c[angle]['mean']:.3f}" for c in columns.values()]
                 + [f"{b[angle]:.3f}" for b in baselines.values()])
        lines.append(f"| {angle} | " + " | ".join(cells) + " |")
    return lines


def agent_summary(agent: dict, action_l2_joints: str = "all") -> str:
    resets = ", ".join(f"{r:,}" for r in agent["reset_steps"]) or "none"
    return (f"BRO {agent['num_envs']} envs, {agent['updates_per_step']} updates per iteration at "
            f"batch {agent['batch_size']}, critic {agent['critic_width']} x "
            f"{agent['num_quantiles']} quantiles, actor {agent['actor_width']}, tau "
            f"{agent['tau']}, initial temperature {agent['init_temperature']}, resets at {resets}"
            + (", observations normalized" if agent.get("normalize_observations") else "")
            + (f", action L2 {agent['action_l2']:g}"
               + (" x the batch's mean |Q|" if agent.get("action_l2_by_q") else "")
               + (f", ramped in over {agent['action_l2_ramp_steps']:,} env steps"
                  if agent.get("action_l2_ramp_steps") else "")
               + (" on the joints the camera barely sees" if action_l2_joints == "unseen"
                  else "")
               + " in the actor's loss" if agent.get("action_l2") else ""))


def markdown(record: dict) -> str:
    machine, settings = record["machine"], record["settings"]
    lines = [f"Machine: devices {machine['devices']}, {machine['cpu_count']} CPUs "
             f"({machine['processor']}), jax {machine['jax']}, mujoco {machine['mujoco']}.",
             "",
             f"`{record['command']}`: run.py preset `{settings['preset']}` "
             f"({settings['embodiment']}, {settings['skill']}, {settings['actuation']} "
             f"actuation, "
             + (f"the phase and its first {settings['phase_harmonics']} harmonics observed, "
                if settings.get("phase_harmonics") else "")
             + f"{agent_summary(settings['agent'], settings.get('action_l2_joints', 'all'))}), "
             f"{settings['seeds']} seeds per "
             "case trained "
             f"together (vmap), evaluated every {settings['eval_every']:,} env steps "
             f"({settings['eval_episodes']} deterministic episodes per seed of "
             f"{record['episode_length']} steps, the same resets for every policy; "
             "training.PROTOCOL: a fall ends the episode and its state is held). "
             "Cells: mean ± std [min, max] over seeds at the end of training.",
             ""] + [f"Note: {n}" for n in record["notes"]] + [""] + final_table(record)
    lines += angle_table(record)
    lines += curve_tables(record)
    lines += ["", "Curves: benchmarks/learning.png."]
    return "\n".join(lines) + "\n"


def plot(record: dict, path: pathlib.Path) -> None:
    """Rows: against env steps, against training wall time; one column per metric of CURVES;
    each case's mean over seeds with its min..max band, zero and random actions as lines."""
    curves = [c for c in CURVES if any(c[0] in r["points"][0]["summary"]
                                       for r in record["cases"].values())]
    fig, axes = plt.subplots(2, len(curves), figsize=(4.2 * len(curves), 7), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for column, (name, label, better) in enumerate(curves):
        for row, (x_name, x_label, scale) in enumerate(
                (("env_steps", "environment steps (thousands)", 1e-3),
                 ("wall_s", "training wall time, all seeds (min)", 1 / 60))):
            ax = axes[row, column]
            for color, (case, result) in zip(colors, record["cases"].items()):
                points = [p for p in result["points"] if name in p["summary"]]
                if not points:
                    continue
                x = np.array([p[x_name] for p in points]) * scale
                stats = {k: np.array([p["summary"][name][k] for p in points])
                         for k in ("mean", "min", "max")}
                ax.plot(x, stats["mean"], color=color, marker="o", markersize=3,
                        label=f"{case} ({len(result['seeds'])} seeds)")
                ax.fill_between(x, stats["min"], stats["max"], color=color, alpha=0.18)
            for style, (policy, metrics) in zip(("--", ":"), record["baselines"].items()):
                if name in metrics:
                    ax.axhline(metrics[name], color="0.35", linestyle=style,
                               label=f"{policy} action")
            ax.set_xlabel(x_label)
            ax.set_ylabel(label)
            ax.set_title(f"{label} ({better} is better)", fontsize=10)
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(textwrap.fill(f"{record['command']}: mean over seeds, band = min..max",
                               width=40 * len(curves)), fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    write_bytes(path, buffer.getvalue())


def summarize_points(result: dict) -> None:
    for point in result["points"]:
        seeds = point["seeds"]
        point["summary"] = {name: spread(np.array([m[name] for m in seeds]))
                            for name, value in seeds[0].items() if not isinstance(value, dict)}
        if "pose_error_by_angle" in seeds[0]:
            point["summary"]["pose_error_by_angle"] = {
                angle: spread(np.array([m["pose_error_by_angle"][angle] for m in seeds]))
                for angle in seeds[0]["pose_error_by_angle"]}


def run_learning(args, machine) -> tuple[dict, str]:
    out_dir = pathlib.Path(args.out_dir)
    base = run_script.PRESETS[args.learning_preset]
    base = with_settings(base, args.learning_set)
    env_steps = args.learning_env_steps or base.env_steps
    seeds = list(range(args.learning_seed, args.learning_seed + args.learning_seeds))
    eval_key = jax.random.PRNGKey(args.learning_seed + 1)  # as run.py evaluates
    command = "python experiments/benchmark.py --suite learning " + " ".join(
        f"--{flag} {value}" for flag, value in (
            ("learning-preset", args.learning_preset),
            ("learning-cases", " ".join(args.learning_cases)),
            ("learning-seeds", args.learning_seeds), ("learning-env-steps", env_steps),
            ("learning-eval-every", args.learning_eval_every),
            ("learning-eval-episodes", args.learning_eval_episodes),
            ("learning-seed", args.learning_seed),
            ("learning-set", " ".join(args.learning_set) or None),
            ("out-dir", args.out_dir)) if value is not None)
    record = dict(machine=machine, command=command, notes=[], cases={}, settings=dict(
        preset=args.learning_preset, embodiment=base.embodiment, skill=base.skill,
        actuation=base.actuation, backend=base.backend, agent=dataclasses.asdict(base.agent),
        action_l2_joints=base.action_l2_joints, phase_harmonics=base.phase_harmonics,
        seeds=len(seeds), env_steps=env_steps, eval_every=args.learning_eval_every,
        eval_episodes=args.learning_eval_episodes, changed=list(args.learning_set)))
    trained = {}  # what each case resolved to -> the case that trained it
    for case in dict.fromkeys(args.learning_cases):
        setup = training.build(case_config(base, case, env_steps))
        if CASES[case][2] and setup.reward.video_weight == 0:
            record["notes"].append(f"{case} skipped: it needs the video stream, and this run "
                                   f"has none ({'; '.join(setup.notes)})")
            continue
        resolved = (setup.config.reward_source,
                    setup.reward if setup.config.reward_source == "nil" else None)
        if resolved in trained:
            record["notes"].append(f"{case} skipped: it trains exactly as {trained[resolved]} "
                                   f"here (weights as used: video {setup.reward.video_weight}, "
                                   f"IoU {setup.reward.iou_weight}, regularizers "
                                   f"{setup.reward.regularizer_weight})")
            continue
        trained[resolved] = case
        if "baselines" not in record:
            record["baselines"] = baselines(setup, args.learning_eval_episodes, eval_key)
            if "pose_error_by_angle" in record["baselines"]["zero"]:
                record["angles"] = list(record["baselines"]["zero"]["pose_error_by_angle"])
            record["episode_length"] = setup.bundle.num_frames - 1
            record["settings"]["agent"] = dataclasses.asdict(setup.learner.config)  # as run
            record["notes"] += list(dict.fromkeys(setup.notes))
        print(f"learning: {case} ({setup.config.reward_source} reward), {len(seeds)} seeds, "
              f"{env_steps:,} env steps each", flush=True)
        result = train_case(setup, seeds, env_steps, args.learning_eval_every,
                            args.learning_eval_episodes, eval_key)
        result["reward"] = dataclasses.asdict(setup.reward)
        summarize_points(result)
        record["cases"][case] = result
        write_record(record, out_dir)  # each case as it ends: the suite takes hours
    if not record["cases"]:
        raise SystemExit("learning: no case left to train (see the notes above).")
    return record, markdown(record)


def write_record(record: dict, out_dir: pathlib.Path) -> None:
    """learning.{json,md,png} of the cases trained so far (benchmark.py writes the last)."""
    write_json(out_dir / "learning.json", record)
    write_text(out_dir / "learning.md", markdown(record))
    plot(record, out_dir / "learning.png")
