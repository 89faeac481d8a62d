"""The `timesformer` suite of experiments/benchmark.py: the Flax TimeSformer against Hugging
Face's PyTorch model on this machine.

For each config ("base": the architecture of facebook/timesformer-base-finetuned-k400, "small":
the same token grid at ViT-S width) and batch size B, with random weights:

    JAX    jitted `timesformer.embed` (normalized clips (B, 8, 224, 224, 3) -> CLS (B, D))
    HF     `transformers.TimesformerModel(...).last_hidden_state[:, 0]`, torch.inference_mode,
           float32, as many torch threads as XLA uses (all cores); CPU only
    peak   a jitted float32 N x N x N matmul (N = 2048), the matmul rate JAX reaches here

are timed in rounds, interleaved (JAX, HF, peak, JAX, HF, peak, ...), the peak over as long as
the JAX call, so that load from other processes falls on all three alike. Rates are medians over
rounds; the two ratios are medians of the per-round ratios (every time is kept in the JSON).

    model FLOPs   2 x the multiply-adds of every matmul: patch projection, qkv, attention
                  scores and context, output projections, temporal dense, MLP (softmax,
                  LayerNorm, GELU not counted). Base, 8 x 224 x 224: 0.39 TFLOP per clip.
    GFLOP/s       model FLOPs x clips/s
    of peak       GFLOP/s / peak GFLOP/s of the same round (CPU goal >= 0.75)
    vs HF         JAX clips/s / HF clips/s of the same round (goal >= 1.0)

On a GPU or TPU the model runs in bfloat16 (`dtype=jnp.bfloat16`, parameters float32), the peak
matmul is bfloat16 with N = 8192, and MFU = GFLOP/s / the device's nominal dense bf16 peak
(`NOMINAL_BF16_TFLOPS`); HF is not run there (the dev extra installs CPU torch).

Reproduce (writes benchmarks/timesformer.{json,md}):

    python experiments/benchmark.py --suite timesformer
    python experiments/benchmark.py --suite timesformer --encoder-configs base \
        --clip-batch-sizes 1 2 --rounds 5

It also measures the error of bf16 compute against float32 on one base clip (max and mean abs
error on last_hidden_state, cosine similarity of the embeddings).

The `i3d` suite (`run_i3d`) measures the Kinetics-400 I3D's embedding (`reward.i3d`, up to
`--i3d-endpoint`, 8-frame clips) at each `--i3d-sizes` px and batch: XLA's FLOP count of the
compiled program (cost analysis) per clip, clips/s (median over rounds), and the rate as a
fraction of the matmul peak; float32 on a CPU, bfloat16 on accelerators:

    python experiments/benchmark.py --suite i3d
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from nil_jax.reward import i3d, i3d_weights, timesformer, timesformer_weights

# Dense bf16 peak TFLOP/s by device kind (vendor data sheets; SXM parts for NVIDIA).
NOMINAL_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0,
                       "A10": 125.0, "TPU v6": 918.0, "TPU v5p": 459.0, "TPU v5": 197.0,
                       "TPU v4": 275.0}


def model_flops(config: timesformer.TimesformerConfig, batch: int, frames: int, height: int,
                width: int) -> float:
    """FLOPs (2 x multiply-adds) of the matmuls of one forward pass of a batch of clips."""
    d, mlp, p = config.hidden_size, config.intermediate_size, config.patch_size
    patches = (height // p) * (width // p)
    patch_tokens = patches * frames
    spatial_tokens = frames * (1 + patches)  # CLS repeated in every frame
    per_layer = (
        patch_tokens * d * 3 * d  # temporal qkv
        + 2 * patches * frames * frames * d  # temporal scores + context (all heads)
        + 2 * patch_tokens * d * d  # temporal output projection + temporal_dense
        + spatial_tokens * d * 3 * d  # spatial qkv
        + 2 * frames * (1 + patches) ** 2 * d  # spatial scores + context (all heads)
        + spatial_tokens * d * d  # spatial output projection
        + (1 + patch_tokens) * 2 * d * mlp  # MLP
    )
    multiply_adds = patch_tokens * config.num_channels * p * p * d \
        + config.num_hidden_layers * per_layer
    return 2.0 * batch * multiply_adds


def seconds(fn) -> float:
    """Not jitted: wall seconds of `fn()` run to completion."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def jax_runner(config, batch: int, dtype) -> tuple:
    """(run, compile seconds): `run()` embeds one batch of random clips."""
    model = timesformer.TimesformerModel(config, dtype=dtype)
    params = timesformer_weights.random_params(config)
    clips = jnp.asarray(np.random.default_rng(0).normal(
        size=(batch, config.num_frames, config.image_size, config.image_size, 3)), jnp.float32)
    embed = jax.jit(lambda p, c: timesformer.embed(model, p, c))
    start = time.perf_counter()
    compiled = embed.lower(params, clips).compile()
    compile_s = time.perf_counter() - start
    return (lambda: compiled(params, clips)), compile_s


def hf_runner(config, batch: int):
    """`run()` for HF's PyTorch TimesformerModel on the same clips shape, or None without torch."""
    try:
        import torch
        import transformers
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count())  # XLA's CPU client also uses every core
    model = transformers.TimesformerModel(
        transformers.TimesformerConfig(**config.to_hf_dict())).eval()
    pixels = torch.randn(batch, config.num_frames, 3, config.image_size, config.image_size)

    def run():
        with torch.inference_mode():
            return model(pixel_values=pixels).last_hidden_state[:, 0].numpy()

    return run


def matmul_runner(size: int, dtype):
    a = jnp.asarray(np.random.default_rng(1).normal(size=(size, size)), dtype)
    compiled = jax.jit(lambda x: x @ x).lower(a).compile()
    return lambda: compiled(a), 2.0 * size ** 3


def nominal_peak_tflops(device) -> float | None:
    for name, tflops in NOMINAL_BF16_TFLOPS.items():
        if name.lower() in device.device_kind.lower():
            return tflops
    return None


def measure(name: str, batch: int, rounds: int, with_hf: bool) -> dict:
    """One config x batch size: JAX, HF and the matmul peak, interleaved over `rounds`."""
    config = timesformer.CONFIGS[name]
    device = jax.devices()[0]
    on_cpu = device.platform == "cpu"
    dtype = jnp.float32 if on_cpu else jnp.bfloat16
    run_jax, compile_s = jax_runner(config, batch, dtype)
    run_hf = hf_runner(config, batch) if (with_hf and on_cpu) else None
    peak_size = 2048 if on_cpu else 8192  # as `measure`
    run_peak, peak_flops = matmul_runner(peak_size, dtype)
    flops = model_flops(config, batch, config.num_frames, config.image_size, config.image_size)

    for run in (run_jax, run_hf, run_peak):  # first calls: allocations, thread pools
        if run is not None:
            seconds(run)
    peak_once = min(seconds(run_peak) for _ in range(3))
    jax_s, hf_s, peak_rates = [], [], []
    for _ in range(rounds):
        jax_s.append(seconds(run_jax))
        if run_hf is not None:
            hf_s.append(seconds(run_hf))
        # The peak is timed over as long as the model call, so that both see the same load.
        reps = max(3, round(jax_s[-1] / peak_once))
        peak_rates.append(peak_flops * reps / sum(seconds(run_peak) for _ in range(reps)) / 1e9)

    jax_gflops = [flops / s / 1e9 for s in jax_s]
    record = dict(
        config=name, batch_size=batch, dtype=jnp.dtype(dtype).name, rounds=rounds,
        tflop_per_clip=flops / batch / 1e12, compile_s=compile_s, peak_matmul_size=peak_size,
        jax_seconds=jax_s, peak_gflops_per_round=peak_rates,
        jax_clips_per_s=statistics.median(batch / s for s in jax_s),
        jax_gflops=statistics.median(jax_gflops), peak_gflops=statistics.median(peak_rates),
        fraction_of_peak=statistics.median(g / p for g, p in zip(jax_gflops, peak_rates)),
    )
    if hf_s:
        record.update(hf_seconds=hf_s,
                      hf_clips_per_s=statistics.median(batch / s for s in hf_s),
                      hf_gflops=statistics.median(flops / s / 1e9 for s in hf_s),
                      ratio_to_hf=statistics.median(h / j for h, j in zip(hf_s, jax_s)))
    nominal = nominal_peak_tflops(device)
    if not on_cpu and nominal:
        record.update(nominal_peak_tflops=nominal, mfu=record["jax_gflops"] / (nominal * 1e3))
    return record


def bf16_error(name: str, seed: int = 0) -> dict:
    """bfloat16 compute against float32 on one clip (same random weights, perturbed so that
    biases and LayerNorms are not at their init values): max and mean abs error on
    last_hidden_state, and the cosine similarity of the two embeddings."""
    config = timesformer.CONFIGS[name]
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda p: p + 0.02 * rng.normal(size=p.shape).astype(np.float32),
                          timesformer_weights.random_params(config, seed))
    clips = jnp.asarray(rng.normal(size=(1, config.num_frames, config.image_size,
                                         config.image_size, 3)), jnp.float32)
    hidden = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        model = timesformer.TimesformerModel(config, dtype=dtype)
        hidden[dtype] = np.asarray(jax.jit(
            lambda p, c: timesformer.last_hidden_state(model, p, c))(params, clips))
    error = np.abs(hidden[jnp.bfloat16] - hidden[jnp.float32])
    cosine = timesformer.cosine_similarity(hidden[jnp.bfloat16][:, 0], hidden[jnp.float32][:, 0])
    return dict(config=name, max_abs_error=float(error.max()),
                mean_abs_error=float(error.mean()),
                float32_std=float(hidden[jnp.float32].std()),
                embedding_cosine=float(np.min(cosine)))


def markdown_table(results: list[dict], errors: list[dict], machine: dict) -> str:
    lines = [
        f"Machine: devices {machine['devices']}, {machine['cpu_count']} CPUs "
        f"({machine['processor']}), jax {machine['jax']}, torch {machine['torch']}, "
        f"transformers {machine['transformers']}. Random weights; medians of "
        f"{results[0]['rounds']} interleaved rounds; peak = jitted "
        f"{results[0]['peak_matmul_size']}^3 matmul ({results[0]['dtype']}) in the same rounds.",
        "",
        "| config | batch | dtype | TFLOP/clip | JAX clips/s | JAX GFLOP/s | peak GFLOP/s "
        "| of peak | HF clips/s | HF GFLOP/s | JAX vs HF | MFU | compile (s) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def fmt(record, key, pattern):
        return pattern.format(record[key]) if key in record else "-"

    for r in results:
        lines.append(
            f"| {r['config']} | {r['batch_size']} | {r['dtype']} | {r['tflop_per_clip']:.3f} "
            f"| {r['jax_clips_per_s']:.3f} | {r['jax_gflops']:.1f} | {r['peak_gflops']:.1f} "
            f"| {r['fraction_of_peak']:.2f} | {fmt(r, 'hf_clips_per_s', '{:.3f}')} "
            f"| {fmt(r, 'hf_gflops', '{:.1f}')} | {fmt(r, 'ratio_to_hf', '{:.2f}x')} "
            f"| {fmt(r, 'mfu', '{:.1%}')} | {r['compile_s']:.1f} |")
    for e in errors:
        lines.append(
            f"\nbf16 compute vs float32 ({e['config']}, one clip, random weights): max abs error "
            f"{e['max_abs_error']:.3f}, mean {e['mean_abs_error']:.4f} on last_hidden_state "
            f"(values of std {e['float32_std']:.2f}); embedding cosine similarity "
            f"{e['embedding_cosine']:.5f}.")
    return "\n".join(lines) + "\n"


def run_timesformer(args, machine: dict) -> tuple[dict, str]:
    """Measures every (config, batch size) and the bf16 error: (JSON record, markdown table)."""
    results = []
    for name in args.encoder_configs:
        for batch in args.clip_batch_sizes:
            record = measure(name, batch, args.rounds, with_hf=not args.no_hf)
            results.append(record)
            hf = (f", HF {record['hf_clips_per_s']:.3f} clips/s, JAX vs HF "
                  f"{record['ratio_to_hf']:.2f}x" if "ratio_to_hf" in record else "")
            print(f"{name:5s} B={batch:3d} {record['dtype']}: {record['jax_clips_per_s']:.3f} "
                  f"clips/s, {record['jax_gflops']:.1f} GFLOP/s = "
                  f"{record['fraction_of_peak']:.2f} of the matmul peak "
                  f"({record['peak_gflops']:.1f}){hf}", flush=True)
    errors = [bf16_error(name) for name in args.bf16_error_configs]
    return (dict(machine=machine, results=results, bf16_error=errors),
            markdown_table(results, errors, machine))


def measure_i3d(endpoint: str, size: int, batch: int, rounds: int) -> dict:
    """FLOPs per clip (XLA cost analysis), clips/s and the fraction of the matmul peak of the
    I3D embedding of `batch` 8-frame clips at `size` px (random weights: the cost is the same)."""
    on_cpu = jax.default_backend() == "cpu"
    dtype = jnp.float32 if on_cpu else jnp.bfloat16
    variables = i3d_weights.random_variables()
    config = i3d.EmbeddingConfig(endpoint=endpoint, size=size)
    clips = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, size=(batch, 8, size, size, 3)),
                        jnp.float32)
    start = time.perf_counter()
    compiled = jax.jit(lambda v, c: i3d.embed(v, c, config, dtype)).lower(
        variables, clips).compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost["flops"]) / batch
    peak_size = 2048 if on_cpu else 8192  # as `measure`
    peak, peak_flops = matmul_runner(peak_size, dtype)
    run = lambda: compiled(variables, clips)  # noqa: E731
    jax.block_until_ready(run())
    times, peaks = [], []
    for _ in range(rounds):
        times.append(seconds(run))
        peaks.append(peak_flops / seconds(peak) / 1e9)
    clips_per_s = batch / statistics.median(times)
    return dict(endpoint=endpoint, size=size, batch=batch, dtype=jnp.dtype(dtype).name,
                gflop_per_clip=flops / 1e9, clips_per_s=clips_per_s,
                gflops=flops * clips_per_s / 1e9, peak_gflops=statistics.median(peaks),
                fraction_of_peak=flops * clips_per_s / 1e9 / statistics.median(peaks),
                compile_s=compile_s, seconds=times)


def run_i3d(args, machine: dict) -> tuple[dict, str]:
    results = []
    for size in args.i3d_sizes:
        for batch in args.clip_batch_sizes:
            record = measure_i3d(args.i3d_endpoint, size, batch, args.rounds)
            results.append(record)
            print(f"I3D {size:3d} px B={batch:3d} {record['dtype']}: "
                  f"{record['gflop_per_clip']:.2f} GFLOP/clip, {record['clips_per_s']:.2f} "
                  f"clips/s, {record['fraction_of_peak']:.2f} of the matmul peak", flush=True)
    lines = [f"Machine: {machine['cpu_count']} CPUs ({machine['processor']}), devices "
             f"{machine['devices']}, jax {machine['jax']}.", "",
             f"Kinetics-400 I3D embedding of 8-frame clips up to {args.i3d_endpoint} "
             "(GFLOP: XLA's cost analysis of the compiled program).", "",
             "| size | batch | dtype | GFLOP/clip | clips/s | GFLOP/s | of matmul peak | "
             "compile s |", "|---:|---:|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['size']} | {r['batch']} | {r['dtype']} | {r['gflop_per_clip']:.2f} | "
              f"{r['clips_per_s']:.2f} | {r['gflops']:.1f} | {r['fraction_of_peak']:.2f} | "
              f"{r['compile_s']:.1f} |" for r in results]
    return dict(machine=machine, results=results), "\n".join(lines)


def torch_versions() -> dict:
    """Versions of the Hugging Face baseline, for the machine record (None without torch)."""
    try:
        import torch
        import transformers
    except ImportError:
        return dict(torch=None, transformers=None)
    return dict(torch=torch.__version__, transformers=transformers.__version__,
                torch_threads=torch.get_num_threads())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--encoder-configs", nargs="+", default=["base", "small"],
                        choices=list(timesformer.CONFIGS))
    parser.add_argument("--clip-batch-sizes", nargs="+", type=int, default=[1])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-hf", action="store_true", help="skip Hugging Face PyTorch")
    parser.add_argument("--i3d-sizes", nargs="+", type=int, default=[64, 112, 224],
                        help="i3d suite: input sides (px)")
    parser.add_argument("--i3d-endpoint", default="Mixed_5c", choices=i3d.ENDPOINTS[:-1])
    parser.add_argument("--bf16-error-configs", nargs="*", default=["base"],
                        choices=list(timesformer.CONFIGS),
                        help="configs whose bf16-vs-float32 error is measured (none: skip)")
