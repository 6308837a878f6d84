"""Interactive generation, one action per line: ``python infer/play.py --out play.mp4``.

Same as ``sfvgen play``; see ``--help``.
"""

import sys

from slowfast_vgen.cli import main

if __name__ == "__main__":
    sys.exit(main(["play", *sys.argv[1:]]))
