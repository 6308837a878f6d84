"""`sfvgen eval`: suites run every variant x seed x route, summaries carry CIs, outputs are written."""

import json
import math

import numpy as np
import pytest
import torch

from slowfast_vgen.cli import main
from slowfast_vgen.config import load_config
from slowfast_vgen.evaluation import (
    EvalConfig, build_routes, evaluate, markdown_table, memory_curve, per_chunk_curves, save_results, summarise,
)
from slowfast_vgen.errors import UserInputError
from slowfast_vgen.metrics import footprint_masks
from slowfast_vgen.worlds import build_world

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
    for score in ("revisit_psnr_vs_truth", "revisit_psnr_vs_first", "scuts", "action_accuracy", "chunk_psnr", "detail_ratio"):
        assert paper[score]["n"] == 2 and paper[score]["low"] <= paper[score]["mean"] <= paper[score]["high"]
    assert paper["src"]["mean"] is None and "resnet18_weights" in result["availability"]["src"]["reason"]
    assert all(len(run["memory_loss"]) == 4 for run in result["runs"])
    assert all(loss is None for run in result["runs"] if run["variant"] == "off" for loss in run["memory_loss"])
    table = (out / "results.md").read_text()
    assert table.startswith("| score | off | paper |") and "| src | unavailable | unavailable |" in table
    for png in ("per_chunk_psnr.png", "revisit_contact_sheet.png", "memory_curve.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the memory curve: route out 2, back 2 -> revisits 2 and 4 chunks after the first visit
    curve = result["memory_curve"]["paper"]
    assert [p["gap_chunks"] for p in curve] == [2, 4] and all(p["n"] == 2 for p in curve)  # 2 seeds
    # gap 4 returns to the given start frame: no perfect-memory ceiling there, and it is the start score
    assert curve[1]["first_vs_truth"] == {"mean": None, "low": None, "high": None, "n": 0}
    assert curve[0]["first_vs_truth"]["n"] == 2 and math.isfinite(curve[0]["first_vs_truth"]["mean"])
    assert paper["revisit_start_psnr_vs_truth"]["mean"] == pytest.approx(curve[1]["psnr_vs_truth"]["mean"])
    assert paper["first_visit_psnr_vs_truth"]["mean"] == pytest.approx(curve[0]["first_vs_truth"]["mean"])
    headroom = [run["scores"]["first_visit_headroom"] for run in result["runs"] if run["variant"] == "paper"]
    inner = [(pair["first_vs_truth"], pair["psnr_vs_truth"]) for run in result["runs"] if run["variant"] == "paper"
             for pair in run["revisit_by_gap"] if pair["gap_chunks"] == 2]
    assert headroom == pytest.approx([first - revisit for first, revisit in inner])
    assert "Memory curve" in table and "| 4 |" in table and "paper first visit vs truth" in table


def test_memory_curve_groups_revisit_pairs_by_gap():
    runs = [{"variant": "paper", "revisit_by_gap": [{"gap_chunks": 2, "psnr_vs_truth": 20.0, "psnr_vs_first": 25.0},
                                                    {"gap_chunks": 6, "psnr_vs_truth": 12.0, "psnr_vs_first": 14.0}]},
            {"variant": "paper", "revisit_by_gap": [{"gap_chunks": 2, "psnr_vs_truth": 22.0, "psnr_vs_first": 27.0}]},
            {"variant": "off", "revisit_by_gap": [{"gap_chunks": 2, "psnr_vs_truth": 10.0, "psnr_vs_first": 11.0}]}]
    curve = memory_curve(runs, ["off", "paper"])
    assert [p["gap_chunks"] for p in curve["paper"]] == [2, 6] and [p["gap_chunks"] for p in curve["off"]] == [2]
    two = curve["paper"][0]
    assert two["n"] == 2 and two["psnr_vs_truth"]["mean"] == 21.0 and two["psnr_vs_first"]["mean"] == 26.0
    six = curve["paper"][1]["psnr_vs_truth"]
    assert six["mean"] == 12.0 and six["n"] == 1  # one pair: a mean, no interval


def test_memory_curve_intervals_are_over_runs_not_pooled_pairs():
    """Three pairs of one run at a gap are one observation: the run's mean, not three equal votes
    that outweigh the other run and narrow the interval."""
    pair = lambda value: {"gap_chunks": 2, "psnr_vs_truth": value, "psnr_vs_first": value, "first_vs_truth": None}
    runs = [{"variant": "off", "revisit_by_gap": [pair(10.0)] * 3}, {"variant": "off", "revisit_by_gap": [pair(20.0)]}]
    (point,) = memory_curve(runs, ["off"])["off"]
    assert point["n"] == 2 and point["pairs"] == 4
    truth = point["psnr_vs_truth"]
    assert truth["mean"] == 15.0 and truth["n"] == 2
    assert truth["high"] - truth["mean"] == pytest.approx(12.7062 * 5.0, rel=1e-3)  # t(0.975, 1 df) x sd / sqrt(2)


def test_chunk_suite_predicts_from_ground_truth_context(tiny_bundle):
    config = load_config(EvalConfig, overrides=[*TINY, "suite=chunk", "variants=[off]", "seeds=[0]", "actions_per_route=2"])
    result = evaluate(tiny_bundle, config)
    (run,) = result["runs"]
    assert len(run["predicted"]) == len(run["commanded"]) == 2
    (route,) = build_routes(config, 16, 16, frames_per_chunk=4)
    assert run["commanded"] == route.primitives[1:]  # chunk 0 is context only
    correct = [p == c for p, c in zip(run["predicted"], run["commanded"])]
    assert run["scores"]["action_accuracy"] == pytest.approx(sum(correct) / 2)
    assert np.isfinite(run["scores"]["psnr"]) and run["scores"]["psnr"] > 0
    assert run["scores"]["lpips"] is None  # no LPIPS weights configured: unavailable, never a number


def test_fvd_is_computed_per_variant_when_its_network_is_there(tiny_bundle, tmp_path):
    from test_metrics import TinyVideoNet

    from slowfast_vgen.metrics import PretrainedMetrics, detail_ratio

    config = load_config(EvalConfig, overrides=[*TINY, "suite=chunk", "variants=[off]", "seeds=[0]", "actions_per_route=3"])
    result = evaluate(tiny_bundle, config, networks=PretrainedMetrics(config.metrics, fvd_net=TinyVideoNet()))
    assert set(result["fvd"]) == {"off"} and math.isfinite(result["fvd"]["off"]) and result["fvd"]["off"] >= 0
    (run,) = result["runs"]  # the chunk suite's detail ratio is over its generated chunks against their truth
    assert run["scores"]["detail_ratio"] == detail_ratio(np.concatenate(run["clips"][0]), np.concatenate(run["clips"][1])) > 0
    assert result["availability"]["fvd"]["available"]
    assert f"off {result['fvd']['off']:.3f}" in markdown_table(result)
    save_results(result, tmp_path / "r")
    assert "clips" not in json.loads((tmp_path / "r" / "results.json").read_text())["runs"][0]
    assert "fvd" not in evaluate(tiny_bundle, config)  # no I3D weights configured: no number, the reason in availability


def test_a_perfect_revisit_counts_in_the_mean_instead_of_dropping_its_run():
    from slowfast_vgen.metrics import mean_fields, revisit_scores

    rng = np.random.default_rng(3)
    truth = rng.integers(0, 256, (17, 8, 8, 3), dtype=np.uint8)
    truth[16] = truth[0]
    generated = truth.copy()
    generated[8:16] = rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8)
    perfect = mean_fields(revisit_scores(generated, truth, [(8, 12), (0, 16)]))  # the return to the start is exact
    assert math.isfinite(perfect["psnr_vs_first"])
    runs = [{"variant": "paper", "scores": {"revisit_psnr_vs_first": perfect["psnr_vs_first"]}},
            {"variant": "paper", "scores": {"revisit_psnr_vs_first": 15.0}}]
    assert summarise(runs, ["paper"])["paper"]["revisit_psnr_vs_first"]["n"] == 2


def test_repeated_seeds_or_variants_are_refused():
    for override, message in (("seeds=[0,0]", r"seeds must not repeat, got \[0, 0\]"),
                              ("variants=[off,paper,paper]", r"variants must not repeat, got \['off', 'paper', 'paper'\]")):
        with pytest.raises(UserInputError, match=message):
            load_config(EvalConfig, overrides=[override])


def test_a_rerun_into_the_same_out_leaves_no_figure_of_the_earlier_run(tiny_bundle, tmp_path):
    out = tmp_path / "r"
    revisit = load_config(EvalConfig, overrides=[*TINY, "suite=revisit", "variants=[off]", "seeds=[0]"])
    save_results(evaluate(tiny_bundle, revisit), out)
    assert (out / "memory_curve.png").is_file() and (out / "revisit_contact_sheet.png").is_file()
    chunk = load_config(EvalConfig, overrides=[*TINY, "suite=chunk", "variants=[off]", "seeds=[0]", "actions_per_route=2"])
    save_results(evaluate(tiny_bundle, chunk), out)
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "results.md"]


def test_chunk_suite_action_accuracy_of_a_half_right_oracle_is_one_half(tiny_bundle, monkeypatch):
    """Pinned case: a "model" that returns the true chunk for the two "move down" actions and a
    still chunk for the others ("move right", "move left") is right on exactly 2 of 4 chunks."""
    from slowfast_vgen.session import GenerationSession

    config = load_config(EvalConfig, overrides=[*TINY, "suite=chunk", "variants=[off]", "seeds=[0]"])
    (route,) = build_routes(config, 16, 16, frames_per_chunk=4)
    assert route.primitives[1:] == ["move right", "move down", "move down", "move left"]

    def oracle(self, actions, callback=None, progress=False):
        start = self.num_frames  # 1 + i*K frames of ground-truth context before chunk i
        index = (start - 1) // 4
        if route.primitives[index] == "move down":
            return route.frames[start: start + 4]
        return np.repeat(route.frames[start - 1: start], 4, axis=0)  # (K, H, W, 3): no motion

    monkeypatch.setattr(GenerationSession, "generate", oracle)
    (run,) = evaluate(tiny_bundle, config)["runs"]
    assert run["predicted"] == ["stay", "move down", "move down", "stay"]
    assert run["scores"]["action_accuracy"] == 0.5


def test_rollout_routes_carry_exact_start_footprints_even_when_cropped():
    config = load_config(EvalConfig, overrides=[*TINY, "suite=rollout", "rollout_chunks=5", "phrasing=train"])
    (route,) = build_routes(config, 16, 12, frames_per_chunk=4)  # 16x16 views centre-cropped to 16x12
    assert len(route.primitives) == len(route.actions) == 5 and route.frames.shape == (1 + 5 * 4, 16, 12, 3)
    assert route.footprint.shape == (21, 16, 12) and route.footprint[0].all() and not route.footprint.all()
    map_size = build_world("navigation", route.world_seed, overrides=["view_size=16"]).map_size
    # the crop drops 2 columns on each side: the frame's top-left is 2 px right of the view's
    assert np.array_equal(route.footprint, footprint_masks(route.camera_positions + [2, 0], (16, 12), map_size))
    # every footprint pixel shows exactly what frame 0 shows at the same map position
    origin = route.camera_positions[0] + [2, 0]
    for f, (x, y) in enumerate(route.camera_positions + [2, 0]):
        rows, cols = np.nonzero(route.footprint[f])
        r0, c0 = (y + rows - origin[1]) % map_size, (x + cols - origin[0]) % map_size
        assert np.array_equal(route.frames[f][rows, cols], route.frames[0][r0, c0])
    with pytest.raises(UserInputError, match=r"even frame height and width .*got 16x15"):
        build_routes(config, 16, 15, frames_per_chunk=4)  # a half-pixel crop: no exact footprint


def test_rollout_suite_reports_per_chunk_curves_and_the_plot(tiny_model_dir, tmp_path):
    out = tmp_path / "rollout"
    code = main(["eval", "--model", str(tiny_model_dir), "--suite", "rollout", "--variants", "off,paper",
                 "--out", str(out), "--quiet", *TINY, "seeds=[0]", "rollout_chunks=3"])
    assert code == 0
    result = json.loads((out / "results.json").read_text())
    assert result["config"]["rollout_chunks"] == 3 and len(result["runs"]) == 2
    for run in result["runs"]:
        assert len(run["chunk_action_correct"]) == len(run["chunk_footprint_psnr"]) == len(run["commanded"]) == 3
        assert run["scores"]["action_accuracy"] == pytest.approx(np.mean(run["chunk_action_correct"]))
        present = [v for v in run["chunk_footprint_psnr"] if v is not None]
        assert run["chunk_footprint_psnr"][0] is not None  # the first chunk always overlaps the start view
        assert run["scores"]["footprint_chunks"] == len(present) == sum(n > 0 for n in run["chunk_footprint_pixels"])
        assert run["scores"]["footprint_psnr"] == pytest.approx(np.mean(present))
        assert run["scores"]["footprint_psnr_first4"] == pytest.approx(np.mean(present))  # 3 chunks: all are first 4
    for variant in ("off", "paper"):
        curves = result["curves"][variant]
        assert [p["chunk"] for p in curves["action_accuracy"]] == [0, 1, 2]
        assert len(curves["footprint_psnr"]) == 3 and curves["footprint_psnr"][0]["n"] == 1
        assert "footprint_psnr_first4" in result["summary"][variant]
    table = (out / "results.md").read_text()
    assert "| chunk | off action_accuracy | off footprint_psnr | paper action_accuracy |" in table
    from PIL import Image

    with Image.open(out / "rollout_curves.png") as image:
        assert image.size == (640, 800)  # two stacked plots


def test_rollout_curves_average_each_chunk_index_across_runs():
    runs = [{"variant": "off", "chunk_action_correct": [True, False], "chunk_footprint_psnr": [20.0, None]},
            {"variant": "off", "chunk_action_correct": [True, True], "chunk_footprint_psnr": [22.0, None]}]
    curves = per_chunk_curves(runs, ["off"])["off"]
    assert [p["mean"] for p in curves["action_accuracy"]] == [1.0, 0.5]
    first, second = curves["footprint_psnr"]
    assert first["mean"] == 21.0 and first["high"] - 21.0 == pytest.approx(12.7062)  # t(1) * sqrt(2) / sqrt(2)
    assert second == {"chunk": 1, "mean": None, "low": None, "high": None, "n": 0}  # no footprint left
    table = markdown_table({"summary": summarise([], ["off"]), "curves": {"off": curves}})
    assert "| 1 | 0.500 ± 6.353 (n 2) | unavailable (n 0) |" in table


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
    with pytest.raises(UserInputError, match="rollout_chunks must be >= 2, got 1"):
        load_config(EvalConfig, overrides=["suite=rollout", "rollout_chunks=1"])


def test_truth_memory_source_trains_the_memory_on_the_ground_truth_pair(tiny_bundle):
    """The diagnostic upper bound: the memory learns the route's true chunk and the true frames
    before it, as many as the generated context had; the video itself is still generated."""
    from slowfast_vgen.evaluation import _true_pair
    from slowfast_vgen.video_io import frames_to_tensor

    truth = np.random.default_rng(0).integers(0, 256, (1 + 3 * 4, 16, 16, 3), dtype=np.uint8)
    context, new = torch.zeros(1, 3, 2, 16, 16), torch.zeros(1, 3, 4, 16, 16)
    previous, chunk = _true_pair(tiny_bundle, truth, 4, 1, context, new)  # chunk 1: frames 5..8, after frame 4
    assert previous.shape == context.shape and chunk.shape == new.shape
    torch.testing.assert_close(previous, tiny_bundle.encode_frames(frames_to_tensor(truth[3:5])))
    torch.testing.assert_close(chunk, tiny_bundle.encode_frames(frames_to_tensor(truth[5:9])))

    config = load_config(EvalConfig, overrides=[*TINY, "seeds=[0]", "variants=[paper]"])
    generated = evaluate(tiny_bundle, config)["runs"][0]
    config = load_config(EvalConfig, overrides=[*TINY, "seeds=[0]", "variants=[paper]", "memory_source=truth"])
    from_truth = evaluate(tiny_bundle, config)["runs"][0]
    assert from_truth["memory_loss"] != generated["memory_loss"]  # it learned other data
    with pytest.raises(UserInputError, match="memory_source must be generated or truth"):
        load_config(EvalConfig, overrides=["memory_source=oracle"])


def test_memory_curve_gap_counts_chunks_since_the_place_was_last_seen(tiny_bundle, monkeypatch):
    """A route that passes its start three times (chunks 0, 2, 4): the third pass is 2 chunks
    after the second, not 4 after the first; 'vs first' still compares with the first visit."""
    from slowfast_vgen.metrics import psnr
    from slowfast_vgen.worlds.navigation import NavigationWorld, Route as NavRoute, find_revisits

    primitives = ["move right", "move left", "move up", "move down"]
    monkeypatch.setattr(NavigationWorld, "make_route",
                        lambda self, rng, num_actions, kind: NavRoute(kind, primitives, find_revisits(primitives)))
    config = load_config(EvalConfig, overrides=[*TINY, "seeds=[0]", "variants=[off]"])
    (route,) = build_routes(config, 16, 16, frames_per_chunk=4)
    assert route.revisit_pairs == [(0, 8), (0, 16)] and route.revisit_last == [0, 8]
    result = evaluate(tiny_bundle, config)
    (run,) = result["runs"]
    assert [pair["gap_chunks"] for pair in run["revisit_by_gap"]] == [2, 2]
    third = run["revisit_by_gap"][1]
    assert third["psnr_vs_first"] == pytest.approx(psnr(run["video"][16:17], run["video"][0:1]))
    assert third["psnr_vs_truth"] == pytest.approx(psnr(run["video"][16:17], route.frames[16:17]))
    (point,) = result["memory_curve"]["off"]
    assert point["gap_chunks"] == 2 and point["n"] == 1 and point["pairs"] == 2  # one run, two pairs


def _strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_json_files_are_strict_json_without_nan_or_infinity(tmp_path):
    from slowfast_vgen.io_utils import atomic_write_json

    atomic_write_json(tmp_path / "a.json", {"a": float("nan"), "b": [float("inf"), 1.0], "c": (np.float64("-inf"),)})
    assert _strict_json((tmp_path / "a.json").read_text()) == {"a": None, "b": [None, 1.0], "c": [None]}


def test_results_json_of_a_one_run_summary_is_strict_json(tmp_path):
    """One run: the CI bounds are nan; an exactly reproduced start frame scores inf."""
    from slowfast_vgen.evaluation import save_results

    runs = [{"variant": "off", "seed": 0, "route": 0, "scores": {"psnr": 20.0},
             "revisit_by_gap": [{"gap_chunks": 4, "psnr_vs_truth": 18.0, "psnr_vs_first": 19.0,
                                 "first_vs_truth": float("inf")}]}]
    result = {"suite": "revisit", "config": {}, "availability": {}, "summary": summarise(runs, ["off"]),
              "memory_curve": memory_curve(runs, ["off"]), "runs": runs}
    save_results(result, tmp_path)
    saved = _strict_json((tmp_path / "results.json").read_text())
    assert saved["summary"]["off"]["psnr"] == {"mean": 20.0, "low": None, "high": None, "n": 1}
    assert saved["runs"][0]["revisit_by_gap"][0]["first_vs_truth"] is None
    assert "| psnr | 20.000 |" in (tmp_path / "results.md").read_text()


def test_eval_config_refuses_world_seeds_that_training_sets_may_use():
    from slowfast_vgen.data.live_worlds import HELDOUT_WORLD_SEED_BASE

    assert load_config(EvalConfig).world_seed_base == HELDOUT_WORLD_SEED_BASE
    for base in (910_000_000, 920_000_000):  # the README's fresh worlds
        assert load_config(EvalConfig, overrides=[f"world_seed_base={base}"]).world_seed_base == base
    for base in (-1, 0, 5_000_000, HELDOUT_WORLD_SEED_BASE - 1):
        with pytest.raises(UserInputError, match=f"world_seed_base must be >= {HELDOUT_WORLD_SEED_BASE}.*got {base}"):
            load_config(EvalConfig, overrides=[f"world_seed_base={base}"])


def test_too_large_motion_search_is_refused_before_generating(tiny_bundle, monkeypatch):
    from slowfast_vgen.session import GenerationSession

    def never(*args, **kwargs):
        raise AssertionError("generated before the settings were checked")

    monkeypatch.setattr(GenerationSession, "generate", never)
    for suite in ("revisit", "chunk"):
        config = load_config(EvalConfig, overrides=[*TINY, f"suite={suite}", "metrics.motion_max_shift=8"])
        with pytest.raises(UserInputError, match=r"metrics.motion_max_shift must be <= 7 for this model's 16x16 "
                                                 r"frames, got 8"):
            evaluate(tiny_bundle, config)


def test_paired_difference_against_off_matches_runs_by_seed_and_route():
    """Routes differ a lot, paper is always ~1 dB better on the same route: the per-variant
    intervals overlap widely, the paired difference is clearly above 0."""
    from slowfast_vgen.evaluation import paired_vs_off
    from slowfast_vgen.metrics import mean_ci

    off = {(0, 0): 10.0, (0, 1): 20.0, (1, 0): 30.0, (1, 1): 16.0}
    gain = {(0, 0): 1.0, (0, 1): 1.2, (1, 0): 0.9, (1, 1): 1.1}
    runs = [{"variant": "off", "seed": s, "route": r, "world_seed": 900_000_000 + r, "scores": {"psnr": v, "src": None}}
            for (s, r), v in off.items()]
    runs += [{"variant": "paper", "seed": s, "route": r, "world_seed": 900_000_000 + r,
              "scores": {"psnr": off[s, r] + gain[s, r], "src": None}} for (s, r) in reversed(list(off))]
    runs.append({"variant": "paper", "seed": 7, "route": 0, "world_seed": 900_000_000,
                 "scores": {"psnr": 99.0, "src": None}})  # no off run with seed 7: not paired
    summary = summarise(runs, ["off", "paper"])
    assert summary["paper"]["psnr"]["low"] < summary["off"]["psnr"]["mean"] < summary["paper"]["psnr"]["mean"]
    assert summary["off"]["psnr"]["high"] > summary["paper"]["psnr"]["low"]  # unpaired: no visible difference
    paired = paired_vs_off(runs, ["off", "paper"])
    assert set(paired) == {"paper"}
    psnr = paired["paper"]["psnr"]
    mean, low, high = mean_ci(list(gain.values()))
    assert psnr["n"] == 4 and psnr["mean"] == pytest.approx(1.05)
    assert (psnr["low"], psnr["high"]) == pytest.approx((low, high)) and psnr["low"] > 0  # paired: clearly better
    assert paired["paper"]["src"] == {"mean": None, "low": None, "high": None, "n": 0}
    table = markdown_table({"summary": summary, "paired_vs_off": paired})
    assert "| score | paper − off |" in table and f"| psnr | 1.050 ± {high - 1.05:.3f} (n 4) |" in table
    assert "Paired difference" not in markdown_table({"summary": summary})


@pytest.mark.parametrize("overrides, message", [
    (["suite=long", "long_frames=-5"], "long_frames must be >= 1, got -5"),
    (["suite=long", "long_frames=0"], "long_frames must be >= 1, got 0"),
    (["suite=long", "long_frames=7", "generation.frames_per_chunk=4"],
     "long_frames must be >= 2 * generation.frames_per_chunk = 8 (a long route has at least two chunks), got 7"),
    (["metrics.scene_threshold=nan"], "scene_threshold must be a finite number > 0, got nan"),
    (["metrics.resnet18_weights=nope.safetensors"], "metrics.resnet18_weights='nope.safetensors' does not exist"),
    (["metrics.device=bogus"], "metrics.device must be cpu, cuda or cuda:N, got 'bogus'"),  # a traceback after the runs
])
def test_eval_refuses_bad_lengths_thresholds_and_weights_files_before_generating(overrides, message, tiny_model_dir,
                                                                                   tmp_path, monkeypatch, capsys):
    from slowfast_vgen.session import GenerationSession

    def never(*args, **kwargs):
        raise AssertionError("generated before the input was checked")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(GenerationSession, "generate", never)
    out = tmp_path / "eval"
    code = main(["eval", "--model", str(tiny_model_dir), "--variants", "off", "--out", str(out), "--quiet",
                 "routes=1", "seeds=[0]", *overrides])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: bad config: {message}"), err
    assert not out.exists()


@pytest.mark.parametrize("argv, message", [
    (["--variants", "paper,,off"], "error: bad override 'variants=[paper,,off]': its value is not valid YAML"),
    (["variants=[off"], "error: bad override 'variants=[off': its value is not valid YAML"),
    (["--out", "/proc/sfvgen-eval"], "error: --out: cannot write /proc/sfvgen-eval: "),  # after every run
])
def test_eval_refuses_unparsable_overrides_and_an_out_it_cannot_make_before_generating(
        argv, message, tiny_model_dir, tmp_path, monkeypatch, capsys):
    from slowfast_vgen.session import GenerationSession

    def never(*args, **kwargs):
        raise AssertionError("generated before the input was checked")

    monkeypatch.setattr(GenerationSession, "generate", never)
    out = ["--out", str(tmp_path / "eval")] if "--out" not in argv else []
    code = main(["eval", "--model", str(tiny_model_dir), "--quiet", *out, "routes=1", "seeds=[0]", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(message), err


def test_named_weights_file_must_be_a_file_and_unset_stays_unavailable(tmp_path):
    with pytest.raises(UserInputError, match=r"metrics\.lpips_weights='.*dir\.safetensors' is a directory"):
        (tmp_path / "dir.safetensors").mkdir()
        load_config(EvalConfig, overrides=[f"metrics.lpips_weights={tmp_path / 'dir.safetensors'}"])
    with pytest.raises(UserInputError, match=r"metrics\.i3d_weights='.*nowhere\.safetensors' does not exist"):
        load_config(EvalConfig, overrides=[f"metrics.i3d_weights={tmp_path / 'nowhere.safetensors'}"])
    (tmp_path / "real.safetensors").write_bytes(b"checked when loaded")
    config = load_config(EvalConfig, overrides=[f"metrics.src_image_size=32",
                                                f"metrics.resnet18_weights={tmp_path / 'real.safetensors'}"])
    assert config.metrics.resnet18_weights == str(tmp_path / "real.safetensors")
    assert load_config(EvalConfig).metrics.resnet18_weights is None  # unset: reported as unavailable


def test_blocks_chunk_suite_scores_actions_with_the_colour_tracking_reader(tiny_bundle, monkeypatch):
    """A "model" that returns the true chunk is right on every chunk the world executed as commanded;
    one that never moves is right only on the executed stays. Commands the world could not execute
    (a push into a block or the edge) are left out, and counted."""
    from slowfast_vgen.session import GenerationSession

    config = load_config(EvalConfig, overrides=[*TINY, "suite=chunk", "variants=[off]", "seeds=[0]", "world=blocks",
                                                "actions_per_route=12", "routes=2"])
    routes = build_routes(config, 16, 16, frames_per_chunk=4)
    assert all(route.reader is not None and len(route.executed) == 13 for route in routes)
    assert any(p.startswith("push") for route in routes for p in route.primitives)
    by_seed = {route.world_seed: route for route in routes}
    for mode in ("truth", "still"):
        def oracle(self, actions, callback=None, progress=False):
            route = next(r for r in routes if np.array_equal(r.frames[0], self.frames[0]))
            start = self.num_frames
            if mode == "truth":
                return route.frames[start: start + 4]
            return np.repeat(route.frames[start - 1: start], 4, axis=0)

        monkeypatch.setattr(GenerationSession, "generate", oracle)
        for run in evaluate(tiny_bundle, config)["runs"]:
            route = by_seed[run["world_seed"]]
            scored = [(c, e) for c, e in zip(route.primitives[1:], route.executed[1:]) if c == e]
            assert run["scores"]["action_chunks_scored"] == len(scored) > 0
            assert [c is not None for c in run["chunk_action_correct"]] == [c == e for c, e in
                                                                           zip(route.primitives[1:], route.executed[1:])]
            expected = 1.0 if mode == "truth" else np.mean([c == "stay" for c, _ in scored])
            assert run["scores"]["action_accuracy"] == pytest.approx(expected)
            if mode == "truth":
                assert run["predicted"] == route.executed[1:]


def test_blocks_rollout_suite_reports_curves_over_the_whole_fixed_view(tiny_model_dir, tmp_path):
    out = tmp_path / "blocks"
    code = main(["eval", "--model", str(tiny_model_dir), "--suite", "rollout", "--variants", "off", "--out", str(out),
                 "--quiet", *TINY, "seeds=[0]", "rollout_chunks=3", "world=blocks"])
    assert code == 0
    result = json.loads((out / "results.json").read_text())
    (run,) = result["runs"]
    assert result["config"]["world"] == "blocks" and len(run["chunk_action_correct"]) == 3
    assert run["chunk_footprint_pixels"] == [4 * 16 * 16] * 3  # a fixed camera: every pixel is knowable
    scored = [c for c in run["chunk_action_correct"] if c is not None]
    assert run["scores"]["action_chunks_scored"] == len(scored)
    if scored:
        assert run["scores"]["action_accuracy"] == pytest.approx(np.mean(scored))


@pytest.mark.parametrize("overrides, message", [
    (["world=city"], "world must be one of navigation, blocks, got 'city'"),
    (["world=blocks", "suite=revisit"], "world=blocks runs the chunk and rollout suites (revisit and long routes are "
                                        "camera routes of the navigation world), got suite 'revisit'"),
    (["world=blocks", "suite=long"], "got suite 'long'"),
])
def test_eval_refuses_a_world_it_cannot_score(overrides, message, tiny_model_dir, tmp_path, capsys):
    code = main(["eval", "--model", str(tiny_model_dir), "--out", str(tmp_path / "out"), *overrides])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
