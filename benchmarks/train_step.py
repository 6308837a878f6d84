"""Seconds per slow-learner training step, eager against ``torch.compile``, with a per-operator breakdown.

    python benchmarks/train_step.py --model slowfast_vgen/assets/default_model --compile   # the CPU recipe's step
    python benchmarks/train_step.py --steps 3                                              # tiny random model
    python benchmarks/train_step.py --config configs/train/embedded_default.yaml text_dropout=0.2

One run times the step that ``train/train_slow.py`` takes with ``configs/train/cpu_recipe.yaml``
(``--config`` and ``key=value`` overrides pick another slow-learning config, merged as the trainers
merge them), on synthetic inputs: a :class:`~slowfast_vgen.training.SlowTrainer` built from that
config computes its own loss (``SlowTrainer.loss``: Eq. 1-2 masked loss with the config's
``text_dropout``, ``whole_window_share``, ``min_timestep`` and auxiliary ``action_loss_weight``) on
``--batch`` chunks of ``--frames`` random frames (``--context`` clean), then backward, gradient
clipping (``max_grad_norm``) and the trainer's AdamW step over the UNet and the action encoder.

Whatever the config says, the benchmark sets: the model (``--model`` replaces ``init_from``; without
it, a fresh model from the config's ``model`` section: the tiny random model for the CPU recipe), a
temporary ``output_dir``, no resume, validation, samples, tracker or ``text_features`` file (the
frozen encoder's states of each text are computed in the first step and cached, as the file would
serve them). Not timed: data loading, the LR schedule and the EMA update.

The eager UNet runs first (``--warmup`` steps, then ``--steps`` timed), then, with ``--compile``, the
same steps through ``torch.compile`` (compile time reported separately). The summary gives the ratio
compiled / eager and the operators that take the most time in one eager step (torch profiler).
Results go to ``benchmarks/results/<name>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from slowfast_vgen import diffusion
from slowfast_vgen.config import load_config
from slowfast_vgen.data.dataset import ChunkBatch
from slowfast_vgen.errors import run_cli
from slowfast_vgen.io_utils import atomic_write_json, result_path
from slowfast_vgen.model import model_summary
from slowfast_vgen.training import SlowTrainer, TrainConfig

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "train" / "cpu_recipe.yaml"
TEXTS = ["move left", "move right", "go up", "head east", "move down", "turn back west", "stay", "move up"]


def benchmark_config(config_path: str, overrides: list[str], model: str | None, output_dir: str) -> TrainConfig:
    """The training config of ``config_path`` + ``overrides`` (``load_config``, as the trainers), with
    what the benchmark needs: ``model`` as ``init_from``, ``output_dir``, and nothing read from disk
    or written besides the model (no resume, validation, samples, tracker or text-feature file)."""
    placeholder_data = {"data": {"root": output_dir}}  # the data are synthetic; a config without data.root still loads
    config = load_config(TrainConfig, config_path, overrides, defaults=placeholder_data)
    # the synthetic frames are made at the model's frame size, which the trainer checks data.height/width against
    frame = {"height": config.model.height, "width": config.model.width}
    if model:
        metadata = Path(model) / "slowfast_vgen.json"
        size = json.loads(metadata.read_text(encoding="utf-8")) if metadata.is_file() else {}
        frame = {side: size.get(side, getattr(config.data, side)) for side in ("height", "width")}
    return dataclasses.replace(config, init_from=model or "", output_dir=output_dir, resume="", validate_every=0,
                               sample_every=0, report_to="none", text_features="",
                               data=dataclasses.replace(config.data, **frame))


def synthetic_batch(trainer: SlowTrainer, batch: int, frames: int, context: int) -> ChunkBatch:
    """``batch`` chunks of ``frames`` random frames at the model's size, the first ``context`` clean."""
    bundle = trainer.bundle
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(batch, 3, frames, bundle.height, bundle.width, generator=generator) * 2 - 1
    mask = diffusion.context_mask(batch, context, frames - context)
    return ChunkBatch(pixels, mask, [TEXTS[i % len(TEXTS)] for i in range(batch)])


def training_step(trainer: SlowTrainer, batch: ChunkBatch, generator: torch.Generator) -> float:
    """One optimizer step of ``trainer`` as ``SlowTrainer.train`` takes it (one micro-batch): the
    trainer's loss, backward, gradient clipping, optimizer step."""
    accelerator = trainer.accelerator
    loss = trainer.loss(batch, generator)
    accelerator.backward(loss)
    if trainer.config.max_grad_norm > 0:
        accelerator.clip_grad_norm_(trainer.trainable_parameters(), trainer.config.max_grad_norm)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    if accelerator.device.type == "cuda":
        torch.cuda.synchronize(accelerator.device)  # the step's kernels are done when its time is taken
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


def measure(trainer: SlowTrainer, args: argparse.Namespace) -> dict:
    """Eager steps and their operator breakdown, then (``--compile``) the same steps with a compiled UNet."""
    batch = synthetic_batch(trainer, args.batch, args.frames, args.context)
    generator = torch.Generator().manual_seed(0)
    trainer.unet.train()  # as SlowTrainer.train
    # the LR schedule is not stepped: under the recipe's warmup the LR stays 0, so eager and compiled steps see
    # the same weights (AdamW's arithmetic, hence its time, does not depend on the LR)

    def run_step() -> float:
        return training_step(trainer, batch, generator)

    eager, _ = timed_steps(run_step, args.warmup, args.steps)
    result = {
        "eager_seconds_per_step": statistics.median(eager),
        "eager_seconds": eager,
        "breakdown_eager": operator_breakdown(run_step, args.top),
    }
    if args.compile:
        trainer.unet = torch.compile(trainer.unet)  # the trainer's loss runs whatever module trainer.unet is
        compiled, compile_seconds = timed_steps(run_step, args.warmup, args.steps)
        result.update({
            "compiled_seconds_per_step": statistics.median(compiled),
            "compiled_seconds": compiled,
            "first_compiled_step_seconds": compile_seconds,
            "compiled_over_eager": statistics.median(compiled) / statistics.median(eager),
        })
    return result


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG),
                        help="slow-learning config whose step is timed (default: configs/train/cpu_recipe.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. text_dropout=0.2")
    parser.add_argument("--model", help="model directory, replaces the config's init_from "
                                        "(default: a fresh model from the config's `model` section, tiny for the recipe)")
    parser.add_argument("--batch", type=int, default=8, help="chunks per step (default: 8, >= 1)")
    parser.add_argument("--frames", type=int, default=12, help="frames per chunk, context included (default: 12)")
    parser.add_argument("--context", type=int, default=4, help="clean context frames (default: 4)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: 2, >= 1)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps (default: 8, >= 1)")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile(unet)")
    parser.add_argument("--top", type=int, default=12, help="operators in the breakdown (default: 12)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"),
                        help="results folder (default: benchmarks/results)")
    parser.add_argument("--name", default="train_step", help="result file name without .json (default: train_step)")
    args = parser.parse_args(argv)
    if not 0 < args.context < args.frames:
        parser.error(f"--context must be in [1, --frames), got {args.context}")
    if args.batch < 1 or args.steps < 1 or args.warmup < 1:
        parser.error("--batch, --steps and --warmup must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    path = result_path(args.out, args.name)  # checked before the step is timed
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="train_step_") as output_dir:
        config = benchmark_config(args.config, args.overrides, args.model, output_dir)
        trainer = SlowTrainer(config)
        result = {
            "config": {**vars(args), "threads": torch.get_num_threads(), "torch": torch.__version__,
                       "machine": platform.processor() or platform.machine()},
            "train_config": dataclasses.asdict(config),
            "model": model_summary(trainer.bundle),
            **measure(trainer, args),
        }
    atomic_write_json(path, result)
    summary = f"eager {result['eager_seconds_per_step']:.3f} s/step"
    if args.compile:
        summary += (f", compiled {result['compiled_seconds_per_step']:.3f} s/step (x{result['compiled_over_eager']:.2f}; "
                    f"first step {result['first_compiled_step_seconds']:.0f} s)")
    print(f"{Path(args.config).name}: {summary}; top operator {result['breakdown_eager'][0]['operator']} "
          f"({100 * result['breakdown_eager'][0]['share']:.0f} %); wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
