"""Planning (paper §3.4): inverse dynamics models, the oracle and random bounds, `sfvgen plan` end to end."""

import json
import re

import decord
import numpy as np
import pytest
import torch

from slowfast_vgen.cli import PLAN_TASKS, main
from slowfast_vgen.errors import UserInputError
from slowfast_vgen.idm_training import IDMTrainConfig, train_idm
from slowfast_vgen.inverse_dynamics import (
    ColourTrackingIDM, InverseDynamicsModel, PairSampler, ShiftSearchIDM, evaluate_reader, gripper_centre, load_idm,
)
from slowfast_vgen.planning import TASKS, PlanConfig, plan_fidelity, resolve_task, run_plan
from slowfast_vgen.session import GenerationConfig

TINY_IDM = ["size=16", "frames_per_action=3", "num_worlds=8", "val_worlds=4", "val_chunks=200", "batch_size=32",
            "channels=[8,16,32]", "hidden_dim=64", "lr=3e-3", "log_every=1000"]
TINY_GENERATION = ["generation.frames_per_chunk=3", "generation.context_frames=3", "generation.window=6",
                   "generation.fast.rank=4"]


def _plain(config) -> dict:
    """A model config without diffusers' bookkeeping keys, tuples as lists (as JSON stores them)."""
    return json.loads(json.dumps({k: v for k, v in config.items() if not k.startswith("_")}))


def _plan(task, policy="model", oracle=False, episodes=3, **kwargs):
    config = PlanConfig(task=task, episodes=episodes, policy=policy, oracle=oracle, **kwargs)
    return run_plan(config)


def test_cli_task_names_match_the_library():
    assert PLAN_TASKS == tuple(TASKS)


def test_oracle_returns_to_start_and_random_policy_does_not():
    oracle = _plan("navigate-return", oracle=True)
    random = _plan("navigate-return", policy="random", seed=1)  # (seed 0 returns once by chance: 8 random moves)
    for episode in oracle["episodes"]:
        assert episode["scores"]["final_distance_px"] <= 1.0 and episode["scores"]["waypoint_distance_px"] <= 1.0
        assert episode["scores"]["success"] and episode["scores"]["action_agreement"] == 1.0
    for episode in random["episodes"]:  # worlds 900000000-2
        assert episode["scores"]["final_distance_px"] > 1.0 and not episode["scores"]["success"]
    assert random["summary"]["success"]["mean"] == 0.0
    # the same tasks for both policies: held-out worlds and subgoals do not depend on the policy
    assert [e["start"] for e in oracle["episodes"]] == [e["start"] for e in random["episodes"]]


def test_blocks_oracle_puts_every_block_back_and_random_does_not():
    oracle = _plan("blocks-return", oracle=True, episodes=2)
    random = _plan("blocks-return", policy="random", episodes=2)
    assert all(e["scores"]["block_distance"] == 0.0 and e["scores"]["success"] for e in oracle["episodes"])
    assert not any(e["scores"]["success"] for e in random["episodes"])
    assert random["summary"]["block_distance"]["mean"] > 1.0


def test_open_loop_oracle_equals_closed_loop():
    closed = _plan("navigate-return", oracle=True, episodes=1, loop="closed")
    opened = _plan("navigate-return", oracle=True, episodes=1, loop="open")
    assert closed["episodes"][0]["steps"] == opened["episodes"][0]["steps"]
    assert np.array_equal(closed["videos"][0], opened["videos"][0])


def test_analytic_readers_are_exact_on_rendered_chunks():
    nav = PairSampler("navigation", 16, 3, seed=710, num_worlds=4)
    assert evaluate_reader(ShiftSearchIDM(), nav, 60)["accuracy"] == 1.0
    blocks = PairSampler("blocks", 32, 8, seed=710, num_worlds=4)
    reader = ColourTrackingIDM(blocks.world_config)
    world = blocks.world(0)
    script = world.move_and_return_script(np.random.default_rng(0), world.initial_state, 6)
    frames, _ = world.rollout(world.initial_state, script, 8)
    assert [reader.read(frames[i * 8:(i + 1) * 8 + 1]).primitive for i in range(6)] == script


def test_the_gripper_is_found_on_decoded_h264_frames(tmp_path):
    """The gripper's dark grey ring loses its colour to H.264's 4:2:0 chroma subsampling: a darkness-and-greyness
    test lost the gripper in 122 of 352 decoded full moves (read as ``stay``); the dot-in-ring luma contrast finds it."""
    from slowfast_vgen.data.readers import open_video
    from slowfast_vgen.video_io import write_video
    from slowfast_vgen.worlds import BlocksConfig, BlocksWorld

    reader, checked = ColourTrackingIDM(), 0
    for seed in range(3):
        world = BlocksWorld(BlocksConfig(push_fraction=0.0, return_fraction=0.0, full_gripper_moves=True), seed=seed)
        episode = world.sample_episode(np.random.default_rng(seed), 8, 4)
        truth = np.asarray(episode.meta["object_positions"]["gripper"], dtype=np.float64)
        for frame, centre in zip(episode.frames, truth):  # clean renders: within a fifth of a table unit
            assert np.abs(gripper_centre(frame) - centre).max() < 0.2
        path = write_video(tmp_path / f"episode-{seed}.mp4", episode.frames)
        decoded = open_video(path).get_frames(list(range(len(episode.frames))))
        for frame, centre in zip(decoded, truth):
            assert np.abs(gripper_centre(frame) - centre).max() < 0.4
        for i, primitive in enumerate(episode.primitives):
            if primitive.startswith("gripper"):
                assert reader.read(decoded[i * 4:(i + 1) * 4 + 1]).primitive == primitive
                checked += 1
    assert checked >= 15
    table = BlocksWorld(BlocksConfig(), seed=0)._table.astype(np.uint8)  # no gripper: nothing found
    assert gripper_centre(table) is None


def test_block_pairs_never_label_an_action_that_moved_nothing():
    """About 4 % of block pairs were blocked pushes or gripper moves at the edge, labelled with the commanded action
    while nothing (or only the gripper's approach) moved: labels no reader can learn, which capped IDM accuracy."""
    blocks = PairSampler("blocks", 32, 8, seed=700, num_worlds=8)
    rng = np.random.default_rng(700)
    samples = [blocks.sample(rng) for _ in range(400)]
    moved = [(primitive, displacement) for _, primitive, displacement in samples if primitive != "stay"]
    assert len(moved) > 300 and all(displacement.any() for _, displacement in moved)
    assert all(not np.array_equal(frames[0], frames[-1]) for frames, primitive, _ in samples if primitive != "stay")


def test_idm_save_load_round_trip_is_exact(tmp_path):
    torch.manual_seed(0)
    model = InverseDynamicsModel(image_size=16, frames_per_action=3, displacement_scale=3.0, channels=(8, 16), hidden_dim=32)
    model.save_pretrained(tmp_path / "idm", safe_serialization=True)
    assert not list((tmp_path / "idm").glob("*.bin"))
    loaded = load_idm(tmp_path / "idm")
    assert _plain(loaded.config) == _plain(model.config)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    chunk = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    assert model.eval().read(chunk) == loaded.read(chunk)
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "config.json").write_text((tmp_path / "idm" / "config.json").read_text())
    torch.save(model.state_dict(), tmp_path / "pickled" / "diffusion_pytorch_model.bin")
    with pytest.raises(UserInputError, match="pickle"):
        load_idm(tmp_path / "pickled")
    # a NaN scale loaded and read every displacement as None; a list made diffusers look for it on the hub
    config = json.loads((tmp_path / "idm" / "config.json").read_text())
    for text, message in ((json.dumps({**config, "displacement_scale": float("nan")}), "finite displacement_scale > 0"),
                          ("[1, 2]", "config.json: expected a JSON object, got list")):
        (tmp_path / "idm" / "config.json").write_text(text)
        with pytest.raises(UserInputError, match=f"^cannot load inverse dynamics model from {tmp_path / 'idm'}: .*{message}"):
            load_idm(tmp_path / "idm")


def test_idm_path_holding_another_networks_weights_is_a_user_error(tiny_model_dir, tmp_path, capsys):
    """A UNet directory given as --idm: diffusers leaves every IDM weight on the meta device."""
    unet = tiny_model_dir / "unet"
    with pytest.raises(UserInputError, match=rf"^cannot load inverse dynamics model from {unet}: "
                                             r"\d+ weights missing \(e\.g\. features\.0\.weight\)$"):
        load_idm(unet)
    assert main(["plan", "--oracle", "--episodes", "1", "--task", "navigate-return", "--idm", str(unet), "--quiet",
                 "--out", str(tmp_path / "plan")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: cannot load inverse dynamics model from {unet}: "), err
    assert not (tmp_path / "plan").exists()


def test_idm_trained_briefly_beats_chance_and_resumes_exactly(tmp_path):
    from slowfast_vgen.config import load_config

    result = train_idm(load_config(IDMTrainConfig, None, [f"output_dir={tmp_path / 'full'}", "max_steps=150", *TINY_IDM]),
                       progress=lambda line: None)
    evaluation = json.loads((tmp_path / "full" / "eval.json").read_text())
    assert result.finished and evaluation["step"] == 150 and evaluation["chance"] == 0.2
    assert evaluation["accuracy"] > 0.5, evaluation  # measured 0.98; chance is 0.2
    # stopped at step 20 and resumed to 40 == 40 straight (same batches, augmentation, optimizer state)
    common = ["max_steps=40", "val_chunks=5", "checkpoint_every=15", *(o for o in TINY_IDM if not o.startswith("val_chunks"))]
    train_idm(load_config(IDMTrainConfig, None, [f"output_dir={tmp_path / 'straight'}", *common]), progress=lambda line: None)
    pieces = [f"output_dir={tmp_path / 'pieces'}", *common]
    stopped = train_idm(load_config(IDMTrainConfig, None, [*pieces, "stop_after=20"]), progress=lambda line: None)
    assert (stopped.step, stopped.finished) == (20, False)
    resumed = train_idm(load_config(IDMTrainConfig, None, pieces), progress=lambda line: None)
    assert (resumed.step, resumed.finished) == (40, True)
    a, b = load_idm(tmp_path / "straight" / "model"), load_idm(tmp_path / "pieces" / "model")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


def test_a_resumed_idm_run_refuses_other_settings_and_names_damaged_checkpoint_files(tmp_path, capsys):
    from slowfast_vgen.config import load_config

    run = [f"output_dir={tmp_path / 'run'}", "max_steps=2", "val_chunks=2", "checkpoint_every=1",
           *(o for o in TINY_IDM if not o.startswith("val_chunks"))]
    train_idm(load_config(IDMTrainConfig, None, [*run, "stop_after=1"]), progress=lambda line: None)
    checkpoint = tmp_path / "run" / "checkpoint"
    for changed, message in ((["max_steps=3", "hidden_dim=16"], r"was trained with hidden_dim 64, this run has 16"),
                             (["max_steps=3", "world_overrides=[speed=1]"], r"was trained with world_overrides \[\], this run "
                                                                            r"has \['speed=1'\]")):
        with pytest.raises(UserInputError, match=rf"checkpoint {checkpoint} {message}; use a new output_dir"):
            train_idm(load_config(IDMTrainConfig, None, [*run, *changed]), progress=lambda line: None)
    # settings that are not the network's: a new lr or seed was taken silently, max_steps reshaped the cosine decay
    for changed, listed in ((["lr=0.5"], "lr 0.5 (saved: 0.003)"), (["max_steps=3"], "max_steps 3 (saved: 2)"),
                            (["seed=710", "batch_size=3"], "batch_size 3 (saved: 32), seed 710 (saved: 700)")):
        with pytest.raises(UserInputError) as caught:
            train_idm(load_config(IDMTrainConfig, None, [*run, *changed]), progress=lambda line: None)
        assert str(caught.value) == (f"checkpoint {checkpoint} continues a run made with other settings: {listed}; "
                                     "resume with its settings, or give a new output_dir")
    # a save that died between its two renames left the checkpoint moved aside: the next run resumes from it
    checkpoint.rename(checkpoint.with_name(".checkpoint.old-4242"))
    checkpoint.with_name(".checkpoint.4242-k1ll3d_x.tmp").mkdir()
    lines = []
    resumed = train_idm(load_config(IDMTrainConfig, None, [*run, "stop_after=1"]), progress=lines.append)
    assert f"resuming {checkpoint} at step 1" in lines and resumed.step == 2
    state = (checkpoint / "trainer_state.json").read_text()
    for damaged, reason in (('{"step": ', ""), ('{"step": -5}', "step -5 is negative"),  # a seeding traceback
                            (json.dumps({**json.loads(state), "step": 10**6}), "step 1000000 is beyond max_steps 2")):
        (checkpoint / "trainer_state.json").write_text(damaged)  # the last was "done" at once
        with pytest.raises(UserInputError, match=rf"checkpoint {checkpoint} is corrupt: trainer_state\.json: {reason}"):
            train_idm(load_config(IDMTrainConfig, None, run), progress=lambda line: None)
    (checkpoint / "trainer_state.json").write_text(state)
    optimizer = checkpoint / "optimizer.safetensors"
    optimizer.write_bytes(optimizer.read_bytes()[:50])
    with pytest.raises(UserInputError, match=rf"checkpoint {checkpoint} is corrupt: optimizer\.safetensors: "):
        train_idm(load_config(IDMTrainConfig, None, run), progress=lambda line: None)
    config = json.loads((checkpoint / "model" / "config.json").read_text())
    (checkpoint / "model" / "config.json").write_text(json.dumps({**config, "image_size": "abc"}))
    with pytest.raises(UserInputError, match=rf"cannot load inverse dynamics model from {checkpoint / 'model'}: "):
        train_idm(load_config(IDMTrainConfig, None, run), progress=lambda line: None)


def test_plan_fidelity_scores_the_whole_plan_and_its_return_leg():
    rng = np.random.default_rng(0)
    observed = rng.integers(0, 256, (1 + 4 * 3, 8, 8, 3), dtype=np.uint8)
    plan = observed.copy()
    plan[7:] = 255 - plan[7:]  # the return leg (frames after 2 chunks of 3 = frame 6) imagined wrong
    plan[1] = np.clip(plan[1].astype(int) + 8, 0, 255)  # the outward leg slightly off
    scores = plan_fidelity(plan, observed, return_start=6)
    assert scores["return_plan_psnr"] < scores["plan_psnr"] < 40
    wrong = (255 - observed[7:].astype(float)) / 255 - observed[7:].astype(float) / 255
    assert scores["return_plan_psnr"] == pytest.approx(-10 * np.log10(np.mean(wrong ** 2)), abs=1e-3)
    assert "plan_psnr" not in _plan("navigate-return", oracle=True, episodes=1, size=16)["episodes"][0]["scores"]


def test_cli_plan_with_oracle_writes_results_table_and_video(tmp_path, capsys):
    out = tmp_path / "oracle"
    assert main(["plan", "--task", "navigate-return", "--oracle", "--episodes", "1", "--quiet", "--out", str(out),
                 "outward_actions=2", "size=16", "generation.frames_per_chunk=3"]) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["world_model"] == "oracle" and result["summary"]["final_distance_px"]["mean"] == 0.0
    assert result["summary"]["final_distance_px"]["low"] is None  # one episode: no interval
    steps = result["episodes"][0]["steps"]
    assert len(steps) == 4 and all(s["executed"] == s["intended"] for s in steps)
    assert "final_distance_px" in (out / "results.md").read_text()
    video = decord.VideoReader(str(out / result["episodes"][0]["video"]))
    assert len(video) == 1 + 4 * 3 and video[0].shape[1] > video[0].shape[0]  # target | plan | executed
    assert "wrote" in capsys.readouterr().out


def test_cli_plan_flags_win_over_overrides_and_a_rerun_leaves_no_stale_episode_videos(tmp_path):
    out = tmp_path / "oracle"
    flags = ["plan", "--task", "navigate-return", "--oracle", "--quiet", "--out", str(out)]
    overrides = ["outward_actions=1", "size=16", "generation.frames_per_chunk=3"]
    assert main([*flags, "--episodes", "2", *overrides]) == 0
    assert sorted(p.name for p in (out / "episodes").iterdir()) == ["episode-000.mp4", "episode-001.mp4"]
    assert main([*flags, "--episodes", "1", "--seed", "4", *overrides, "episodes=2", "seed=9"]) == 0  # as generate: flags win
    result = json.loads((out / "results.json").read_text())
    assert len(result["episodes"]) == 1 and result["config"]["seed"] == 4
    assert [p.name for p in (out / "episodes").iterdir()] == ["episode-000.mp4"]


def test_cli_plan_with_the_tiny_video_model_and_a_learned_idm(tiny_model_dir, tmp_path):
    idm = tmp_path / "idm"
    InverseDynamicsModel(image_size=16, frames_per_action=3, displacement_scale=3.0, channels=(8, 16),
                         hidden_dim=32).save_pretrained(idm, safe_serialization=True)
    out = tmp_path / "model"
    assert main(["plan", "--task", "navigate-return", "--model", str(tiny_model_dir), "--episodes", "1", "--seed", "3",
                 "--fast", "paper", "--steps", "2", "--idm", str(idm), "--quiet", "--out", str(out),
                 "outward_actions=1", *TINY_GENERATION]) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["world_model"] == "video model" and result["fast_mode"] == "paper" and result["idm"] == str(idm)
    steps = result["episodes"][0]["steps"]
    assert len(steps) == 2 and all(s["memory_loss"] is not None and s["displacement"] is not None for s in steps)
    scores = result["episodes"][0]["scores"]
    assert 0 < scores["plan_psnr"] < 60 and 0 < scores["return_plan_psnr"] < 60  # an untrained plan is not the world
    assert "return_plan_psnr" in (out / "results.md").read_text()
    assert len(decord.VideoReader(str(out / "episodes" / "episode-000.mp4"))) == 1 + 2 * 3


def test_an_idm_trained_on_other_world_settings_is_refused(tmp_path):
    """`world_overrides=[speed=4]` was not compared: its displacements mean other moves than the plan's world."""
    from slowfast_vgen.planning import make_environment, make_reader

    env = make_environment("navigation", 900_000_000, 16, 3, 3)
    # speed=1 restates the default at 16x16 (view_size // 16); it was refused as another setting
    for overrides, refused in ((["speed=4"], True), ([], False), (["speed=1"], False)):
        InverseDynamicsModel(image_size=16, frames_per_action=3, displacement_scale=3.0, channels=(8, 16), hidden_dim=32,
                             world_overrides=overrides).save_pretrained(tmp_path / "idm", safe_serialization=True)
        if refused:
            with pytest.raises(UserInputError, match=r"was trained for world_overrides \['speed=4'\]"):
                make_reader(str(tmp_path / "idm"), "navigation", env, 3, 16)
        else:
            assert make_reader(str(tmp_path / "idm"), "navigation", env, 3, 16).config.world_overrides == overrides


def test_cli_plan_bad_inputs_exit_2(tiny_model_dir, tmp_path, capsys):
    assert main(["plan", "--task", "navigate-everywhere", "--oracle", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: unknown task 'navigate-everywhere': choose navigate-return, blocks-return or a task file "
                   "(YAML with world, outward, return)")
    task = tmp_path / "task.yaml"
    task.write_text("world: navigation\noutward: [move right, fly to the moon]\nreturn: [move left]\n")
    assert main(["plan", "--task", str(task), "--oracle", "--out", str(tmp_path / "x")]) == 2
    assert "outward subgoal 2 ('fly to the moon') is not an action" in capsys.readouterr().err
    assert main(["plan", "--task", "navigate-return", "--oracle", "--policy", "random", "--out", str(tmp_path / "x")]) == 2
    idm = tmp_path / "idm32"
    InverseDynamicsModel(image_size=32, frames_per_action=8, channels=(8, 16), hidden_dim=32).save_pretrained(idm)
    assert main(["plan", "--task", "navigate-return", "--oracle", "--idm", str(idm), "--out", str(tmp_path / "x"),
                 "size=16", "generation.frames_per_chunk=3"]) == 2
    assert "was trained for 32x32 frames (plan: 16x16), 8 frames per action (plan: 3)" in capsys.readouterr().err


@pytest.mark.parametrize("bad, message", [
    (["num_blocks=0"], "num_blocks must be in [1, 6], got 0"),
    (["num_blocks=-2"], "num_blocks must be in [1, 6], got -2"),
    (["num_blocks=1000"], "num_blocks must be in [1, 6], got 1000"),
    (["size=1000000"], "size must be an even number in [8, 1024], got 1000000"),
    (["--episodes", str(10**21)], "seed + episodes - 1 (the last episode's generation seed) must be <= 2**64 - 1"),
    (["world_seed_base=18446744073709551615", "--episodes", "2"],
     "world_seed_base + episodes - 1 (the last episode's world seed) must be <= 2**64 - 1"),
    # training world 0 of dataset seed 0 was accepted as a "held-out" world
    (["world_seed_base=0"], "world_seed_base must be >= 900000000 (the held-out worlds; training datasets use"),
    (["success_radius=.inf"], "success_radius must be a finite number >= 0, got inf"),  # every episode "succeeded"
    (["outward_actions=1000000000"], "outward_actions must be in [1, 1000], got 1000000000"),  # hung
])
def test_cli_plan_refuses_bad_counts_and_sizes_before_planning(bad, message, tmp_path, capsys, monkeypatch):
    import slowfast_vgen.planning as planning

    def never(*args, **kwargs):
        raise AssertionError("built a world before the config was checked")

    monkeypatch.setattr(planning, "make_environment", never)
    out = tmp_path / "plan"
    task = "blocks-return" if "num_blocks" in bad[0] else "navigate-return"
    assert main(["plan", "--task", task, "--oracle", "--quiet", "--out", str(out), *bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: bad config: {message}"] or (len(err) == 1 and err[0].startswith(
        f"error: bad config: {message}")), err
    assert not out.exists()


def test_cli_plan_refuses_an_out_under_a_file_before_planning(tmp_path, capsys, monkeypatch):
    import slowfast_vgen.planning as planning

    def never(*args, **kwargs):
        raise AssertionError("planned before --out was checked")

    monkeypatch.setattr(planning, "run_plan", never)
    (tmp_path / "file").write_text("keep me")
    out = tmp_path / "file" / "plan"
    assert main(["plan", "--task", "navigate-return", "--oracle", "--episodes", "1", "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --out: {tmp_path / 'file'} is a file, so {out} cannot be a directory"]
    assert (tmp_path / "file").read_text() == "keep me"


@pytest.mark.parametrize("task, episode", [("navigate-return", 34), ("blocks-return", 31)])
def test_a_policy_that_never_moves_cannot_succeed(task, episode):
    """Routes out and back to their start (right, left, left, right) turned at the start, so `stay` at every
    step succeeded: 13 of 200 held-out navigation episodes and 9 blocks ones (the first: these two)."""
    from slowfast_vgen.planning import TASKS, make_environment, make_task

    config = PlanConfig()
    template = resolve_task(task)
    world_seed = config.world_seed_base + episode
    env = make_environment(TASKS[task], world_seed, config.size, config.generation.frames_per_chunk, config.num_blocks)
    plan = make_task(template, env, np.random.default_rng(world_seed), config.outward_actions, config.phrasing)
    turn = plan.start
    for primitive in plan.primitives[:plan.return_from]:
        turn = env.simulate(turn, primitive)[-1]
    placed = slice(1, None) if task == "blocks-return" else slice(None)  # the blocks (row 0 is the gripper)
    assert not np.array_equal(turn[placed], plan.start[placed])


def test_success_needs_the_turn_and_every_block_back():
    """Scored on exact states: ending at the start without reaching the turn is no success (navigation), and
    one block left out of place fails the episode however well the others came back (blocks)."""
    from slowfast_vgen.planning import Task, blocks_scores, make_environment, navigation_scores

    k = 2
    env = make_environment("navigation", 900_000_000, 32, k, 3)
    target = np.array([[0, 0], [2, 0], [4, 0], [2, 0], [0, 0]])  # right, then back: the turn at (4, 0)
    task = Task(["move right", "move left"], ["move right", "move left"], 1, target[0])
    assert navigation_scores(env, task, target, target, 1.0)["success"]
    stayed = np.zeros_like(target)
    scores = navigation_scores(env, task, stayed, target, 1.0)
    assert scores["final_distance_px"] == 0 and scores["turn_distance_px"] == 4 and not scores["success"]

    env = make_environment("blocks", 900_000_000, 32, k, 3)
    start = np.array([[5, 5], [8, 8], [16, 16], [24, 24]])  # gripper, then three blocks
    states = np.stack([start] * 5)
    task = Task(["stay", "stay"], ["stay", "stay"], 1, start)
    assert blocks_scores(env, task, states, states, 1.0)["success"]
    moved = states.copy()
    moved[-1, 1] += [2, 0]  # one block 2 units off: the mean over the three blocks is 0.67, inside the radius
    scores = blocks_scores(env, task, moved, states, 1.0)
    assert scores["block_distance"] < 1.0 and not scores["success"]


def test_task_file_with_a_number_for_a_key_is_a_one_line_error(tmp_path):
    """`1: a` beside the three keys was a TypeError traceback (sorting int and str keys)."""
    task = tmp_path / "route.yaml"
    task.write_text("1: a\nworld: navigation\noutward: [move right]\nreturn: [move left]\n")
    with pytest.raises(UserInputError, match=r"needs exactly the keys world, outward, return; got \['1', 'outward'"):
        resolve_task(str(task))


@pytest.mark.parametrize("world, outward, back, message", [
    ("navigation", "[move right, move left]", "[stay]", "the outward subgoals bring the camera back to the start"),
    ("navigation", "[move right, head north]", "[go south]",
     "the return subgoals do not lead the camera back to the start (left over, in steps right and down: camera (1, 0))"),
    ("blocks", "[move the gripper left]", "[move the gripper right]", "the outward subgoals bring the blocks back"),
    ("blocks", "[push the red block left, push the blue block up]", "[push the red block right, push the blue block left]",
     "(left over, in steps right and down: blue (-1, -1))"),
])
def test_task_file_whose_route_cannot_succeed_is_refused(world, outward, back, message, tmp_path):
    """Success is measured at the start: a return leg that leads elsewhere could never succeed, and an
    outward leg that ends at the start let a policy that never moves succeed."""
    task = tmp_path / "route.yaml"
    task.write_text(f"world: {world}\noutward: {outward}\nreturn: {back}\n")
    with pytest.raises(UserInputError, match=re.escape(message)):
        resolve_task(str(task))


def test_task_file_runs_its_own_subgoals(tmp_path):
    task = tmp_path / "route.yaml"
    task.write_text("world: navigation\noutward: [move right, head north, head north]\nreturn: [go south, go south, move left]\n")
    template = resolve_task(str(task))
    assert template.world == "navigation" and template.back == ["go south", "go south", "move left"]
    result = run_plan(PlanConfig(task=str(task), episodes=1, oracle=True, size=16,
                                 generation=GenerationConfig(frames_per_chunk=2, context_frames=2, window=4)))
    episode = result["episodes"][0]
    assert [s["executed"] for s in episode["steps"]] == ["move right", "move up", "move up", "move down", "move down", "move left"]
    assert episode["scores"]["success"] and len(episode["scores"]["waypoint_distances_px"]) == 3


@pytest.mark.parametrize("bad", ["size=12", "size=4", "frames_per_action=0", "num_worlds=2000000", "val_worlds=2000000",
                                 "channels=[]", "channels=[0,8]", "world_overrides=[bogus=1]", "seed=900",
                                 "val_seed=-1", "max_minutes=inf",
                                 # a segfault, a tensor-size traceback, a model that reads nothing, a GroupNorm on 1x1
                                 "num_threads=100000", "hidden_dim=-5", "hidden_dim=0", "size=8"])
def test_train_idm_refuses_bad_sizes_and_counts_before_writing(bad, tmp_path, capsys):
    from slowfast_vgen.idm_training import idm_main

    out = tmp_path / "idm"
    assert idm_main([f"output_dir={out}", "max_steps=1", bad]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: bad config: ") and len(err.strip().splitlines()) == 1, err
    assert bad.split("=")[0] in err and not out.exists()


def test_idm_config_rejects_what_the_sampler_and_model_reject(tmp_path):
    """The config's checks repeat PairSampler's and InverseDynamicsModel's (idm_training.py cannot call them
    before anything is built): they must reject the same values."""
    from slowfast_vgen.config import load_config
    from slowfast_vgen.worlds import world_config

    def config_rejects(*overrides) -> bool:
        try:
            load_config(IDMTrainConfig, None, [f"output_dir={tmp_path}", *overrides])
        except UserInputError:
            return True
        return False

    def rejects(build) -> bool:
        try:
            build()
        except (ValueError, UserInputError):
            return True
        return False

    for size in (0, 4, 8, 9, 12, 16, 24, 32):
        for channels in ([], [0], [4], [4, 0], [4, 8], [4, 8, 8], [4, 8, 8, 8]):
            model = rejects(lambda: InverseDynamicsModel(image_size=size, channels=channels, hidden_dim=4))
            world = rejects(lambda: world_config("navigation", [f"view_size={size}"]))
            assert config_rejects(f"size={size}", f"channels={channels}") == (model or world), (size, channels)
    for frames, worlds in ((0, 8), (1, 0), (1, 1), (1, 1_000_000), (1, 1_000_001), (3, 8)):
        sampler = rejects(lambda: PairSampler("navigation", 16, frames, 700, worlds))
        assert config_rejects("size=16", f"frames_per_action={frames}", f"num_worlds={worlds}") == sampler
        assert config_rejects("size=16", f"frames_per_action={frames}", f"val_worlds={worlds}") == sampler
    for seed, worlds in ((-1, 1_000_000), (899, 1_000_000), (900, 1)):
        sampler = rejects(lambda: PairSampler("navigation", 16, 3, seed, worlds))
        assert config_rejects("size=16", f"seed={seed}", f"num_worlds={worlds}") == sampler
        assert config_rejects("size=16", "seed=0", f"val_seed={seed}", f"val_worlds={worlds}") == sampler


def test_pair_sampler_refuses_seeds_whose_worlds_reach_the_heldout_worlds():
    for seed, worlds in ((-1, 1_000_000), (900, 1)):  # (-1, 1_000_000): world seeds -1_000_000 .. -1
        with pytest.raises(ValueError, match=rf"^seed must be in \[0, 900\) so that its worlds .* got {seed}$"):
            PairSampler("navigation", 16, 3, seed=seed, num_worlds=worlds)


def test_train_idm_help_lists_every_config_key(capsys):
    """`train_idm.py --help` listed no key at all, while the other trainers list every one with its default."""
    from dataclasses import fields

    from slowfast_vgen.idm_training import IDMTrainConfig, idm_main

    with pytest.raises(SystemExit):
        idm_main(["--help"])
    text = capsys.readouterr().out
    assert all(f"  {field.name} (default: " in text for field in fields(IDMTrainConfig))
