"""Check a dataset: decode every video and every manifest row against what really decodes.

Prints one line per bad row, ``manifest.jsonl:<line>: <video>: <reasons>``, then a summary.
Catches: lines that are not UTF-8 or not JSON, invalid fields, empty actions, paths escaping the
dataset root (by text or through a symlink), missing or empty files, undecodable or zero-frame
videos, truncated/corrupt videos (fewer decodable frames than the container reports), videos on
which decord and imageio return different frames ("decoders disagree", checked on a few sampled
frames when decord is installed) and segments beyond the decoded length.

Exit code: 0 when the dataset is clean, 1 when any row is bad, 2 when DIR is not a directory or
holds no manifest.jsonl.

    python data_tools/validate.py data/nav
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from slowfast_vgen.data.readers import add_reader_arguments, quiet_decoder_logs
from slowfast_vgen.data.validate import validate_dataset
from slowfast_vgen.errors import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("root", metavar="DIR", help="dataset root holding manifest.jsonl")
    add_reader_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_decoder_logs()
    from tqdm import tqdm

    with tqdm(
        unit="video", desc="decoding", file=sys.stderr, disable=args.no_progress or not sys.stderr.isatty()
    ) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        report = validate_dataset(args.root, backend=args.backend, progress=progress)
    for line in report.lines():
        print(line)
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(run_cli(main))
