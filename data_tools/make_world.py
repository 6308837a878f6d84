"""Render a procedural-world dataset: H.264 episode videos, meta side files and manifest.jsonl.

Output format (see slowfast_vgen/data/README.md): ``videos/<episode>.mp4`` (frame 0 = start,
then K frames per action), ``meta/<episode>.json`` (exact ground truth), ``manifest.jsonl``
(one row per action: video, start_frame, end_frame exclusive, fps, action, episode, split) and
``dataset.json`` (settings and split sizes).

Splits: world ``w`` has seed ``seed * 1_000_000 + w``; worlds are split contiguously into
train | val | test, so no world seed is in two splits. Train rows use training phrasings only;
val/test rows use training and held-out phrasings. Re-running with the same settings resumes
(a damaged meta file is reported by name and its episode rendered again).

    python data_tools/make_world.py --out data/nav --episodes 1000 --seed 0
    python data_tools/make_world.py --out data/blocks --episodes 200 --world blocks --set num_blocks=4
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from typing import Sequence

from slowfast_vgen.config import add_dataclass_arguments, config_keys_help, dataclass_from_args
from slowfast_vgen.data.world_dataset import MakeWorldConfig, default_workers, make_world_dataset
from slowfast_vgen.errors import UserInputError, run_cli
from slowfast_vgen.worlds import available_worlds, world_spec


def build_parser() -> argparse.ArgumentParser:
    world_keys = "\n".join(  # what --set may change, with the world configs' own help (view_size comes from --size)
        f"--set keys of the {name} world:\n"
        + "\n".join("  " + line for line in config_keys_help(world_spec(name).config_cls) if not line.startswith("view_size "))
        for name in available_worlds()
    )
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=world_keys, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    # one option per MakeWorldConfig field: defaults and help come from the dataclass
    add_dataclass_arguments(
        parser,
        MakeWorldConfig,
        flags={"world_overrides": "--set"},
        runtime_defaults={"workers": "CPUs available, at most 8"},
        metavars={"world_overrides": "KEY=VALUE"},
    )
    parser.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = dataclass_from_args(
            MakeWorldConfig, args, workers=args.workers if args.workers is not None else default_workers()
        )
    except ValueError as err:
        raise UserInputError(str(err)) from None
    progress = None
    if not args.no_progress:
        from tqdm import tqdm

        progress = functools.partial(tqdm, total=config.episodes, unit="episode", desc="rendering")
    started = time.perf_counter()
    summary = make_world_dataset(config, progress=progress, report=lambda line: print(line, file=sys.stderr))
    print(
        f"wrote {summary['episodes']} episodes ({summary['segments']} segments; "
        f"episodes per split {summary['episode_splits']}) to {config.out} in {time.perf_counter() - started:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
