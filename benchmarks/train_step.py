"""Seconds per slow-learner training step, eager against ``torch.compile``, with a per-operator breakdown.

    python benchmarks/train_step.py --model slowfast_vgen/assets/default_model --compile   # the CPU recipe's step
    python benchmarks/train_step.py --steps 3                                              # tiny random model

One run measures the step of ``configs/train/cpu_recipe.yaml`` on synthetic inputs: the masked
conditional loss (Eq. 1-2) of a batch of ``--batch`` chunks of ``--frames`` frames (``--context``
clean), its backward pass and an AdamW step over the UNet and the action encoder. The eager UNet
runs first (``--warmup`` steps, then ``--steps`` timed), then, with ``--compile``, the same steps
through ``torch.compile`` (compile time reported separately). The summary gives the ratio
compiled / eager and the operators that take the most time in one eager step (torch profiler).
Results go to ``benchmarks/results/<name>.json``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from slowfast_vgen import diffusion
from slowfast_vgen.errors import run_cli
from slowfast_vgen.io_utils import atomic_write_json
from slowfast_vgen.model import ModelBundle, ModelConfig, load_model, model_summary, unet_text_kwargs

TEXTS = ["move left", "move right", "go up", "head east", "move down", "turn back west", "stay", "move up"]


def training_step(bundle: ModelBundle, unet, optimizer, latents, mask, texts, generator) -> float:
    """One step of the slow learner's loss (Eq. 1-2 on the targets) with backward and optimizer step."""
    scheduler = bundle.noise_scheduler
    noise = torch.randn(latents.shape, generator=generator)
    timesteps = diffusion.sample_timesteps(scheduler, latents.shape[0], generator, latents.device, 300)
    if bundle.action_encoder is not None:
        states, token_mask = bundle.encode_text_states(texts)
        conditioning = bundle.action_encoder(states, token_mask).conditioning
    else:
        conditioning = bundle.encode_text(texts)
    noisy = diffusion.noise_targets(scheduler, latents, noise, timesteps, mask)
    prediction = unet(noisy, timesteps, **unet_text_kwargs(bundle.unet, conditioning)).sample
    target = diffusion.diffusion_target(scheduler, latents, noise, timesteps)
    loss = diffusion.masked_diffusion_loss(prediction, target, mask)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def timed_steps(run_step, warmup: int, steps: int) -> tuple[list[float], float]:
    """Seconds of the first call (compilation, when compiled) and of ``steps`` calls after ``warmup``."""
    started = time.perf_counter()
    run_step()
    first = time.perf_counter() - started
    for _ in range(max(0, warmup - 1)):
        run_step()
    seconds = []
    for _ in range(steps):
        started = time.perf_counter()
        run_step()
        seconds.append(time.perf_counter() - started)
    return seconds, first


def operator_breakdown(run_step, top: int) -> list[dict]:
    """The ``top`` operators by self CPU time in one step (share of the step's total)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        run_step()
    events = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    return [{"operator": e.key, "share": round(e.self_cpu_time_total / total, 4), "calls": e.count} for e in events[:top]]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model directory (default: a tiny random model)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=12, help="frames per chunk, context included")
    parser.add_argument("--context", type=int, default=4, help="clean context frames")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile(unet)")
    parser.add_argument("--top", type=int, default=12, help="operators in the breakdown")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--name", default="train_step")
    args = parser.parse_args(argv)
    if not 0 < args.context < args.frames:
        parser.error(f"--context must be in [1, --frames), got {args.context}")
    if args.batch < 1 or args.steps < 1 or args.warmup < 1:
        parser.error("--batch, --steps and --warmup must be >= 1")

    torch.manual_seed(0)
    bundle = load_model(args.model) if args.model else ModelBundle.from_config(ModelConfig(seed=0))
    unet = bundle.unet.train().requires_grad_(True)
    parameters = list(unet.parameters())
    if bundle.action_encoder is not None:
        parameters += list(bundle.action_encoder.train().requires_grad_(True).parameters())
    optimizer = torch.optim.AdamW(parameters, lr=1e-6)  # tiny: the weights barely move between the two phases
    generator = torch.Generator().manual_seed(0)
    frames = torch.rand(args.batch, 3, args.frames, bundle.height, bundle.width, generator=generator) * 2 - 1
    with torch.no_grad():
        latents = bundle.encode_frames(frames)
    mask = diffusion.context_mask(args.batch, args.context, args.frames - args.context, latents.device)
    texts = [TEXTS[i % len(TEXTS)] for i in range(args.batch)]

    def step_with(module):
        return lambda: training_step(bundle, module, optimizer, latents, mask, texts, generator)

    eager, _ = timed_steps(step_with(unet), args.warmup, args.steps)
    result = {
        "config": {**vars(args), "threads": torch.get_num_threads(), "torch": torch.__version__,
                   "machine": platform.processor() or platform.machine()},
        "model": model_summary(bundle),
        "eager_seconds_per_step": statistics.median(eager),
        "eager_seconds": eager,
        "breakdown_eager": operator_breakdown(step_with(unet), args.top),
    }
    if args.compile:
        compiled, compile_seconds = timed_steps(step_with(torch.compile(unet)), args.warmup, args.steps)
        result.update({
            "compiled_seconds_per_step": statistics.median(compiled),
            "compiled_seconds": compiled,
            "first_compiled_step_seconds": compile_seconds,
            "compiled_over_eager": statistics.median(compiled) / statistics.median(eager),
        })
    path = Path(args.out) / f"{args.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, result)
    summary = f"eager {result['eager_seconds_per_step']:.3f} s/step"
    if args.compile:
        summary += (f", compiled {result['compiled_seconds_per_step']:.3f} s/step (x{result['compiled_over_eager']:.2f}; "
                    f"first step {result['first_compiled_step_seconds']:.0f} s)")
    print(f"{summary}; top operator {result['breakdown_eager'][0]['operator']} "
          f"({100 * result['breakdown_eager'][0]['share']:.0f} %); wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
