"""The data_tools scripts end to end: exit codes, messages, and what they write."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from slowfast_vgen.data.ingest import IngestConfig, clip_times, ingest_videos, parse_timestamp
from slowfast_vgen.data.manifest import read_manifest
from slowfast_vgen.data.readers import open_video
from slowfast_vgen.data.world_dataset import MakeWorldConfig, make_world_dataset
from slowfast_vgen.errors import UserInputError
from slowfast_vgen.video_io import write_video

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / "data_tools"


def run_tool(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(TOOLS / name), *args], capture_output=True, text=True, cwd=REPO, timeout=300
    )


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"tool_{name[:-3]}", TOOLS / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["make_world.py", "ingest_videos.py", "validate.py"])
def test_every_option_has_help(name):
    parser = load_tool(name).build_parser()
    for action in parser._actions:
        assert action.help, f"{name}: option {action.option_strings or action.dest} has no help"
    assert parser.description


def test_make_world_help_lists_every_world_setting():
    import dataclasses

    from slowfast_vgen.worlds import BlocksConfig, NavigationConfig

    text = load_tool("make_world.py").build_parser().format_help()
    for cls in (NavigationConfig, BlocksConfig):
        for field in dataclasses.fields(cls):
            if field.name != "view_size":  # set by --size; --set view_size is refused
                assert f"  {field.name} (default: " in text and field.metadata["help"][:30] in text, field.name
    assert "--set keys of the blocks world:" in text and "  view_size (" not in text


@pytest.mark.parametrize("name, cls", [("make_world.py", MakeWorldConfig), ("ingest_videos.py", IngestConfig)])
def test_tool_options_take_default_and_help_from_the_config_dataclass(name, cls):
    import dataclasses

    options = {action.dest: action for action in load_tool(name).build_parser()._actions}
    for field in dataclasses.fields(cls):
        action = options[field.name]
        if field.name == "backend":  # the shared reader option (readers.add_reader_arguments)
            assert action.default == field.default
            continue
        assert action.help.startswith(field.metadata["help"]), (name, field.name)
        if field.name == "workers":  # computed at run time: CPUs available, at most 8
            assert action.default is None and "CPUs available" in action.help
        elif field.default is not dataclasses.MISSING:
            assert action.default == field.default and not action.required, (name, field.name)
            assert f"(default: {field.default})" in action.help
        elif field.default_factory is dataclasses.MISSING:
            assert action.required, (name, field.name)


def test_add_dataclass_arguments_maps_field_types_to_options():
    import argparse
    import dataclasses

    from slowfast_vgen.config import add_dataclass_arguments, dataclass_from_args, help_field

    @dataclasses.dataclass
    class Demo:
        name: str = help_field(help="a required name")
        count: int = help_field(3, help="how many")
        scale: float | None = help_field(None, help="optional scale")
        verbose: bool = help_field(False, help="talk more")
        color: bool = help_field(True, help="coloured output")
        tags: list[str] = help_field(["a"], help="tags")
        hidden: int = help_field(0, help="not an option")

    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, Demo, exclude=["hidden"], flags={"tags": "--tag"})
    args = parser.parse_args(["--name", "x", "--count", "5", "--scale", "0.5", "--verbose", "--no-color",
                              "--tag", "b", "--tag", "c"])
    assert dataclass_from_args(Demo, args) == Demo("x", 5, 0.5, True, False, ["a", "b", "c"], 0)
    defaults = dataclass_from_args(Demo, parser.parse_args(["--name", "y"]), hidden=7)
    assert defaults == Demo("y", 3, None, False, True, ["a"], 7)
    assert not hasattr(parser.parse_args(["--name", "y"]), "hidden")
    with pytest.raises(SystemExit):
        parser.parse_args([])  # --name is required: the field has no default


@pytest.mark.parametrize(
    "args, message",
    [
        (["--episodes", "0"], "error: episodes must be >= 1, got 0"),
        (["--episodes", "2", "--world", "maze"], "error: unknown world 'maze'; choose one of blocks, navigation"),
        (["--episodes", "2", "--size", "33"], "error: size must be an even number in [8, 1024], got 33"),
        (["--episodes", "2", "--set", "speed=0"], "error: bad config: speed must be in [1, view_size - 1]"),
        # these were tracebacks (inf, a huge size or map, blocks that could not be placed on some seeds' tables)
        # or silently wrong (a NaN texture rendered black, view_size overrode --size but dataset.json said --size)
        (["--episodes", "2", "--fps", "inf"], "error: fps must be a finite number > 0, got inf"),
        (["--episodes", "2", "--size", "1000000"], "error: size must be an even number in [8, 1024], got 1000000"),
        (["--episodes", "2", "--set", "map_scale=1000"], "error: bad config: the map is map_scale x view_size = 32000"),
        (["--episodes", "2", "--set", "texture_strength=nan"], "error: bad config: texture_strength must be a finite"),
        (["--episodes", "2", "--set", "view_size=16"], "error: set the frame size with --size, not --set view_size"),
        (["--episodes", "2", "--world", "blocks", "--set", "num_blocks=6", "--set", "block_size=8", "--set", "margin=8"],
         "error: bad config: 6 blocks of block_size 8 do not always fit on the table inside margin 8"),
        # tracebacks (inf, 1e30, a 298 GiB array, an int too large for C) or hangs (10**8 landmarks or regions)
        (["--episodes", "2", "--set", "landmark_radius_max=inf"], "error: bad config: need 1 <= landmark_radius_min <= "
                                                                  "landmark_radius_max <= 16 (half a 32x32 view)"),
        (["--episodes", "2", "--set", "num_landmarks=100000000"], "error: bad config: need num_regions in [1, 10000] "
                                                                  "and num_landmarks in [0, 10000]"),
        (["--episodes", "2", "--set", "num_regions=100000000"], "error: bad config: need num_regions in [1, 10000]"),
        (["--episodes", "2", "--world", "blocks", "--set", "gripper_step=1000000000000000000000"],
         "error: bad config: push_distance and gripper_step must be in [1, 32] table units"),
    ],
)
def test_make_world_bad_input_exits_2_with_one_line(tmp_path, args, message):
    result = run_tool("make_world.py", "--out", str(tmp_path / "ds"), "--no-progress", *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr
    assert not (tmp_path / "ds" / "manifest.jsonl").exists()


def test_a_repeated_sigterm_does_not_cut_the_exit_short():
    """After SIGTERM's cleanup the handler was put back to the default, so the repeat a scheduler (or the test
    below) sends while the process winds down killed it with -15 instead of exit 130."""
    script = (
        "import os, signal, sys, time\n"
        "from slowfast_vgen.errors import run_cli\n"
        "def main(argv):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(30)\n"
        "code = run_cli(main)\n"
        "os.kill(os.getpid(), signal.SIGTERM)  # the repeat, while the process exits\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr.splitlines()) == (130, ["interrupted"])


def test_sigterm_stops_a_tool_as_ctrl_c_does_and_leaves_no_temporary_video(tmp_path):
    """SIGTERM (what `timeout` and schedulers send) killed make_world at once: its half-written hidden
    `.NAME.tmp.mp4` stayed behind for good. run_cli now turns it into Ctrl-C: cleanup, exit 130."""
    import signal
    import time

    out = tmp_path / "nav"
    process = subprocess.Popen([sys.executable, str(TOOLS / "make_world.py"), "--out", str(out), "--episodes", "1",
                                "--frames-per-action", "6000", "--val-fraction", "0", "--test-fraction", "0",
                                "--workers", "1"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list((out / "videos").glob(".*.tmp*")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert list((out / "videos").glob(".*.tmp*")), "the video was not being written"
    time.sleep(0.5)  # past the encoder's start: a KeyboardInterrupt raised in an at-fork callback is swallowed
    for _ in range(20):  # ("Exception ignored in ..."), as Ctrl-C's is; send again, as a scheduler would
        process.send_signal(signal.SIGTERM)
        try:
            _, err = process.communicate(timeout=1)
            break
        except subprocess.TimeoutExpired:
            continue
    assert process.returncode == 130 and "interrupted" in err.splitlines(), err  # ffmpeg may write after it
    assert not list(out.rglob(".*.tmp*"))


def test_make_world_then_validate(tmp_path):
    out = tmp_path / "ds"
    result = run_tool(
        "make_world.py",
        "--out",
        str(out),
        "--episodes",
        "3",
        "--seed",
        "4",
        "--frames-per-action",
        "2",
        "--actions-per-episode",
        "3",
        "--workers",
        "2",
    )
    assert result.returncode == 0, result.stderr
    assert "wrote 3 episodes (9 segments" in result.stdout
    assert "rendering" in result.stderr  # the progress bar
    rows = read_manifest(out)
    assert len(rows) == 9 and {r.split for r in rows} == {"train", "val", "test"}
    # two worker processes write exactly what one process writes
    single = tmp_path / "single"
    make_world_dataset(
        MakeWorldConfig(out=str(single), episodes=3, seed=4, frames_per_action=2, actions_per_episode=3, workers=1)
    )
    assert (single / "manifest.jsonl").read_text() == (out / "manifest.jsonl").read_text()
    for meta in (single / "meta").iterdir():
        assert json.loads(meta.read_text()) == json.loads((out / "meta" / meta.name).read_text())
    for video in (single / "videos").iterdir():
        assert video.read_bytes() == (out / "videos" / video.name).read_bytes()  # rendering + x264 are deterministic

    result = run_tool("validate.py", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines() == [f"{out}: 9 rows, 3 videos: OK"]


def test_validate_script_reports_bad_rows(tmp_path):
    make_world_dataset(
        MakeWorldConfig(out=str(tmp_path), episodes=3, frames_per_action=2, actions_per_episode=2, workers=1)
    )
    video = tmp_path / "videos" / "navigation-000001.mp4"
    video.write_bytes(video.read_bytes()[:200])  # truncated
    lines = (tmp_path / "manifest.jsonl").read_text().splitlines()
    row = json.loads(lines[0])
    lines[0] = json.dumps({**row, "action": " "})
    lines.append(json.dumps({**row, "video": "../../etc/x.mp4"}))
    (tmp_path / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    result = run_tool("validate.py", str(tmp_path), "--no-progress")
    assert result.returncode == 1
    out = result.stdout.strip().splitlines()
    assert out[-1] == f"{tmp_path}: 7 rows, 3 videos: 4 bad row(s)"
    assert out[0] == "manifest.jsonl:1: videos/navigation-000000.mp4: empty action"
    assert out[1].startswith("manifest.jsonl:3: videos/navigation-000001.mp4: cannot decode video")
    assert out[2].startswith("manifest.jsonl:4: videos/navigation-000001.mp4: cannot decode video")
    assert out[3] == "manifest.jsonl:7: ../../etc/x.mp4: path '../../etc/x.mp4' escapes the dataset root ('..')"
    assert "moov atom" not in result.stderr  # decoder log noise is silenced

    missing = run_tool("validate.py", str(tmp_path / "nowhere"))
    assert (
        missing.returncode == 2
        and missing.stderr.strip() == f"error: dataset directory not found: {tmp_path / 'nowhere'}"
    )



@pytest.mark.parametrize("case, message", [
    ("empty directory", "{d} is not a dataset: its manifest.jsonl is missing; give the directory that holds the "
                        "dataset's manifest.jsonl"),
    ("videos only", "{d} is not a dataset: its manifest.jsonl is missing; give the directory that holds the "
                    "dataset's manifest.jsonl"),
    ("manifest is a directory", "{d} is not a dataset: its manifest.jsonl is not a file; give the directory that "
                                "holds the dataset's manifest.jsonl"),
    ("the manifest file", "{d}/manifest.jsonl is a file, not a dataset directory; give the directory that holds "
                          "manifest.jsonl"),
])
def test_validate_refuses_a_directory_without_a_manifest_with_one_line(case, message, tmp_path, capsys):
    """A directory without manifest.jsonl was reported as one bad row `manifest.jsonl:0: manifest.jsonl missing`
    with exit code 1, as if it were a dataset with a problem, instead of the wrong directory (exit 2)."""
    d = tmp_path / "ds"
    d.mkdir()
    if case == "videos only":
        (d / "videos").mkdir()
        (d / "videos" / "a.mp4").write_bytes(b"video")
    elif case == "manifest is a directory":
        (d / "manifest.jsonl").mkdir()
    elif case == "the manifest file":
        (d / "manifest.jsonl").write_text("")
    root = d / "manifest.jsonl" if case == "the manifest file" else d
    code, err = _tool_exit("validate.py", [str(root), "--no-progress"], capsys)
    assert code == 2 and err == ["error: " + message.format(d=d)], err
    assert capsys.readouterr().out == ""

# ---- ingest -----------------------------------------------------------------------------------------


def test_parse_timestamp():
    assert parse_timestamp("00:00:01.089") == pytest.approx(1.089)
    assert parse_timestamp("01:02:03.50") == pytest.approx(3723.5)
    assert parse_timestamp("02:03.5") == pytest.approx(123.5)
    assert parse_timestamp("12.25") == pytest.approx(12.25)
    assert parse_timestamp("00:00:03.50") == pytest.approx(3.5)
    with pytest.raises(ValueError, match="bad timestamp"):
        parse_timestamp("1:xx")
    for text in ("-1", "-0.5", "nan", "inf"):
        with pytest.raises(ValueError, match=re.escape(f"bad timestamp {text!r}; must be a ")):
            parse_timestamp(text)
    for text in ("1:75", "00:01:60", "01:60:00"):  # "1:75" was read as 135 s
        with pytest.raises(ValueError, match=re.escape(f"bad timestamp {text!r}; minutes and seconds must be below 60")):
            parse_timestamp(text)
    assert parse_timestamp("75:00") == 4500  # minutes without hours may run past the hour


def test_clip_times():
    times, lead_in = clip_times(1.0, 2.5, fps=8, context_sec=1.0)
    assert lead_in == 8 and len(times) == 20 and times[0] == 0.0 and times[lead_in] == 1.0
    times, lead_in = clip_times(0.3, 1.0, fps=8, context_sec=1.0)
    assert times[0] == 0.0 and lead_in == 3  # the lead-in is clipped at the video start


def source_video(path: Path, seconds: float = 3.0, fps: int = 24, height: int = 48, width: int = 64) -> None:
    """Grey frames whose level encodes the source frame index: level = 10 + 3 * i."""
    n = int(seconds * fps)
    levels = 10 + 3 * np.arange(n)
    write_video(path, np.broadcast_to(levels[:, None, None, None], (n, height, width, 3)).astype(np.uint8), fps=fps)


def test_ingest_epic_csv(tmp_path):
    videos = tmp_path / "src"
    source_video(videos / "P01" / "P01_01.mp4")
    (videos / "P01_02.mp4").write_bytes(b"garbage" * 500)
    csv = tmp_path / "ann.csv"
    csv.write_text(
        "narration_id,video_id,start_timestamp,stop_timestamp,narration,verb\n"
        "P01_01_0,P01_01,00:00:01.00,00:00:02.50,open the fridge,open\n"
        "P01_01_1,P01_01,00:00:00.25,00:00:01.00,take milk,take\n"
        "P01_02_0,P01_02,00:00:00.00,00:00:01.00,wash cup,wash\n"
        "P01_03_0,P01_03,00:00:00.00,00:00:01.00,close tap,close\n"
        "P01_01_2,P01_01,00:00:09.00,00:00:10.00,too late,take\n"
    )
    out = tmp_path / "out"
    result = run_tool(
        "ingest_videos.py", "--videos", str(videos), "--annotations", str(csv), "--out", str(out), "--no-progress"
    )
    assert result.returncode == 0, result.stderr
    assert "skipped P01_02: cannot decode P01_02.mp4" in result.stderr
    assert "skipped P01_03: video not found" in result.stderr
    assert "skipped P01_01 (annotation line 6): segment starts at 9.00s, after the video ends (3.00s)" in result.stderr
    assert "wrote 2 segments from 1 videos" in result.stdout and "skipped 3" in result.stdout
    rows = read_manifest(out)
    assert [(r.action, r.episode, r.start_frame, r.end_frame, r.fps) for r in rows] == [
        ("open the fridge", "P01_01", 8, 20, 8.0),
        ("take milk", "P01_01", 2, 8, 8.0),
    ]
    reader = open_video(out / rows[0].video)
    assert reader.num_frames == 20
    frames = reader.get_frames(range(20))
    assert frames.shape == (20, 32, 32, 3)
    # output frame k shows the source frame at time k/8 s, i.e. source frame 3k (level 10 + 9k)
    assert [abs(int(round(frames[k].mean())) - (10 + 9 * k)) <= 2 for k in (0, 8, 19)] == [True] * 3
    assert run_tool("validate.py", str(out), "--no-progress").returncode == 0


def test_ingest_finds_each_annotation_its_own_video_and_keeps_recordings_apart(tmp_path):
    """Two recordings named x (a/x.mp4, b/x.mp4) and two dotted ids (clip.v2, clip.v3): each segment
    reads its own source, a bare shared stem is ambiguous and skipped, and no two recordings share
    an episode (stem collisions took the first file's frames and merged the episodes)."""
    videos = tmp_path / "src"
    n = 20
    for folder, offset in (("a", 0), ("b", 120)):
        levels = offset + 4 * np.arange(n)
        write_video(videos / folder / "x.mp4",
                    np.broadcast_to(levels[:, None, None, None], (n, 16, 16, 3)).astype(np.uint8), fps=10)
    for name in ("clip.v2", "clip.v3"):
        source_video(videos / f"{name}.mp4", seconds=1.0, fps=10, height=16, width=16)
    rows = [("b/x", 1.0), ("a/x.mp4", 1.0), ("x", 0.0), ("clip.v2", 0.0), ("clip.v3.mp4", 0.0)]
    ann = tmp_path / "ann.jsonl"
    ann.write_text("".join(json.dumps({"video": v, "start_sec": t, "end_sec": t + 0.5, "action": "go"}) + "\n"
                           for v, t in rows))
    out = tmp_path / "out"
    result = run_tool("ingest_videos.py", "--videos", str(videos), "--annotations", str(ann), "--out", str(out),
                      "--fps", "10", "--height", "16", "--width", "16", "--context-sec", "0", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "skipped x: ambiguous name: 2 videos fit it" in result.stderr
    # it ended "give its path under the videos folder under SRC"
    assert f"; name it by its path under --videos (--videos {videos}; 1 segment(s) skipped)" in result.stderr
    manifest = read_manifest(out)
    assert [(r.episode, r.action) for r in manifest] == [("b_x", "go"), ("a_x", "go"), ("clip.v2", "go"),
                                                         ("clip.v3", "go")]
    first = [float(open_video(out / r.video).get_frames([0])[0].mean()) for r in manifest[:2]]
    assert abs(first[0] - (120 + 40)) <= 3 and abs(first[1] - 40) <= 3  # frame 10 of b/x.mp4, then of a/x.mp4
    assert len({r.video.split("/")[1] for r in manifest}) == 4  # one clip folder per recording


@pytest.mark.parametrize("content, message", [
    (b"video_id,start_timestamp,stop_timestamp,narration\nx,1,2,caf\xe9\n", "ann.csv: not UTF-8 text"),
    (b'{"video": "x", "start_sec": 0, "end_sec": 1, "action": null}\n', "ann.jsonl:1: .*action must be a string, got null"),
    (b'{"video": 3, "start_sec": 0, "end_sec": 1, "action": "go"}\n', "ann.jsonl:1: .*video must be a string, got 3"),
    (b"\xff\xfe{}", "ann.jsonl: not UTF-8 text"),
], ids=["latin1-csv", "null-action", "number-video", "utf16-jsonl"])
def test_ingest_refuses_undecodable_or_untyped_annotations_in_one_line(tmp_path, content, message):
    videos = tmp_path / "src"
    source_video(videos / "x.mp4", seconds=1.0, fps=10, height=16, width=16)
    ann = tmp_path / ("ann.csv" if message.startswith("ann.csv") else "ann.jsonl")
    ann.write_bytes(content)
    with pytest.raises(UserInputError, match=message):
        ingest_videos(IngestConfig(videos=str(videos), annotations=str(ann), out=str(tmp_path / "out")))


def test_ingest_reads_a_csv_with_a_byte_order_mark_and_refuses_non_finite_settings(tmp_path):
    videos = tmp_path / "src"
    source_video(videos / "x.mp4", seconds=1.0, fps=10, height=16, width=16)
    ann = tmp_path / "ann.csv"
    ann.write_bytes("video_id,start_timestamp,stop_timestamp,narration\nx,0,0.5,stir\n".encode("utf-8-sig"))
    summary = ingest_videos(IngestConfig(videos=str(videos), annotations=str(ann), out=str(tmp_path / "out"),
                                         height=16, width=16))
    assert summary.segments == 1
    for flag, value, message in (("--fps", "nan", "fps must be a number in"), ("--fps", "1e308", "fps must be"),
                                 ("--context-sec", "inf", "context_sec must be a number in [0, 3600]"),
                                 ("--context-sec", "1e308", "context_sec must be a number in [0, 3600]")):
        result = run_tool("ingest_videos.py", "--videos", str(videos), "--annotations", str(ann),
                          "--out", str(tmp_path / "o2"), flag, value, "--no-progress")
        assert result.returncode == 2 and result.stderr.startswith(f"error: {message}"), result.stderr
        assert "Traceback" not in result.stderr


def test_ingest_jsonl_and_errors(tmp_path):
    videos = tmp_path / "src"
    source_video(videos / "clip.mp4", seconds=2.0, fps=10, height=40, width=40)
    ann = tmp_path / "ann.jsonl"
    ann.write_text(json.dumps({"video": "clip.mp4", "start_sec": 0.0, "end_sec": 2.0, "action": "stir the pot"}) + "\n")
    summary = ingest_videos(
        IngestConfig(
            videos=str(videos), annotations=str(ann), out=str(tmp_path / "out"), fps=4, height=16, width=16, split="val"
        )
    )
    assert summary.segments == 1 and summary.skipped == []
    (row,) = read_manifest(tmp_path / "out")
    assert (row.start_frame, row.end_frame, row.split) == (0, 8, "val")
    ann.write_text('{"video": "clip.mp4", "start_sec": 0}\n')
    with pytest.raises(UserInputError, match="ann.jsonl:1: need a JSON object with video, start_sec, end_sec, action"):
        ingest_videos(IngestConfig(videos=str(videos), annotations=str(ann), out=str(tmp_path / "o2")))
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("video_id,narration\nx,y\n")
    with pytest.raises(UserInputError, match="missing column"):
        ingest_videos(IngestConfig(videos=str(videos), annotations=str(bad_csv), out=str(tmp_path / "o3")))
    result = run_tool(
        "ingest_videos.py",
        "--videos",
        str(videos),
        "--annotations",
        str(ann),
        "--out",
        str(tmp_path / "o4"),
        "--height",
        "15",
    )
    assert result.returncode == 2 and result.stderr.strip().startswith("error: height and width must be even")


def test_ingest_keeps_finished_segments_when_a_later_one_fails_to_decode(tmp_path, monkeypatch):
    """A decode error in one segment skips that segment only: earlier clips stay in the manifest, none orphaned."""
    import slowfast_vgen.data.ingest as ingest
    from slowfast_vgen.data.readers import VideoReadError

    videos = tmp_path / "src"
    source_video(videos / "A.mp4")
    source_video(videos / "B.mp4")
    real_open = ingest.open_video

    def open_corrupt_after_2s(path, backend="auto"):
        reader = real_open(path, backend)
        if Path(path).stem == "A":
            get_frames = reader.get_frames

            def failing(indices):
                if max(indices) >= 48:  # source frames from 2.0 s on (24 fps) do not decode
                    raise VideoReadError(path, "corrupt packet at frame 48")
                return get_frames(indices)

            reader.get_frames = failing
        return reader

    monkeypatch.setattr(ingest, "open_video", open_corrupt_after_2s)
    segments = [("A", 0.5, 1.0, "a1"), ("A", 2.25, 2.75, "a2"), ("A", 1.0, 1.5, "a3"), ("B", 0.5, 1.0, "b1")]
    ann = tmp_path / "ann.jsonl"
    keys = ("video", "start_sec", "end_sec", "action")
    ann.write_text("".join(json.dumps(dict(zip(keys, s))) + "\n" for s in segments))
    out = tmp_path / "out"
    lines: list[str] = []
    summary = ingest_videos(IngestConfig(videos=str(videos), annotations=str(ann), out=str(out)), report=lines.append)
    assert lines == [
        "skipped A (annotation line 2): decoding failed in A.mp4 at 2.25-2.75s: corrupt packet at frame 48"
    ]
    assert (summary.segments, summary.videos, len(summary.skipped)) == (3, 2, 1)
    rows = read_manifest(out)
    assert [(r.action, r.video) for r in rows] == [
        ("a1", "videos/A/000001.mp4"),
        ("a3", "videos/A/000003.mp4"),
        ("b1", "videos/B/000004.mp4"),
    ]
    on_disk = sorted(p.relative_to(out).as_posix() for p in (out / "videos").rglob("*.mp4"))
    assert on_disk == sorted(r.video for r in rows)  # no clip outside the manifest


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_ingest_rejects_non_finite_jsonl_times_with_one_line(tmp_path, value):
    videos = tmp_path / "src"
    source_video(videos / "clip.mp4", seconds=1.0, fps=8, height=32, width=32)
    ann = tmp_path / "ann.jsonl"
    ann.write_text(
        json.dumps({"video": "clip", "start_sec": 0.0, "end_sec": 1.0, "action": "ok"}) + "\n"
        f'{{"video": "clip", "start_sec": 0.0, "end_sec": {value}, "action": "bad"}}\n'
    )
    expected = "ann.jsonl:2: need a JSON object with video, start_sec, end_sec, action (end_sec must be a finite number"
    with pytest.raises(UserInputError, match=re.escape(expected)):
        ingest_videos(IngestConfig(videos=str(videos), annotations=str(ann), out=str(tmp_path / "o1")))
    if value != "NaN":
        return  # one CLI run is enough for the exit code and the message
    out = tmp_path / "o2"
    result = run_tool(
        "ingest_videos.py", "--videos", str(videos), "--annotations", str(ann), "--out", str(out), "--no-progress"
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip() == (
        f"error: {ann}:2: need a JSON object with video, start_sec, end_sec, action "
        "(end_sec must be a finite number of seconds, got nan)"
    )
    assert not (out / "manifest.jsonl").exists()


@pytest.mark.parametrize("name, bad, message", [
    ("ann.jsonl", '{"video": "clip", "start_sec": -1, "end_sec": 1.0, "action": "stir"}',
     "{ann}:2: need a JSON object with video, start_sec, end_sec, action (start_sec must be a number of seconds "
     ">= 0, got -1)"),
    ("ann.jsonl", '{"video": "clip", "start_sec": "3", "end_sec": 4, "action": "stir"}',
     "{ann}:2: need a JSON object with video, start_sec, end_sec, action (start_sec must be a number of seconds, "
     "got the string '3')"),
    ("ann.jsonl", '{"video": "clip", "start_sec": 0, "end_sec": "00:00:03.50", "action": "stir"}',
     "{ann}:2: need a JSON object with video, start_sec, end_sec, action (end_sec must be a number of seconds, "
     "got the string '00:00:03.50')"),
    ("ann.jsonl", '{"video": "clip", "start_sec": true, "end_sec": 4, "action": "stir"}',
     "{ann}:2: need a JSON object with video, start_sec, end_sec, action (start_sec must be a number of seconds, "
     "got true)"),
    ("ann.csv", "clip,-1,00:00:01.00,stir", "{ann}:3: start_timestamp: bad timestamp '-1'; must be a number of "
                                            "seconds >= 0"),
    ("ann.csv", "clip,00:00:01.00,-0.5,stir", "{ann}:3: stop_timestamp: bad timestamp '-0.5'; must be a number of "
                                              "seconds >= 0"),
    ("ann.csv", "clip,0,inf,stir", "{ann}:3: stop_timestamp: bad timestamp 'inf'; must be a finite number of seconds"),
    # an emoji cut in half by an exporter: a traceback after every clip was decoded, and no manifest
    ("ann.jsonl", '{"video": "clip", "start_sec": 0, "end_sec": 1, "action": "pan left \\ud83d"}',
     "{ann}:2: need a JSON object with video, start_sec, end_sec, action (action is not valid text: surrogates not "
     "allowed at character 9)"),
])
def test_ingest_refuses_negative_and_string_times_with_one_line(name, bad, message, tmp_path, monkeypatch, capsys):
    """`"start_sec": -1` (and a CSV start of -1) was clamped to 0 without a word, and `"start_sec": "3"` was read
    as a number: JSON times are numbers, while the CSV's HH:MM:SS.ff timestamps (first row) stay valid."""
    import slowfast_vgen.data.ingest as ingest

    monkeypatch.setattr(ingest, "open_video", _never)
    (tmp_path / "src").mkdir()
    ann = tmp_path / name
    if name.endswith(".csv"):
        ann.write_text(f"video_id,start_timestamp,stop_timestamp,narration\nclip,00:00:00.50,1.5,ok\n{bad}\n")
    else:
        ann.write_text(json.dumps({"video": "clip", "start_sec": 0.5, "end_sec": 1.5, "action": "ok"}) + f"\n{bad}\n")
    out = tmp_path / "out"
    code, err = _tool_exit("ingest_videos.py", ["--videos", str(tmp_path / "src"), "--annotations", str(ann),
                                                "--out", str(out), "--no-progress"], capsys)
    assert code == 2 and err == ["error: " + message.format(ann=ann)], err
    assert not out.exists()


def test_merge_datasets_joins_subdirectories(tmp_path):
    from slowfast_vgen.data.manifest import Segment, read_manifest, write_manifest

    for name in ("nav", "blocks"):
        (tmp_path / name).mkdir()
        write_manifest(tmp_path / name, [Segment(f"videos/{name}-0.mp4", 1, 9, 8.0, "go left", f"{name}-0", "train")])
    result = subprocess.run([sys.executable, "data_tools/merge_datasets.py", str(tmp_path), "nav", "blocks"],
                            cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    merged = read_manifest(tmp_path)
    assert [(s.video, s.episode) for s in merged] == [("nav/videos/nav-0.mp4", "nav-nav-0"),
                                                      ("blocks/videos/blocks-0.mp4", "blocks-blocks-0")]
    bad = subprocess.run([sys.executable, "data_tools/merge_datasets.py", str(tmp_path), "../elsewhere"],
                         cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: dataset '../elsewhere'")


def test_merge_refuses_two_datasets_that_give_one_episode_name(tmp_path, capsys):
    """`a/b` and `a-b` both merged to episode `a-b-ep0`: the slow-fast loop trained two recordings as one episode."""
    from slowfast_vgen.data.manifest import Segment, write_manifest

    for name in ("a/b", "a-b"):
        (tmp_path / name).mkdir(parents=True)
        write_manifest(tmp_path / name, [Segment("videos/v.mp4", 1, 9, 8.0, "go left", "ep0", "train")])
    code, err = _tool_exit("merge_datasets.py", [str(tmp_path), "a/b", "a-b"], capsys)
    assert code == 2 and err == ["error: datasets 'a/b' and 'a-b' both give the merged episode name 'a-b-ep0'; "
                                 "rename one of their folders"], err
    assert not (tmp_path / "manifest.jsonl").exists()


@pytest.mark.parametrize("field, value, problem", [
    ("action", "pan left \ud83d", "action 'pan left \\ud83d' is not valid text: surrogates not allowed at character 9"),
    ("video", "videos/v.mp4\x00", "path 'videos/v.mp4\\x00' holds a NUL character"),
])
def test_manifest_rows_with_text_no_tool_can_use_are_bad_rows(field, value, problem, tmp_path, capsys):
    """A lone surrogate passed validate.py, then merge, ingest and text_features stopped with tracebacks; a NUL
    byte in a path was a ValueError traceback in validate.py itself."""
    row = {"video": "videos/v.mp4", "start_frame": 1, "end_frame": 9, "fps": 8.0, "action": "go", "episode": "e",
           "split": "train", field: value}
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "manifest.jsonl").write_text(json.dumps(row) + "\n")  # JSON escapes keep the bad text
    result = run_tool("validate.py", str(tmp_path / "sub"), "--no-progress")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith("manifest.jsonl:1: ") and first.endswith(problem) and first.isprintable(), first
    code, err = _tool_exit("merge_datasets.py", [str(tmp_path), "sub"], capsys)
    assert code == 2 and len(err) == 1 and problem in err[0], err


# ---- issue #12: binary manifests, symlinks, MPEG-1 sources ------------------------------------------


def test_binary_manifest_is_reported_per_line_not_a_traceback(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "manifest.jsonl").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe\n")
    result = run_tool("validate.py", str(tmp_path / "sub"), "--no-progress")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "manifest.jsonl:1: not UTF-8 text (byte 0x89 at column 1), so not a JSON row"
    assert lines[1].startswith("manifest.jsonl:2: not valid JSON")
    assert lines[2] == "manifest.jsonl:3: not UTF-8 text (byte 0xff at column 9), so not a JSON row"
    assert lines[-1] == f"{tmp_path / 'sub'}: 3 rows, 0 videos: 3 bad row(s)"
    # read_manifest (here through merge_datasets.py) stops at the first bad line: one error line, exit 2
    merged = subprocess.run([sys.executable, "data_tools/merge_datasets.py", str(tmp_path), "sub"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert merged.returncode == 2 and "Traceback" not in merged.stderr
    assert merged.stderr.strip() == (
        f"error: {tmp_path / 'sub' / 'manifest.jsonl'}:1: not UTF-8 text (byte 0x89 at column 1), so not a JSON row "
        "(run data_tools/validate.py for a full report)"
    )


def test_symlink_leaving_the_root_is_refused(tmp_path):
    root, outside = tmp_path / "ds", tmp_path / "outside"
    frames = np.full((6, 32, 32, 3), 90, np.uint8)
    write_video(root / "videos" / "inside.mp4", frames, fps=8)
    write_video(outside / "secret.mp4", frames, fps=8)
    (root / "videos" / "alias.mp4").symlink_to(root / "videos" / "inside.mp4")  # stays inside: fine
    (root / "videos" / "link.mp4").symlink_to(outside / "secret.mp4")
    (root / "elsewhere").symlink_to(outside, target_is_directory=True)
    row = {"start_frame": 1, "end_frame": 6, "fps": 8.0, "action": "stay", "episode": "e", "split": "train"}
    videos = ["videos/inside.mp4", "videos/alias.mp4", "videos/link.mp4", "elsewhere/secret.mp4"]
    (root / "manifest.jsonl").write_text("".join(json.dumps({"video": v, **row}) + "\n" for v in videos))
    real = outside.resolve() / "secret.mp4"
    result = run_tool("validate.py", str(root), "--no-progress")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stdout.strip().splitlines() == [
        f"manifest.jsonl:3: videos/link.mp4: path 'videos/link.mp4' resolves to {real}, outside the dataset root "
        "(a symlink leaves it)",
        f"manifest.jsonl:4: elsewhere/secret.mp4: path 'elsewhere/secret.mp4' resolves to {real}, outside the "
        "dataset root (a symlink leaves it)",
        f"{root}: 4 rows, 2 videos: 2 bad row(s)",
    ]
    with pytest.raises(UserInputError, match=r"manifest.jsonl:3: path 'videos/link.mp4' resolves to .*outside the dataset root"):
        read_manifest(root)


MPEG1_SIZE = (48, 64)  # height, width: multiples of 16 (MPEG-1 macroblocks), a width decord reads


def mpeg1_frames(n: int = 40) -> np.ndarray:
    """Frames with a distinct pattern each: grey level 20 + 5 i and a white bar at column 8 (i mod 8)."""
    frames = np.empty((n, *MPEG1_SIZE, 3), np.uint8)
    for i in range(n):
        frames[i] = 20 + 5 * i
        frames[i, :, (i % 8) * 8 : (i % 8) * 8 + 8] = 255
    return frames


def write_mpeg1(path: Path, frames: np.ndarray, fps: int = 25) -> Path:
    """An MPEG-1 program stream (.mpg) written by imageio-ffmpeg (codec mpeg1video, GOP of 12)."""
    import imageio.v3 as iio

    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, frames, extension=".mpg", plugin="FFMPEG", fps=fps, codec="mpeg1video",
                macro_block_size=16, output_params=["-q:v", "2"], ffmpeg_log_level="error")
    return path


def pattern_of(frame: np.ndarray, references: np.ndarray) -> int:
    """Index of the reference frame nearest to ``frame`` (mean absolute difference)."""
    return int(np.abs(references.astype(np.int16) - frame.astype(np.int16)).mean(axis=(1, 2, 3)).argmin())


def imageio_frames(path: Path) -> np.ndarray:
    import imageio.v3 as iio

    return np.stack(list(iio.imiter(path, plugin="FFMPEG")))


def _phone_video(tmp_path: Path) -> Path:
    """A phone's video: 60 frames, frame k grey level 4k, 20 at 25 fps, then 10 fps (``src/phone.mp4``)."""
    import imageio_ffmpeg

    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    constant = tmp_path / "constant.mp4"
    writer = imageio_ffmpeg.write_frames(str(constant), (32, 32), fps=25, codec="libx264", pix_fmt_out="yuv444p",
                                         output_params=["-qp", "0"], macro_block_size=16)
    writer.send(None)
    for k in range(60):
        writer.send(np.full((32, 32, 3), 4 * k, np.uint8))  # frame k is grey level 4k
    writer.close()
    (tmp_path / "src").mkdir()
    subprocess.run([ffmpeg, "-v", "error", "-i", str(constant), "-vf", "setpts='if(lt(N,20),N/25,0.8+(N-20)/10)/TB'",
                    "-fps_mode", "vfr", "-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv444p",
                    str(tmp_path / "src" / "phone.mp4")], check=True, capture_output=True, timeout=120)
    return tmp_path / "src" / "phone.mp4"


@pytest.mark.parametrize("backend", ["decord", "imageio"])
def test_ingest_picks_frames_by_their_times_in_a_variable_frame_rate_video(tmp_path, backend):
    """A phone's video: 20 frames at 25 fps, then 10 fps. Frame k was taken as shown at k / (average fps),
    so the clip of 2.0-3.0 s held frames from about 1.2 s; the container's presentation times give the right
    ones. Through imageio, ffmpeg also repeated frames to hold the nominal 25 fps (119 frames, not 60)."""
    _phone_video(tmp_path)
    ann = tmp_path / "ann.jsonl"
    ann.write_text(json.dumps({"video": "phone", "start_sec": 2.0, "end_sec": 3.0, "action": "wipe counter"}) + "\n")
    out = tmp_path / "out"
    result = run_tool("ingest_videos.py", "--videos", str(tmp_path / "src"), "--annotations", str(ann), "--out",
                      str(out), "--fps", "10", "--height", "32", "--width", "32", "--context-sec", "0",
                      "--backend", backend, "--no-progress")
    assert result.returncode == 0, result.stderr
    (row,) = read_manifest(out)
    clip = open_video(out / row.video).get_frames(range(row.end_frame))
    assert [int(round(frame.mean() / 4)) for frame in clip] == list(range(32, 42))  # shown at 0.8 + (k - 20) / 10
    source = open_video(tmp_path / "src" / "phone.mp4", backend=backend)
    assert source.num_frames == 60 and [int(round(f.mean() / 4)) for f in source.get_frames(range(60))] == list(range(60))


def test_a_video_cut_without_reencoding_reads_as_players_show_it(tmp_path):
    """`ffmpeg -ss 0.5 -c copy` keeps the frames before 0.5 s and an edit list that hides them. decord counted
    them (60 frames, not 47) and timed the shown frames as the hidden ones; imageio's packet listing held
    them too, so its times fell back to k / fps (0.7 s off)."""
    import imageio_ffmpeg

    from slowfast_vgen.data.readers import VideoReadError

    phone = _phone_video(tmp_path)
    cut = tmp_path / "cut.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-ss", "0.5", "-i", str(phone), "-c", "copy",
                    str(cut)], check=True, capture_output=True, timeout=120)
    shown = open_video(phone, backend="imageio").frame_times()
    for backend in ("auto", "imageio"):
        reader = open_video(cut, backend=backend)
        levels = [int(round(frame.mean() / 4)) for frame in reader.get_frames(range(reader.num_frames))]
        assert levels == list(range(13, 60))  # from the frame shown at 0.52 s on
        assert np.allclose(reader.frame_times(), shown[13:] - shown[13], atol=1e-6)
    with pytest.raises(VideoReadError, match="edit list"):
        open_video(cut, backend="decord")


def test_ingest_finds_mpeg1_sources_and_reads_them_exactly(tmp_path):
    references = mpeg1_frames()
    write_mpeg1(tmp_path / "src" / "street.mpg", references)
    ann = tmp_path / "ann.jsonl"
    ann.write_text(json.dumps({"video": "street", "start_sec": 0.4, "end_sec": 1.6, "action": "walk on"}) + "\n")
    out = tmp_path / "out"
    result = run_tool("ingest_videos.py", "--videos", str(tmp_path / "src"), "--annotations", str(ann), "--out",
                      str(out), "--fps", "25", "--height", "48", "--width", "64", "--context-sec", "0.2", "--no-progress")
    assert result.returncode == 0 and "video not found" not in result.stderr, result.stderr
    assert "wrote 1 segments from 1 videos" in result.stdout and "Traceback" not in result.stderr
    (row,) = read_manifest(out)
    assert (row.start_frame, row.end_frame) == (5, 35)  # clip = source frames 5..39 (0.2 s of lead-in)
    clip = open_video(out / row.video).get_frames(range(35))
    assert [pattern_of(frame, references) for frame in clip] == list(range(5, 40))  # no shift, no repeats
    # every accepted extension is found, in any case
    from slowfast_vgen.data.ingest import index_videos

    for name in ("a.MPG", "b.mpeg", "c.avi", "d.mov", "e.webm", "f.mkv", "g.m4v", "h.vob", "i.m1v"):
        (tmp_path / "kinds" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "kinds" / name).write_bytes(b"")
    assert sorted(k for k in index_videos(tmp_path / "kinds") if "." not in k) == list("abcdefghi")


def test_mpeg1_reads_exactly_through_auto_and_validate_reports_decord(tmp_path):
    """decord 0.6 returns other frames than the file holds on MPEG-1 (.mpg); auto and the dataset must not."""
    from slowfast_vgen.data.dataset import ChunkDataset, ChunkDatasetConfig
    from slowfast_vgen.data.readers import DecordVideoReader, ImageioVideoReader

    references = mpeg1_frames()
    path = write_mpeg1(tmp_path / "videos" / "clip.mpg", references)
    exact = imageio_frames(path)
    assert [pattern_of(frame, references) for frame in exact] == list(range(40))
    # 1. the auto reader is imageio for .mpg and returns exactly imageio's frames
    reader = open_video(path)
    assert isinstance(reader, ImageioVideoReader) and reader.num_frames == 40 and reader.fps == 25.0
    assert np.array_equal(reader.get_frames(range(40)), exact)
    assert np.array_equal(reader.get_frames([33, 2, 17]), exact[[33, 2, 17]])
    # 2. the training dataset reads through the same path: every chunk holds consecutive, exact frames
    (tmp_path / "manifest.jsonl").write_text(json.dumps(
        {"video": "videos/clip.mpg", "start_frame": 0, "end_frame": 40, "fps": 25.0, "action": "walk",
         "episode": "clip", "split": "train"}) + "\n")
    dataset = ChunkDataset(ChunkDatasetConfig(root=str(tmp_path), height=48, width=64, target_frames=8,
                                              context_frames_min=2, context_frames_max=4))
    for epoch in range(3):
        dataset.set_epoch(epoch)
        sample = dataset[0]
        video = np.concatenate([sample.context, sample.target], axis=1)  # (3, F, H, W) in [-1, 1]
        frames = np.round((video.transpose(1, 2, 3, 0) + 1.0) * 127.5).astype(np.uint8)
        first = pattern_of(frames[0], references)
        assert [pattern_of(f, references) for f in frames] == list(range(first, first + len(frames)))
        assert np.array_equal(frames, exact[first : first + len(frames)])
    # 3. what decord does on this file, and validate's report of it
    indices = [0, 10, 20, 29, 39]  # the frames validate samples
    by_decord = DecordVideoReader(path).get_frames(indices)
    decord_is_wrong = [pattern_of(f, references) for f in by_decord] != indices or np.abs(
        by_decord.astype(float) - exact[indices]).mean() > 2
    result = run_tool("validate.py", str(tmp_path), "--no-progress")
    assert "Traceback" not in result.stderr
    if decord_is_wrong:  # decord 0.6 (measured): random access returns other, partly decoded frames
        assert result.returncode == 1
        assert result.stdout.startswith("manifest.jsonl:1: videos/clip.mpg: decoders disagree: decord and imageio "
                                        "return different frames at "), result.stdout
    else:
        assert result.returncode == 0, result.stdout


# ---- outputs that would destroy finished work or inputs: refused with one line, before any work ----------


def _tool_exit(name: str, argv: list[str], capsys) -> tuple[int, list[str]]:
    from slowfast_vgen.errors import run_cli

    code = run_cli(load_tool(name).main, argv)
    return code, capsys.readouterr().err.strip().splitlines()


def _never(*args, **kwargs):
    raise AssertionError("expensive work started before --out was checked")


@pytest.mark.parametrize("case, message", [
    ("directory", "--out: {d} is a directory; give a file path"),
    ("under a file", "--out: {t}/afile is a file, so {t}/afile/f.safetensors cannot be written"),
    ("model weights", "--out: {t}/model/unet/diffusion_pytorch_model.safetensors lies inside the --model directory "
                      "{t}/model, an input that must not be overwritten; choose another path"),
    ("manifest", "--out: {t}/data/manifest.jsonl is the --manifest {t}/data/manifest.jsonl, an input that must not "
                 "be overwritten; choose another path"),
])
def test_text_features_out_is_checked_before_the_model_loads(case, message, tmp_path, monkeypatch, capsys):
    """--out used to fail (directory, under a file) only after the model loaded and every text was
    encoded, and --out MODEL/unet/diffusion_pytorch_model.safetensors replaced the model's UNet."""
    import slowfast_vgen.model

    monkeypatch.setattr(slowfast_vgen.model, "load_model", _never)
    (tmp_path / "model" / "unet").mkdir(parents=True)
    weights = tmp_path / "model" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"weights")
    (tmp_path / "afile").write_text("keep")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.jsonl").write_text("")
    (tmp_path / "d").mkdir()
    out = {"directory": tmp_path / "d", "under a file": tmp_path / "afile" / "f.safetensors",
           "model weights": weights, "manifest": tmp_path / "data" / "manifest.jsonl"}[case]
    code, err = _tool_exit("text_features.py", ["--model", str(tmp_path / "model"), "--out", str(out),
                                                "--manifest", str(tmp_path / "data")], capsys)
    assert code == 2 and err == ["error: " + message.format(t=tmp_path, d=tmp_path / "d")], err
    assert weights.read_bytes() == b"weights" and (tmp_path / "afile").read_text() == "keep"


def _foreign_dataset(root: Path, generator: dict | None) -> None:
    from slowfast_vgen.data.manifest import Segment, write_manifest

    (root / "videos").mkdir(parents=True)
    (root / "videos" / "blocks-000000.mp4").write_bytes(b"video")
    write_manifest(root, [Segment("videos/blocks-000000.mp4", 1, 3, 8.0, "go left", "blocks-000000", "train")])
    if generator is not None:
        (root / "dataset.json").write_text(json.dumps({"generator": generator}))


@pytest.mark.parametrize("case, message", [
    ("a file", "--out: {out} is a file; give a directory"),
    ("under a file", "--out: {t}/afile is a file, so {out} cannot be a directory"),
    ("other settings", "--out: {out} holds a dataset made with different settings (dataset.json: "),
    ("unknown dataset", "--out: {out} holds a dataset not made by make_world (manifest.jsonl without dataset.json "
                        "or meta/); its manifest would be replaced: use a new --out directory, or delete the old "
                        "dataset first"),
    ("other files", "--out: {out} is not empty and not a make_world dataset (it holds notes.txt); use a new --out "
                    "directory, or delete the old dataset first"),
])
def test_make_world_refuses_an_out_it_would_destroy_before_rendering(case, message, tmp_path, monkeypatch, capsys):
    """`--out afile` used to raise FileExistsError (`afile/nav`: NotADirectoryError), and an --out holding a
    finished dataset of another kind had its manifest silently replaced, orphaning its videos."""
    import slowfast_vgen.data.world_dataset as world_dataset

    monkeypatch.setattr(world_dataset, "run_episode_job", _never)
    (tmp_path / "afile").write_text("keep")
    out = {"a file": tmp_path / "afile", "under a file": tmp_path / "afile" / "nav"}.get(case, tmp_path / "ds")
    if case == "other settings":
        _foreign_dataset(out, MakeWorldConfig(out="x", episodes=1, world="blocks").generator())
    elif case == "unknown dataset":
        _foreign_dataset(out, None)
    elif case == "other files":
        out.mkdir()
        (out / "notes.txt").write_text("keep")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    code, err = _tool_exit("make_world.py", ["--out", str(out), "--episodes", "2", "--no-progress", "--workers", "1"],
                           capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: " + message.format(t=tmp_path, out=out)), err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("case, message", [
    ("annotations file", "--out: {t}/ann.jsonl is a file; give a directory"),
    ("under a file", "--out: {t}/ann.jsonl is a file, so {t}/ann.jsonl/x cannot be a directory"),
    ("finished dataset", "--out: {t}/ds already holds a dataset ({t}/ds/manifest.jsonl); ingesting would replace its "
                         "manifest: give a new or empty directory, or delete that dataset first"),
    ("videos folder", "--out: {t}/src overlaps the --videos folder {t}/src; the clips would be written among the "
                      "source videos: give a directory outside it"),
])
def test_ingest_refuses_an_out_it_would_destroy_before_decoding(case, message, tmp_path, monkeypatch, capsys):
    """`--out ann.jsonl` (the annotations) failed with NotADirectoryError only after decoding, and an --out
    holding a dataset had its manifest replaced."""
    import slowfast_vgen.data.ingest as ingest

    monkeypatch.setattr(ingest, "open_video", _never)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "clip.mp4").write_bytes(b"not decoded")
    ann = tmp_path / "ann.jsonl"
    ann.write_text(json.dumps({"video": "clip.mp4", "start_sec": 0.0, "end_sec": 1.0, "action": "stir"}) + "\n")
    if case == "finished dataset":
        _foreign_dataset(tmp_path / "ds", None)
    out = {"annotations file": ann, "under a file": ann / "x", "finished dataset": tmp_path / "ds",
           "videos folder": tmp_path / "src"}[case]
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    code, err = _tool_exit("ingest_videos.py", ["--videos", str(tmp_path / "src"), "--annotations", str(ann),
                                                "--out", str(out), "--no-progress"], capsys)
    assert code == 2 and err == ["error: " + message.format(t=tmp_path)], err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_merge_datasets_refuses_to_rewrite_an_input_dataset(tmp_path, capsys):
    """`merge_datasets.py ds2/nav .` rewrote ds2/nav's own manifest in place, and `merge_datasets.py ds2/nav
    inner` (ds2/nav a finished dataset) replaced its manifest with inner's rows only. A merged manifest
    may still be merged again."""
    from slowfast_vgen.data.manifest import Segment, write_manifest

    nav = tmp_path / "ds2" / "nav"
    _foreign_dataset(nav, None)
    _foreign_dataset(nav / "inner", None)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    code, err = _tool_exit("merge_datasets.py", [str(nav), "."], capsys)
    assert code == 2 and err == [f"error: dataset '.' is the root {nav} itself, where the merged manifest is written; "
                                 "give the datasets' sub-directories of the root"], err
    code, err = _tool_exit("merge_datasets.py", [str(nav), "inner"], capsys)
    assert code == 2 and err == [f"error: root {nav} already holds a dataset of its own ({nav}/manifest.jsonl); "
                                 "merging would replace its manifest: give a new directory above the datasets "
                                 "(move them into it), not a dataset"], err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    # a merged root is merged again (e.g. after adding a dataset)
    (tmp_path / "ds2" / "blocks").mkdir()
    write_manifest(tmp_path / "ds2" / "blocks", [Segment("videos/b.mp4", 1, 3, 8.0, "go", "b", "train")])
    assert _tool_exit("merge_datasets.py", [str(tmp_path / "ds2"), "nav"], capsys)[0] == 0
    assert _tool_exit("merge_datasets.py", [str(tmp_path / "ds2"), "nav", "blocks"], capsys)[0] == 0
    assert [s.episode for s in read_manifest(tmp_path / "ds2")] == ["nav-blocks-000000", "blocks-b"]
    # `./nav` and `blocks/` name the same datasets: the merged rows, and a merge of that merge, are the same
    assert _tool_exit("merge_datasets.py", [str(tmp_path / "ds2"), "./nav", "blocks/"], capsys)[0] == 0
    assert _tool_exit("merge_datasets.py", [str(tmp_path / "ds2"), "./nav", "blocks/"], capsys)[0] == 0
    rows = read_manifest(tmp_path / "ds2")
    assert [(s.video, s.episode) for s in rows] == [("nav/videos/blocks-000000.mp4", "nav-blocks-000000"),
                                                    ("blocks/videos/b.mp4", "blocks-b")]
    # one dataset named twice was merged twice (every segment duplicated); a file is not a dataset
    before = (tmp_path / "ds2" / "manifest.jsonl").read_bytes()
    code, err = _tool_exit("merge_datasets.py", [str(tmp_path / "ds2"), "nav", "./nav", "blocks/"], capsys)
    assert code == 2 and err == ["error: dataset './nav' is given twice (also as 'nav'); every segment would be "
                                 "merged twice"], err
    code, err = _tool_exit("merge_datasets.py", [str(tmp_path / "ds2"), "nav/manifest.jsonl"], capsys)
    assert code == 2 and err == [f"error: dataset 'nav/manifest.jsonl': not a directory under {tmp_path / 'ds2'} "
                                 "(give the dataset's directory, which holds its manifest.jsonl)"], err
    assert (tmp_path / "ds2" / "manifest.jsonl").read_bytes() == before


def test_an_interrupted_ingest_resumes_keeping_its_finished_clips(tmp_path, monkeypatch):
    """A re-run decoded and wrote every clip again; an out of other settings would now mix clips."""
    import slowfast_vgen.video_io as video_io

    videos = tmp_path / "src"
    for name in ("a", "b", "c"):
        source_video(videos / f"{name}.mp4", seconds=1.0, fps=10, height=16, width=16)
    ann = tmp_path / "ann.jsonl"
    ann.write_text("".join(json.dumps({"video": name, "start_sec": 0.2, "end_sec": 0.8, "action": f"stir {name}"}) + "\n"
                           for name in ("a", "b", "c")))

    def config(out, **extra):
        return IngestConfig(videos=str(videos), annotations=str(ann), out=str(out), height=16, width=16, **extra)

    straight = ingest_videos(config(tmp_path / "straight"))
    written, write_video = [], video_io.write_video

    def dies_on_the_third_clip(path, *args, **kwargs):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(Path(path).name)
        return write_video(path, *args, **kwargs)

    monkeypatch.setattr(video_io, "write_video", dies_on_the_third_clip)
    with pytest.raises(KeyboardInterrupt):
        ingest_videos(config(tmp_path / "out"))
    monkeypatch.setattr(video_io, "write_video", write_video)
    kept = {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "videos").rglob("*.mp4")}
    assert len(kept) == 2 and not (tmp_path / "out" / "manifest.jsonl").exists()
    with pytest.raises(UserInputError, match="holds the clips of an interrupted ingest made with other output; "):
        ingest_videos(config(tmp_path / "out", fps=5))
    resumed = ingest_videos(config(tmp_path / "out"))
    assert (resumed.segments, resumed.reused) == (3, 2) and straight.reused == 0
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in kept.items())  # not written again
    assert read_manifest(tmp_path / "out") == read_manifest(tmp_path / "straight")
    for row in read_manifest(tmp_path / "out"):
        assert np.array_equal(open_video(tmp_path / "out" / row.video).get_frames(range(row.end_frame)),
                              open_video(tmp_path / "straight" / row.video).get_frames(range(row.end_frame)))
