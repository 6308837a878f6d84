"""Argument parsing shared by ``train/train_slow.py`` and ``train/train_loop.py``."""

from __future__ import annotations

import os
from typing import Sequence

from .errors import EXIT_USER_ERROR, run_cli


def _main(config_cls_name: str, description: str, argv: Sequence[str] | None) -> int:
    from omegaconf.errors import OmegaConfBaseException

    from . import training
    from .config import ConfigKeysParser, keys_set, load_config
    from .errors import UserInputError, print_error

    config_cls = getattr(training, config_cls_name)
    parser = ConfigKeysParser(description=description)
    parser.config_class = config_cls
    parser.add_argument("--config", help="YAML file with the training config (see configs/train/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. max_steps=2000 data.root=data/nav max_minutes=60")
    args = parser.parse_args(argv)
    rank = process_rank()
    try:
        config = load_config(config_cls, args.config, args.overrides)
        for key in keys_set(args.config, args.overrides):
            name = key.removeprefix("live.")
            # only a run on live worlds reads live.*: a disk run (e.g. a saved config of a run that wrote them
            # before they were recorded as training took them) ignores the whole section, as it always did
            data_key = training.LIVE_FROM_DATA.get(name) if key.startswith("live.") else None
            if data_key and config.data_source == "live" and getattr(config.live, name) != getattr(config.data, data_key):
                # training replaces it by data.*'s (training.live_settings): another value was silently ignored
                raise UserInputError(f"{key}={getattr(config.live, name)} differs from data.{data_key}="
                                     f"{getattr(config.data, data_key)}, which training uses: set data.{data_key}")
    except (UserInputError, OmegaConfBaseException):
        if rank:  # every process reads the same command line: the main process says it once
            return EXIT_USER_ERROR
        raise
    try:
        result = training.train(config)
    except training.TrainingDiverged as err:
        print_error(str(err))
        return training.EXIT_DIVERGED
    except UserInputError as err:  # may concern this process only (its share of the data): say which
        if rank:
            raise UserInputError(f"process {rank}: {err}") from None
        raise
    print(f"rank checksum {result.replica_checksum:.10e}", flush=True)
    if result.interrupted or rank:
        return training.EXIT_PREEMPTED if result.interrupted else 0
    last = f", last loss {result.losses[max(result.losses)]:.5f}" if result.losses else ""
    if result.step < config.max_steps:  # max_minutes spent: checkpointed and exported, not finished
        print(f"stopped by max_minutes at step {result.step} of {config.max_steps}{last} (re-run to continue), "
              f"model so far in {result.output_dir / 'model'}")
    else:
        print(f"done: {result.step} steps{last}, model in {result.output_dir / 'model'}")
    return 0


def process_rank() -> int:
    """This process's rank in a ``torchrun`` / ``accelerate launch`` run (``RANK``), 0 in a plain one."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def slow_main(argv: Sequence[str] | None = None) -> int:
    return run_cli(lambda a: _main("TrainConfig", "Slow learning: masked conditional video diffusion (Eq. 1-2).", a), argv)


def loop_main(argv: Sequence[str] | None = None) -> int:
    return run_cli(lambda a: _main("LoopTrainConfig", "The slow-fast learning loop (Algorithm 1b).", a), argv)
