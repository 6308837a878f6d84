"""Evaluate a model: ``python infer/eval.py --suite revisit --out results/`` (same as ``sfvgen eval``)."""

import sys

from slowfast_vgen.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
