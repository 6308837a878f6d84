"""How well held-out phrasings land next to their primitive in a model's action space.

    python benchmarks/action_space.py --model slowfast_vgen/assets/default_model --name action_space_default
    python benchmarks/action_space.py --model runs/m/model --model-before slowfast_vgen/assets/default_model

For every procedural-world primitive, the centroid of its *training* phrasings' vectors is
computed; each *held-out* phrasing (never seen in training) is then assigned to the primitive
with the most cosine-similar centroid. Reported per space and per world (navigation: 5
primitives; blocks: 29):

* ``pooled``: the frozen text encoder's pooled sentence embedding (what a model without an
  action encoder conditions on) -- the "before";
* ``action``: token 0 of the model's action encoder (its global action vector, what every
  residual block of the UNet receives) -- the "after", for models that have one.

Also the mean cosine similarity of opposite-direction pairs (``move left`` / ``move right``
phrased alike) against same-primitive pairs of different wording. Results go to
``benchmarks/results/<name>.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

from slowfast_vgen.errors import run_cli
from slowfast_vgen.io_utils import atomic_write_json, result_path
from slowfast_vgen.model import ModelBundle, load_model, pooled_sentence_embedding
from slowfast_vgen.worlds.actions import NAVIGATION_PRIMITIVES, all_phrasings, opposite_phrasing_pairs, phrasings


def nearest_centroid_accuracy(vectors: dict[str, torch.Tensor], primitives: list[str]) -> dict[str, float]:
    """Held-out phrasings classified by the most cosine-similar training-phrasing centroid."""
    centroids = torch.stack([
        torch.nn.functional.normalize(torch.stack([vectors[t] for t in phrasings(p, "train")]).mean(0), dim=0)
        for p in primitives
    ])
    correct = total = 0
    for index, primitive in enumerate(primitives):
        for text in phrasings(primitive, "heldout"):
            similarity = centroids @ torch.nn.functional.normalize(vectors[text], dim=0)
            correct += int(similarity.argmax()) == index
            total += 1
    return {"accuracy": correct / total, "correct": correct, "heldout_phrasings": total}


def opposite_vs_synonym(vectors: dict[str, torch.Tensor]) -> dict[str, float]:
    """Mean cosine of navigation phrasings with the same wording but opposite direction, and of
    different phrasings of the same primitive."""
    cos = lambda a, b: float(torch.nn.functional.cosine_similarity(vectors[a], vectors[b], dim=0))  # noqa: E731
    opposite, synonym = [], []
    for direction in ("left", "up"):
        opposite += [cos(x, y) for x, y in opposite_phrasing_pairs(direction)]  # same verb and wording
        synonym += [cos(x, y) for x, y in itertools.combinations(phrasings(f"move {direction}", "all"), 2)]
    return {"opposite_direction_cosine": sum(opposite) / len(opposite), "same_primitive_cosine": sum(synonym) / len(synonym)}


def action_spaces(bundle: ModelBundle, texts: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    states, mask = bundle.encode_text_states(texts)
    spaces = {"pooled": pooled_sentence_embedding(states, mask)}
    if bundle.action_encoder is not None:
        spaces["action"] = bundle.encode_text(texts)[:, 0].float()
    return {name: dict(zip(texts, rows)) for name, rows in spaces.items()}


def measure(bundle: ModelBundle) -> dict:
    table = all_phrasings("all")
    texts = sorted({t for ts in table.values() for t in ts})
    worlds = {"navigation": list(NAVIGATION_PRIMITIVES), "blocks": sorted(p for p in table if p not in NAVIGATION_PRIMITIVES[:-1])}
    result = {}
    for space, vectors in action_spaces(bundle, texts).items():
        result[space] = {world: nearest_centroid_accuracy(vectors, primitives) for world, primitives in worlds.items()}
        result[space]["navigation_geometry"] = opposite_vs_synonym(vectors)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model directory (its action encoder is the 'after')")
    parser.add_argument("--model-before", help="a second model to report as 'before' (e.g. the previous model)")
    parser.add_argument("--name", default="action_space", help="result file name without .json (default: action_space)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"),
                        help="results folder (default: benchmarks/results, where the committed results are)")
    args = parser.parse_args(argv)
    path = result_path(args.out, args.name)  # checked before the models are loaded and measured
    report = {"model": args.model, "after": measure(load_model(args.model))}
    if args.model_before:
        report["model_before"] = args.model_before
        report["before"] = measure(load_model(args.model_before))
    atomic_write_json(path, report)
    print(json.dumps(report, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
