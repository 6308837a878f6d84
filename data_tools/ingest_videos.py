"""Convert a folder of videos plus action annotations into our dataset format.

Annotations: an EPIC-KITCHENS-style CSV (``video_id,start_timestamp,stop_timestamp,narration``,
timestamps ``HH:MM:SS.ff``; extra columns ignored) or a JSONL of
``{"video": ..., "start_sec": ..., "end_sec": ..., "action": ...}`` rows. Videos are found
recursively under ``--videos`` by relative path or by file stem (``P01_01`` -> ``P01/P01_01.MP4``);
recognised files: .mp4 .m4v .mov .mkv .webm .avi .mpg .mpeg .mpe .m1v .m2v .vob (any case).

Output (see slowfast_vgen/data/README.md): one H.264 clip per segment,
``videos/<video>/<annotation line>.mp4``, at ``--fps`` and ``--height`` x ``--width`` (resized to
cover, centre-cropped), starting up to ``--context-sec`` before the segment so there are real
context frames; ``manifest.jsonl`` with one row per clip (``start_frame`` = lead-in frames).
Missing or undecodable videos are reported by name and skipped (exit code stays 0 when anything
was written).

    python data_tools/ingest_videos.py --videos EPIC/videos --annotations EPIC_100_train.csv --out data/epic
"""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Sequence

from slowfast_vgen.data.ingest import IngestConfig, ingest_videos
from slowfast_vgen.data.readers import add_reader_arguments, quiet_decoder_logs
from slowfast_vgen.errors import UserInputError, run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--videos", required=True, help="folder holding the source videos (searched recursively)")
    parser.add_argument("--annotations", required=True, help="EPIC-style .csv or segments .jsonl")
    parser.add_argument("--out", required=True, help="output dataset directory")
    parser.add_argument("--fps", type=float, default=8.0, help="output frame rate (default 8)")
    parser.add_argument("--height", type=int, default=32, help="output frame height, even (default 32)")
    parser.add_argument("--width", type=int, default=32, help="output frame width, even (default 32)")
    parser.add_argument(
        "--context-sec", type=float, default=1.0, help="seconds of lead-in kept before each segment (default 1)"
    )
    parser.add_argument("--split", default="train", help="split name written for every row (default train)")
    add_reader_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = IngestConfig(
            videos=args.videos,
            annotations=args.annotations,
            out=args.out,
            fps=args.fps,
            height=args.height,
            width=args.width,
            context_sec=args.context_sec,
            split=args.split,
            backend=args.backend,
        )
    except ValueError as err:
        raise UserInputError(str(err)) from None
    quiet_decoder_logs()
    progress = None
    if not args.no_progress:
        from tqdm import tqdm

        progress = functools.partial(tqdm, unit="video", desc="ingesting")
    summary = ingest_videos(config, progress=progress, report=lambda line: print(line, file=sys.stderr))
    print(
        f"wrote {summary.segments} segments from {summary.videos} videos to {config.out}; skipped {len(summary.skipped)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
