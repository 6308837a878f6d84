"""Render a procedural-world dataset: H.264 episode videos, meta side files and manifest.jsonl.

Output format (see slowfast_vgen/data/README.md): ``videos/<episode>.mp4`` (frame 0 = start,
then K frames per action), ``meta/<episode>.json`` (exact ground truth), ``manifest.jsonl``
(one row per action: video, start_frame, end_frame exclusive, fps, action, episode, split) and
``dataset.json`` (settings and split sizes).

Splits: world ``w`` has seed ``seed * 1_000_000 + w``; worlds are split contiguously into
train | val | test, so no world seed is in two splits. Train rows use training phrasings only;
val/test rows use training and held-out phrasings. Re-running with the same settings resumes.

    python data_tools/make_world.py --out data/nav --episodes 1000 --seed 0
    python data_tools/make_world.py --out data/blocks --episodes 200 --world blocks --set num_blocks=4
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from typing import Sequence

from slowfast_vgen.data.world_dataset import MakeWorldConfig, default_workers, make_world_dataset
from slowfast_vgen.errors import UserInputError, run_cli
from slowfast_vgen.worlds import available_worlds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="output dataset directory (created; re-running resumes)")
    parser.add_argument("--episodes", type=int, required=True, help="number of episodes to render (>= 1)")
    parser.add_argument(
        "--seed", type=int, default=0, help="dataset seed; world seeds are seed*1_000_000 + world index (default 0)"
    )
    parser.add_argument(
        "--world", default="navigation", help=f"world to render: {' or '.join(available_worlds())} (default navigation)"
    )
    parser.add_argument(
        "--size", type=int, default=32, help="view height and width in pixels, e.g. 32 or 64 (default 32)"
    )
    parser.add_argument("--frames-per-action", type=int, default=8, help="frames rendered per action, K (default 8)")
    parser.add_argument(
        "--actions-per-episode",
        type=int,
        default=10,
        help="actions per episode, M; videos have 1 + M*K frames (default 10)",
    )
    parser.add_argument("--fps", type=float, default=8.0, help="frame rate of the videos (default 8)")
    parser.add_argument(
        "--episodes-per-world", type=int, default=1, help="episodes (routes) rendered in each world (default 1)"
    )
    parser.add_argument(
        "--val-fraction", type=float, default=0.1, help="fraction of worlds in the val split (default 0.1)"
    )
    parser.add_argument(
        "--test-fraction", type=float, default=0.1, help="fraction of worlds in the test split (default 0.1)"
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="parallel worker processes (default: CPUs available, at most 8)"
    )
    parser.add_argument(
        "--set",
        dest="world_overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a world config field, e.g. --set speed=3 (repeatable)",
    )
    parser.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = MakeWorldConfig(
            out=args.out,
            episodes=args.episodes,
            seed=args.seed,
            world=args.world,
            size=args.size,
            frames_per_action=args.frames_per_action,
            actions_per_episode=args.actions_per_episode,
            fps=args.fps,
            episodes_per_world=args.episodes_per_world,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            workers=args.workers if args.workers is not None else default_workers(),
            world_overrides=list(args.world_overrides),
        )
    except ValueError as err:
        raise UserInputError(str(err)) from None
    progress = None
    if not args.no_progress:
        from tqdm import tqdm

        progress = functools.partial(tqdm, total=config.episodes, unit="episode", desc="rendering")
    started = time.perf_counter()
    summary = make_world_dataset(config, progress=progress)
    print(
        f"wrote {summary['episodes']} episodes ({summary['segments']} segments; "
        f"episodes per split {summary['episode_splits']}) to {config.out} in {time.perf_counter() - started:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
