"""`sfvgen eval`: suites run every variant x seed x route, summaries carry CIs, outputs are written."""

import json

import numpy as np
import pytest

from slowfast_vgen.cli import main
from slowfast_vgen.config import load_config
from slowfast_vgen.evaluation import EvalConfig, build_routes, evaluate, markdown_table, summarise
from slowfast_vgen.errors import UserInputError

TINY = ["routes=1", "seeds=[0,1]", "actions_per_route=4", "generation.frames_per_chunk=4", "generation.context_frames=4",
        "generation.window=8", "generation.sampler.num_inference_steps=1", "generation.fast.rank=4"]


def test_revisit_routes_return_to_their_start_exactly():
    config = load_config(EvalConfig, overrides=[*TINY, "routes=2"])
    routes = build_routes(config, 16, 16, frames_per_chunk=4)
    assert len(routes) == 2 and routes[0].world_seed != routes[1].world_seed
    for route in routes:
        assert route.frames.shape == (1 + 4 * 4, 16, 16, 3)
        assert np.array_equal(route.frames[0], route.frames[-1])  # back at the start
        assert (0, 16) in route.revisit_pairs
        assert len(route.actions) == len(route.primitives) == 4


def test_revisit_suite_scores_every_variant_and_writes_reports(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(["eval", "--model", str(tiny_model_dir), "--suite", "revisit", "--variants", "off,paper",
                 "--out", str(out), "--quiet", *TINY])
    assert code == 0
    result = json.loads((out / "results.json").read_text())
    assert set(result["summary"]) == {"off", "paper"}
    assert len(result["runs"]) == 2 * 2  # variants x seeds x routes
    paper = result["summary"]["paper"]
    for score in ("revisit_psnr_vs_truth", "revisit_psnr_vs_first", "scuts", "action_accuracy", "chunk_psnr"):
        assert paper[score]["n"] == 2 and paper[score]["low"] <= paper[score]["mean"] <= paper[score]["high"]
    assert paper["src"]["mean"] is None and "resnet18_weights" in result["availability"]["src"]["reason"]
    assert all(len(run["memory_loss"]) == 4 for run in result["runs"])
    assert all(loss is None for run in result["runs"] if run["variant"] == "off" for loss in run["memory_loss"])
    table = (out / "results.md").read_text()
    assert table.startswith("| score | off | paper |") and "| src | unavailable | unavailable |" in table
    for png in ("per_chunk_psnr.png", "revisit_contact_sheet.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_chunk_suite_predicts_from_ground_truth_context(tiny_bundle):
    config = load_config(EvalConfig, overrides=[*TINY, "suite=chunk", "variants=[off]", "seeds=[0]", "actions_per_route=2"])
    result = evaluate(tiny_bundle, config)
    (run,) = result["runs"]
    assert len(run["predicted"]) == len(run["commanded"]) == 2
    assert 0.0 <= run["scores"]["action_accuracy"] <= 1.0 and run["scores"]["psnr"] > 0
    assert run["scores"]["lpips"] is None  # no LPIPS weights configured: unavailable, never a number


def test_summary_mean_and_interval():
    runs = [{"variant": "paper", "scores": {"x": v, "src": None}} for v in (1.0, 2.0, 3.0)]
    summary = summarise(runs, ["paper"])
    assert summary["paper"]["x"]["mean"] == pytest.approx(2.0)
    assert summary["paper"]["x"]["high"] - 2.0 == pytest.approx(4.302653 * 1.0 / np.sqrt(3), rel=1e-4)
    assert summary["paper"]["src"] == {"mean": None, "low": None, "high": None, "n": 0}
    assert "| x | 2.000 ± 2.484 |" in markdown_table({"summary": summary})


def test_bad_eval_config_is_refused():
    with pytest.raises(UserInputError, match="variants must be among"):
        load_config(EvalConfig, overrides=["variants=[sometimes]"])
    with pytest.raises(UserInputError, match="suite must be one of"):
        load_config(EvalConfig, overrides=["suite=everything"])
