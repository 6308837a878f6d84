"""The slow-fast learning loop (Algorithm 1b): Temp-LoRA per episode (inner), base weights (outer).

    accelerate launch train/train_loop.py --config configs/train/loop_navigation.yaml data.root=DIR

Same checkpoint, resume and exit-code rules as train_slow.py.
"""

import sys

from slowfast_vgen.train_cli import loop_main

if __name__ == "__main__":
    sys.exit(loop_main())
