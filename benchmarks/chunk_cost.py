"""Seconds and peak memory per chunk, with and without Temp-LoRA, measured in one run.

    python benchmarks/chunk_cost.py --chunks 12                      # tiny random model, CPU
    python benchmarks/chunk_cost.py --model DIR --chunks 125 --device cuda   # 1,000 frames

For every fast-learning mode it generates the same route from the same first frame and seed
and records, per chunk: generation seconds, Temp-LoRA update seconds and the peak memory
(CUDA allocator peak, or the process RSS high-water mark on CPU). Each mode runs in its own
process, so its peak memory is its own. The summary gives the Temp-LoRA overhead as a ratio
(paper / off) and the memory of the last chunk relative to the second, which stays ~1
because the memory is a fixed-size LoRA. Results go to ``benchmarks/results/<name>.json``; each mode's
``generation`` there is the GenerationConfig it ran with (the model's own settings with the overrides),
``model`` the model's architecture and its own generation defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from slowfast_vgen.config import load_config
from slowfast_vgen.errors import UserInputError, run_cli
from slowfast_vgen.fast_learner import FAST_MODES
from slowfast_vgen.io_utils import atomic_write_json, result_path
from slowfast_vgen.model import ModelBundle, ModelConfig, load_model, model_summary
from slowfast_vgen.session import GenerationConfig, GenerationSession

ROUTE = ["move right", "move right", "move up", "move left", "move left", "move down"]


def measure(bundle: ModelBundle, config: GenerationConfig, num_chunks: int) -> list[dict]:
    session = GenerationSession(bundle, config)
    rng = np.random.default_rng(0)
    session.start(rng.integers(0, 256, (bundle.height, bundle.width, 3), dtype=np.uint8))
    for index in range(num_chunks):
        session.step(ROUTE[index % len(ROUTE)])
    return [asdict(record) for record in session.records]


def summarise(records: list[dict], warmup: int) -> dict:
    steady = records[warmup:]  # main() keeps at least one chunk after the warm-up
    total = [r["seconds"] + r["memory_seconds"] for r in steady]
    memory = [r["peak_memory_mb"] for r in records if r["peak_memory_mb"] is not None]
    return {
        "seconds_per_chunk": statistics.mean(total),
        "generation_seconds_per_chunk": statistics.mean(r["seconds"] for r in steady),
        "memory_update_seconds_per_chunk": statistics.mean(r["memory_seconds"] for r in steady),
        "peak_memory_mb_max": max(memory) if memory else None,
        "peak_memory_last_over_second_chunk": (memory[-1] / memory[1]) if len(memory) > 1 else None,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model directory (default: a tiny random model built in code)")
    parser.add_argument("--model-config", help="ModelConfig YAML for the built model (default: tiny)")
    parser.add_argument("--chunks", type=int, default=12, help="chunks per mode (default 12)")
    parser.add_argument("--warmup", type=int, default=1, help="chunks excluded from the means (default 1)")
    parser.add_argument("--modes", default="off,paper", help="comma-separated fast modes (default off,paper)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda (default: cpu)")
    parser.add_argument("--name", default="chunk_cost_cpu_tiny", help="result file name (without .json; default: "
                                                                      "chunk_cost_cpu_tiny)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"),
                        help="results folder (default: benchmarks/results, where the committed results are)")
    parser.add_argument("--single-mode", help=argparse.SUPPRESS)  # internal: measure one mode, print JSON
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="GenerationConfig overrides")
    args = parser.parse_args(argv)
    if args.warmup < 0 or args.chunks < max(2, args.warmup + 1):  # memory growth is last over second chunk
        raise UserInputError(f"--chunks must be >= 2 and exceed --warmup >= 0, got {args.chunks} and {args.warmup}")
    if unknown := [mode for mode in args.modes.split(",") if mode not in FAST_MODES]:  # before any mode is measured
        raise UserInputError(f"--modes: unknown fast mode {unknown[0]!r}; choose from {', '.join(FAST_MODES)}")
    if args.single_mode is None:
        return run_all(args, argv if argv is not None else sys.argv[1:])

    if args.model:
        bundle = load_model(args.model, device=args.device)
    else:
        bundle = ModelBundle.from_config(load_config(ModelConfig, args.model_config)).to(args.device)
    config = load_config(GenerationConfig, overrides=[*args.overrides, f"fast.mode={args.single_mode}"],
                         defaults=bundle.metadata.get("generation", {}))  # the model's own defaults, as sfvgen uses
    records = measure(bundle, config, args.chunks)
    print(json.dumps({"device": str(bundle.device), "model": model_summary(bundle), "config": asdict(config),
                      "summary": summarise(records, args.warmup), "per_chunk": records}))
    return 0


def run_all(args, argv) -> int:
    """Measure every mode in a fresh process (so peak RSS is per mode), then compare."""
    out = result_path(args.out, args.name)  # checked before any mode is measured
    results = {"machine": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
               # OMP_WAIT_POLICY=PASSIVE (good beside another job) makes a solo run ~1.6x slower on 2 cores
               "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
               "chunks": args.chunks, "command": "python benchmarks/chunk_cost.py " + " ".join(argv), "modes": {}}
    for mode in args.modes.split(","):
        child = subprocess.run([sys.executable, __file__, *argv, "--single-mode", mode], capture_output=True, text=True)
        if child.returncode != 0:
            print(child.stderr, file=sys.stderr)
            return child.returncode
        measured = json.loads(child.stdout.strip().splitlines()[-1])
        results.update(device=measured["device"], model=measured["model"])
        results["modes"][mode] = {"generation": measured["config"], "summary": measured["summary"],
                                  "per_chunk": measured["per_chunk"]}
        summary = measured["summary"]
        print(f"{mode:>14}: {summary['seconds_per_chunk']:.3f} s/chunk "
              f"(update {summary['memory_update_seconds_per_chunk']:.3f} s), peak {summary['peak_memory_mb_max']:.0f} MB, "
              f"last/second-chunk memory {summary['peak_memory_last_over_second_chunk']:.3f}")
    if "off" in results["modes"] and "paper" in results["modes"]:
        off, paper = results["modes"]["off"]["summary"], results["modes"]["paper"]["summary"]
        results["temp_lora_time_ratio"] = paper["seconds_per_chunk"] / off["seconds_per_chunk"]
        results["temp_lora_memory_ratio"] = paper["peak_memory_mb_max"] / off["peak_memory_mb_max"]
        print(f"Temp-LoRA overhead: time x{results['temp_lora_time_ratio']:.3f}, "
              f"peak memory x{results['temp_lora_memory_ratio']:.3f} (paper, V100: x1.068 time, x1.037 memory)")
    atomic_write_json(out, results)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
