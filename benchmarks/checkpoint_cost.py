"""Seconds a training checkpoint costs to save and to resume from, and the share of them spent on the
SHA-256 digests that let a resume name a damaged file, in one run.

    python benchmarks/checkpoint_cost.py                                              # tiny random UNet
    python benchmarks/checkpoint_cost.py --model slowfast_vgen/assets/default_model --name checkpoint_cost_cpu_default
    python benchmarks/checkpoint_cost.py --name checkpoint_cost_cpu_wide 'block_out_channels=[320,640,1280]' \
        layers_per_block=2 attention_head_dim=64 norm_num_groups=32 cross_attention_dim=384

A checkpoint is what ``train/train_slow.py`` writes (:func:`~slowfast_vgen.checkpointing.save_checkpoint`):
the UNet's safetensors, AdamW's two moments per weight (so about three times the UNet's bytes) and
``trainer_state.json`` with every file's SHA-256. The UNet comes from ``--model`` or from a
:class:`~slowfast_vgen.model.ModelConfig` with ``key=value`` overrides (a random UNet of that shape: what a
checkpoint costs depends on its bytes, not on the values); the optimizer takes one step on zero gradients,
so that its moments exist. Each repeat, in one folder:

* ``save``: ``save_checkpoint`` (write to a temporary folder, digest every file, rename);
* ``digest``: :func:`~slowfast_vgen.io_utils.file_digests` of the written checkpoint alone, the part of
  ``save`` that hashes (it reads back what was just written, so the files come from the page cache);
  it hashes the files in parallel threads; ``digest_serial``: the same files hashed one after another;
* ``verify``: :func:`~slowfast_vgen.checkpointing.check_checkpoint_files`, the resume's digest check;
* ``load``: the resume's reads of the weights and the optimizer state (``load_unet_weights``,
  ``load_optimizer_state``).

The summary gives medians over ``--repeats`` and the ratios ``digest / save`` and
``verify / (verify + load)``: how much the corruption check adds to a save and to a resume, and
``digest / digest_serial``: what hashing the files in parallel saves. Files are
in the page cache here (just written); a resume after a reboot reads them from disk once more.
Results go to ``benchmarks/results/<name>.json``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from slowfast_vgen.checkpointing import (
    check_checkpoint_files,
    load_optimizer_state,
    load_unet_weights,
    read_checkpoint_state,
    save_checkpoint,
)
from slowfast_vgen.config import load_config
from slowfast_vgen.errors import UserInputError, run_cli
from slowfast_vgen.io_utils import atomic_write_json, file_digests, result_path, sha256_of_file
from slowfast_vgen.model import ModelBundle, ModelConfig, load_model


def trained_optimizer(unet: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW over ``unet`` after one step on zero gradients: both moments allocated, as in a checkpoint."""
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    for parameter in unet.parameters():
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return optimizer


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def measure(unet: torch.nn.Module, optimizer: torch.optim.Optimizer, folder: Path, repeats: int) -> list[dict]:
    """One row of seconds per repeat; each repeat saves step ``repeat`` (the older checkpoints are pruned)."""
    rows = []
    for step in range(1, repeats + 1):
        save = timed(lambda: save_checkpoint(folder, step, unet, optimizer, {}, total_limit=1))
        path = folder / f"checkpoint-{step}"
        digest = timed(lambda: file_digests(path, skip=lambda relative: relative.name == "trainer_state.json"))
        files = sorted(f for f in path.rglob("*") if f.is_file() and f.name != "trainer_state.json")
        digest_serial = timed(lambda: [sha256_of_file(file) for file in files])
        state = read_checkpoint_state(path)
        verify = timed(lambda: check_checkpoint_files(path, state))

        def load() -> None:
            load_unet_weights(unet, path)
            load_optimizer_state(optimizer, path / "optimizer.safetensors")

        rows.append({"save_seconds": save, "digest_seconds": digest, "digest_serial_seconds": digest_serial,
                     "verify_seconds": verify,
                     "load_seconds": timed(load),
                     "checkpoint_mb": sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model directory whose UNet is checkpointed (default: a random UNet of "
                                        "ModelConfig with the key=value overrides)")
    parser.add_argument("--repeats", type=int, default=3, help="checkpoints saved and resumed (default 3)")
    parser.add_argument("--name", default="checkpoint_cost_cpu_tiny", help="result file name (without .json)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"),
                        help="results folder (default: benchmarks/results, where the committed results are)")
    parser.add_argument("--dir", help="where the checkpoints go (default: a temporary folder, removed afterwards)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="ModelConfig overrides of the random UNet")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        raise UserInputError(f"--repeats must be >= 1, got {args.repeats}")
    if args.model and args.overrides:
        raise UserInputError("key=value overrides shape a random UNet: give them or --model, not both")
    out = result_path(args.out, args.name)  # checked before anything is measured
    if args.model:
        unet = load_model(args.model).unet
    else:
        unet = ModelBundle.from_config(load_config(ModelConfig, None, args.overrides)).unet
    optimizer = trained_optimizer(unet)
    with tempfile.TemporaryDirectory(prefix="checkpoint-cost-", dir=args.dir) as scratch:
        rows = measure(unet, optimizer, Path(scratch), args.repeats)
    median = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
    summary = {
        "unet_parameters": sum(p.numel() for p in unet.parameters()),
        **median,
        "digest_share_of_save": median["digest_seconds"] / median["save_seconds"],
        "verify_share_of_resume": median["verify_seconds"] / (median["verify_seconds"] + median["load_seconds"]),
        "digest_parallel_over_serial": median["digest_seconds"] / median["digest_serial_seconds"],
        "digest_gb_per_second": median["checkpoint_mb"] / 1e3 / median["digest_seconds"],
    }
    command = "python benchmarks/checkpoint_cost.py " + " ".join(argv if argv is not None else sys.argv[1:])
    atomic_write_json(out, {"machine": platform.processor() or platform.machine(), "command": command,
                            "torch_threads": torch.get_num_threads(), "summary": summary, "per_repeat": rows})
    print(f"{summary['unet_parameters']:,} UNet parameters, checkpoint {summary['checkpoint_mb']:.1f} MB: save "
          f"{summary['save_seconds']:.3f} s (digests {summary['digest_seconds']:.3f} s, "
          f"{summary['digest_share_of_save']:.0%}); resume check {summary['verify_seconds']:.3f} s + load "
          f"{summary['load_seconds']:.3f} s (check {summary['verify_share_of_resume']:.0%}); "
          f"hashing {summary['digest_gb_per_second']:.2f} GB/s, x{summary['digest_parallel_over_serial']:.2f} the time "
          "of hashing the files one after another")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
