"""Write a freshly initialised model directory: ``python infer/make_model.py --out DIR``.

Same as ``sfvgen make-model``; see ``--help``.
"""

import sys

from slowfast_vgen.cli import main

if __name__ == "__main__":
    sys.exit(main(["make-model", *sys.argv[1:]]))
