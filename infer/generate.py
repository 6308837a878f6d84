"""Generate a long action-driven video: ``python infer/generate.py --actions "move right; move left" --out v.mp4``.

Same as ``sfvgen generate``; see ``--help``.
"""

import sys

from slowfast_vgen.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
