"""Seconds and bytes written by a session save after every chunk, as the video grows, in one run.

    python benchmarks/session_save.py --chunks 1000                                   # tiny random model
    python benchmarks/session_save.py --model slowfast_vgen/assets/default_model --chunks 1000 --name session_save_cpu_default

``sfvgen generate --session DIR`` saves the session after every chunk. This measures that save alone:
the session gets chunks of random latents and frames of the model's shapes (what a save writes
depends on their sizes, not on their content; generating 1,000 chunks would take most of an hour on
the CPU) and its Temp-LoRA memory, and is saved to one directory after each. Per save it records the
seconds and the bytes of the files it wrote (a file hard-linked from the save before is not counted).
The summary compares the last 10 saves with saves 2-11 (the first also computes the model's
fingerprint): a save that rewrote the whole video grows with it, one that writes the new chunk
only stays flat.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from slowfast_vgen.config import load_config
from slowfast_vgen.errors import UserInputError, run_cli
from slowfast_vgen.io_utils import atomic_write_json, result_path
from slowfast_vgen.model import ModelBundle, ModelConfig, load_model, model_summary
from slowfast_vgen.session import ChunkRecord, GenerationConfig, GenerationSession


def add_random_chunk(session: GenerationSession, rng: np.random.Generator) -> None:
    """Append a chunk of random latents and frames as :meth:`GenerationSession.generate` appends one."""
    first = session.latent_chunks[0]
    count = session.config.frames_per_chunk
    start = len(session.frames)
    session.latent_chunks.append(torch.from_numpy(
        rng.standard_normal((1, first.shape[1], count, *first.shape[3:]), dtype=np.float32)).to(first.dtype))
    session.frames.extend(rng.integers(0, 256, (count, *session.frames[0].shape), dtype=np.uint8))
    session.records.append(ChunkRecord(index=len(session.records), action="move right", start_frame=start,
                                       end_frame=len(session.frames), context_frames=session.config.context_frames,
                                       seconds=0.0, memory_seconds=0.0, temp_lora_loss=None, peak_memory_mb=None))


def written_bytes(directory: Path, before: dict[int, int]) -> tuple[int, dict[int, int]]:
    """Bytes of the files under ``directory`` whose inode is not in ``before`` (inode -> size of the save
    before), and this save's inodes."""
    now = {p.stat().st_ino: p.stat().st_size for p in directory.rglob("*") if p.is_file()}
    return sum(size for inode, size in now.items() if inode not in before), now


def measure(session: GenerationSession, directory: Path, num_chunks: int) -> list[dict]:
    rng = np.random.default_rng(0)
    inodes, rows = {}, []
    for index in range(num_chunks):
        add_random_chunk(session, rng)
        start = time.perf_counter()
        session.save(directory)
        seconds = time.perf_counter() - start
        written, inodes = written_bytes(directory, inodes)
        rows.append({"chunks": index + 1, "save_seconds": round(seconds, 5), "written_mb": written / 1e6,
                     "session_mb": sum(inodes.values()) / 1e6})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model directory (default: a tiny random model built in code)")
    parser.add_argument("--chunks", type=int, default=1000, help="chunks, one save after each (default 1000)")
    parser.add_argument("--name", default="session_save_cpu_tiny", help="result file name (without .json)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"),
                        help="results folder (default: benchmarks/results, where the committed results are)")
    parser.add_argument("--session-dir", help="where to save (default: a temporary folder, removed afterwards)")
    args = parser.parse_args(argv)
    if args.chunks < 2:
        raise UserInputError(f"--chunks must be >= 2, got {args.chunks}")
    out = result_path(args.out, args.name)  # checked before anything is measured
    bundle = load_model(args.model) if args.model else ModelBundle.from_config(ModelConfig())
    config = load_config(GenerationConfig, defaults=bundle.metadata.get("generation", {}))
    session = GenerationSession(bundle, config)
    session.start(np.zeros((bundle.height, bundle.width, 3), np.uint8))
    with tempfile.TemporaryDirectory(prefix="session-save-") as scratch:
        rows = measure(session, Path(args.session_dir or Path(scratch) / "session"), args.chunks)
    window = max(1, min(10, (len(rows) - 1) // 2))
    first, last = rows[1:1 + window], rows[-window:]  # the first save also computes the model's fingerprint
    mean = lambda part, key: statistics.mean(row[key] for row in part)
    summary = {
        "chunks": args.chunks,
        "save_seconds_first": mean(first, "save_seconds"), "save_seconds_last": mean(last, "save_seconds"),
        "written_mb_first": mean(first, "written_mb"), "written_mb_last": mean(last, "written_mb"),
        "session_mb_last": rows[-1]["session_mb"],
    }
    summary["save_seconds_ratio"] = summary["save_seconds_last"] / summary["save_seconds_first"]
    summary["written_bytes_ratio"] = summary["written_mb_last"] / summary["written_mb_first"]
    command = "python benchmarks/session_save.py " + " ".join(argv if argv is not None else sys.argv[1:])
    atomic_write_json(out, {"machine": platform.processor() or platform.machine(), "command": command,
                            "model": model_summary(bundle), "fast_mode": config.fast.mode, "summary": summary,
                            "per_save": rows})
    print(f"{args.chunks} chunks: a save took {summary['save_seconds_first']:.4f} s and wrote "
          f"{summary['written_mb_first']:.3f} MB at first, {summary['save_seconds_last']:.4f} s and "
          f"{summary['written_mb_last']:.3f} MB at the end (x{summary['save_seconds_ratio']:.2f} time, "
          f"x{summary['written_bytes_ratio']:.2f} bytes); the session holds {summary['session_mb_last']:.1f} MB")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
