"""Join datasets that live in sub-directories of one root into a single manifest.

    python data_tools/merge_datasets.py data nav blocks    # data/nav + data/blocks -> data/manifest.jsonl

Video paths become ``<subdir>/<video>`` and episodes ``<subdir>-<episode>``; splits are kept.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from slowfast_vgen.errors import run_cli


def main(argv: Sequence[str] | None = None) -> int:
    from slowfast_vgen.data.manifest import merge_manifests, read_manifest

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="directory holding the datasets; the merged manifest.jsonl is written here")
    parser.add_argument("subdirs", nargs="+", help="dataset directories inside ROOT (each with its manifest.jsonl)")
    args = parser.parse_args(argv)
    path = merge_manifests(args.root, args.subdirs)
    print(f"wrote {path}: {len(read_manifest(path))} segments from {len(args.subdirs)} datasets")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
