"""Train an inverse dynamics model (planning, paper §3.4) on chunks rendered from procedural worlds.

    python train/train_idm.py output_dir=/work/idm/nav world=navigation max_minutes=5
    python train/train_idm.py --config my_idm.yaml output_dir=/work/idm/blocks world=blocks

Any ``IDMTrainConfig`` key (``slowfast_vgen/idm_training.py``) can be set as ``key=value`` or in
``--config YAML``. Re-running the same command resumes from ``output_dir/checkpoint``. Writes
``output_dir/model/`` (safetensors + config.json, for ``sfvgen plan --idm``) and
``output_dir/eval.json`` (accuracy on held-out worlds). Exit codes: 0 done or stopped by the
time budget (resumable), 2 bad input.
"""

import sys

from slowfast_vgen.idm_training import idm_main

if __name__ == "__main__":
    sys.exit(idm_main())
