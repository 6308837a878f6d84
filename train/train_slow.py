"""Slow learning of the UNet on a chunk dataset (Eq. 1-2).

    accelerate launch --multi_gpu --num_processes 2 train/train_slow.py --config configs/train/embedded_default.yaml data.root=DIR
    python train/train_slow.py --config configs/train/embedded_default.yaml data.root=DIR max_steps=100   # one process
    torchrun --nproc_per_node 2 train/train_slow.py ...                  # 2 CPU processes (gloo)

Re-running the same command resumes from the newest checkpoint (resume=latest). Exit codes:
0 done, 2 bad input, 3 diverged (non-finite losses), 143 stopped by SIGTERM after saving.
"""

import sys

from slowfast_vgen.train_cli import slow_main

if __name__ == "__main__":
    sys.exit(slow_main())
