"""Precompute the frozen text encoder's features once per unique phrasing (a safetensors cache).

    python data_tools/text_features.py --model slowfast_vgen/assets/default_model --out text_features.safetensors
    python data_tools/text_features.py --model DIR --out FILE --manifest data     # + every action of a dataset

By default the cache holds every phrasing of the procedural worlds (both splits) and the empty
text; ``--manifest`` adds the actions of datasets (e.g. ingested videos). Training with
``text_features=FILE`` then needs neither the encoder's package nor its weights.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from slowfast_vgen.errors import run_cli


def main(argv: Sequence[str] | None = None) -> int:
    from slowfast_vgen.data.manifest import manifest_path, read_manifest
    from slowfast_vgen.io_utils import check_output_file
    from slowfast_vgen.model import load_model
    from slowfast_vgen.text_features import build_text_features, world_phrasings

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model directory whose text encoder makes the features")
    parser.add_argument("--out", required=True, help="output .safetensors file (written atomically)")
    parser.add_argument("--manifest", action="append", default=[], metavar="ROOT",
                        help="also cache every action of this dataset root (repeatable)")
    parser.add_argument("--no-worlds", action="store_true", help="leave out the procedural worlds' phrasings")
    args = parser.parse_args(argv)
    # before the model loads and every text is encoded: a file path, not the model's own files
    protected = [("--model directory", args.model)] + [("--manifest", manifest_path(root)) for root in args.manifest]
    check_output_file(args.out, "--out", protected)
    texts = [] if args.no_worlds else world_phrasings()
    for root in args.manifest:
        texts += [segment.action for segment in read_manifest(root)]
    texts = list(dict.fromkeys([""] + texts))
    bundle = load_model(args.model)
    cache = build_text_features(bundle, texts)
    path = cache.save(args.out)
    print(f"wrote {path}: {len(cache)} texts, encoder {cache.fingerprint}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
