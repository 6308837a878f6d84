"""Convert a folder of videos plus action annotations into our dataset format.

Annotations: an EPIC-KITCHENS-style CSV (``video_id,start_timestamp,stop_timestamp,narration``,
timestamps ``HH:MM:SS.ff``; extra columns ignored) or a JSONL of
``{"video": ..., "start_sec": ..., "end_sec": ..., "action": ...}`` rows. Videos are found
recursively under ``--videos`` by relative path, with or without the extension, or by file stem
when it is unique (``P01_01`` -> ``P01/P01_01.MP4``; a stem that fits several files is skipped by
name); recognised files: .mp4 .m4v .mov .mkv .webm .avi .mpg .mpeg .mpe .m1v .m2v .vob (any case).

Output (see slowfast_vgen/data/README.md): one H.264 clip per segment,
``videos/<episode>/<annotation line>.mp4`` (the episode is the video's stem, or its path where two videos share the stem), at ``--fps`` and ``--height`` x ``--width`` (resized to
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

from slowfast_vgen.config import add_dataclass_arguments, dataclass_from_args
from slowfast_vgen.data.ingest import IngestConfig, ingest_videos
from slowfast_vgen.data.readers import add_reader_arguments, quiet_decoder_logs
from slowfast_vgen.errors import UserInputError, run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    # one option per IngestConfig field (defaults and help from the dataclass); --backend and
    # --no-progress are the options every video-decoding data tool shares
    add_dataclass_arguments(parser, IngestConfig, exclude=["backend"])
    add_reader_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = dataclass_from_args(IngestConfig, args)
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
        + (f"; {summary.reused} clips kept from the interrupted run" if summary.reused else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
