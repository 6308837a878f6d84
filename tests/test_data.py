"""Dataset format, world-dataset generation, validation and the chunk dataset."""

from __future__ import annotations

import json
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from slowfast_vgen.data.dataset import ChunkBatch, ChunkDataset, ChunkDatasetConfig, ChunkSample, collate_chunks
from slowfast_vgen.data.manifest import (
    Segment,
    check_relative_path,
    read_episode_meta,
    read_manifest,
    resolve_in_root,
    write_manifest,
)
from slowfast_vgen.data.readers import (
    DecordGeometryError,
    DecordVideoReader,
    ImageioVideoReader,
    VideoReadError,
    open_video,
    resize_center_crop,
)
from slowfast_vgen.data.validate import validate_dataset
from slowfast_vgen.data.world_dataset import MakeWorldConfig, make_world_dataset, split_sizes, world_seed
from slowfast_vgen.errors import UserInputError
from slowfast_vgen.video_io import write_video
from slowfast_vgen.worlds import build_world
from slowfast_vgen.worlds.actions import is_heldout_phrasing, parse_action

# ---- helpers ------------------------------------------------------------------------------------


def coded_frames(n: int, size: int = 32) -> np.ndarray:
    """Uniform grey frames whose level encodes the frame index: level = 10 + 7 * i."""
    levels = 10 + 7 * np.arange(n)
    assert levels.max() < 256
    return np.broadcast_to(levels[:, None, None, None], (n, size, size, 3)).astype(np.uint8)


def decode_codes(video: torch.Tensor) -> list[int]:
    """Frame indices back from a ``(3, F, H, W)`` tensor in [-1, 1] made from :func:`coded_frames`."""
    levels = (video.mean(dim=(0, 2, 3)) + 1.0) * 127.5
    return [int(round((v - 10) / 7)) for v in levels.tolist()]


def noisy_video(path: Path, n: int = 30, size: int = 32) -> None:
    """A video whose payload dominates the file (random frames), for corruption tests."""
    write_video(path, np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8), fps=8)


def zero_middle(path: Path) -> None:
    """Zero 40-60 % of the file: the container still reports every frame, the middle ones fail to decode."""
    data = bytearray(path.read_bytes())
    data[int(len(data) * 0.4) : int(len(data) * 0.6)] = bytes(int(len(data) * 0.6) - int(len(data) * 0.4))
    path.write_bytes(bytes(data))


def truncate_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def zero_frame_video(path: Path) -> None:
    """An mp4 written by ffmpeg with no frames at all."""
    import imageio_ffmpeg

    subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-y",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "color=c=red:s=16x16:r=8",
            "-frames:v",
            "0",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            str(path),
        ],
        check=True,
    )


def seg(
    video: str, start: int, end: int, action: str = "move left", episode: str = "ep", split: str = "train"
) -> Segment:
    return Segment(video, start, end, 8.0, action, episode, split)


@pytest.fixture(scope="module")
def world_root(tmp_path_factory) -> Path:
    """A tiny navigation dataset: 5 episodes x 3 actions x 4 frames, 32x32."""
    root = tmp_path_factory.mktemp("nav")
    make_world_dataset(
        MakeWorldConfig(out=str(root), episodes=5, seed=1, frames_per_action=4, actions_per_episode=3, workers=1)
    )
    return root


@pytest.fixture()
def coded_root(tmp_path) -> Path:
    """One 20-frame coded video with segments [0,6), [6,14), [14,20) and a too-short [18,20)."""
    write_video(tmp_path / "videos" / "a.mp4", coded_frames(20), fps=8)
    write_manifest(
        tmp_path,
        [
            seg("videos/a.mp4", 0, 6, "first"),
            seg("videos/a.mp4", 6, 14, "second"),
            seg("videos/a.mp4", 14, 20, "third"),
            seg("videos/a.mp4", 18, 20, "short"),
        ],
    )
    return tmp_path


def many_videos_root(root: Path, count: int = 10) -> Path:
    for i in range(count):
        write_video(root / "videos" / f"v{i}.mp4", coded_frames(12), fps=8)
    write_manifest(root, [seg(f"videos/v{i}.mp4", 2, 12, f"act {i}", f"ep{i}") for i in range(count)])
    return root


# ---- manifest -------------------------------------------------------------------------------------


def test_frames_survive_the_round_trip_through_model_pixels():
    """uint8 -> [-1, 1] -> uint8 keeps every level (truncating instead of rounding lost 63 of the 256)."""
    from slowfast_vgen.video_io import frames_to_tensor, tensor_to_frames

    frames = np.arange(256, dtype=np.uint8).reshape(256, 1, 1, 1).repeat(3, axis=3)
    assert np.array_equal(tensor_to_frames(frames_to_tensor(frames)), frames)


def test_a_gif_plays_at_its_frame_rate(tmp_path):
    import PIL.Image

    frames = np.zeros((3, 8, 8, 3), dtype=np.uint8)
    frames[1], frames[2] = 120, 240  # distinct frames: a GIF writer merges repeated ones
    write_video(tmp_path / "v.gif", frames, fps=8)
    with PIL.Image.open(tmp_path / "v.gif") as gif:
        # 125 ms per frame at 8 fps, stored in the GIF's hundredths of a second: 120 or 130
        assert gif.n_frames == 3 and abs(gif.info["duration"] - 125) <= 5


def test_manifest_round_trip(tmp_path):
    rows = [
        seg("videos/a.mp4", 1, 9, "head west", "a"),
        Segment(
            "videos/b c.mp4", 0, 3, 30, "push the red block left", "b", "val", extra={"source": "epic", "n": [1, 2]}
        ),
    ]
    path = write_manifest(tmp_path, rows)
    assert path == tmp_path / "manifest.jsonl"
    assert read_manifest(tmp_path) == rows
    assert read_manifest(path) == rows
    assert json.loads(path.read_text().splitlines()[1])["source"] == "epic"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.jsonl"]  # no temporary files left behind


@pytest.mark.parametrize(
    "path, ok",
    [
        ("videos/a.mp4", True),
        ("a.mp4", True),
        ("/etc/passwd", False),
        ("../x.mp4", False),
        ("videos/../../x.mp4", False),
        ("C:/x.mp4", False),
        ("videos\\a.mp4", False),
        ("", False),
    ],
)
def test_relative_path_rule(path, ok, tmp_path):
    assert (check_relative_path(path) is None) == ok
    if not ok:
        with pytest.raises(UserInputError):
            resolve_in_root(tmp_path, path)


@pytest.mark.parametrize(
    "row, message",
    [
        ({"video": "../a.mp4"}, "escapes the dataset root"),
        ({"video": "/abs/a.mp4"}, "is absolute"),
        ({"action": "  "}, "empty action"),
        ({"end_frame": 1}, "empty segment"),
        ({"fps": 0}, "fps must be a finite number > 0, got 0"),
        ({"start_frame": 1.5}, "start_frame must be an integer"),
    ],
)
def test_read_manifest_rejects_bad_rows(tmp_path, row, message):
    good = seg("videos/a.mp4", 1, 9).to_json()
    lines = [json.dumps(good), json.dumps({**good, **row})]
    (tmp_path / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserInputError, match=rf"manifest.jsonl:2: .*{message}"):
        read_manifest(tmp_path)
    with pytest.raises(ValueError, match=message):
        Segment.from_json({**good, **row})


# ---- generated world datasets ------------------------------------------------------------------------


def test_world_dataset_videos_decode_with_expected_frame_counts(world_root):
    import decord

    segments = read_manifest(world_root)
    assert len(segments) == 5 * 3
    for video in sorted({s.video for s in segments}):
        reader = decord.VideoReader(str(world_root / video))
        assert len(reader) == 1 + 3 * 4
        frames = reader.get_batch(list(range(len(reader)))).asnumpy()
        assert frames.shape == (13, 32, 32, 3)
        # the decoded frames are the ground truth rendering (up to H.264 loss)
        meta = read_episode_meta(world_root, Path(video).stem)
        world = build_world("navigation", meta["world_seed"], overrides=["view_size=32"])
        truth = np.stack([world.render(p) for p in meta["camera_positions"]])
        assert np.abs(frames.astype(int) - truth).mean() < 6
    rows = [s for s in segments if s.episode == "navigation-000000"]
    assert [(s.start_frame, s.end_frame) for s in rows] == [(1, 5), (5, 9), (9, 13)]
    assert [parse_action(s.action) for s in rows] == meta_primitives(world_root, "navigation-000000")


def meta_primitives(root: Path, episode: str) -> list[str]:
    return read_episode_meta(root, episode)["primitives"]


def test_world_dataset_splits_and_phrasings(world_root):
    segments = read_manifest(world_root)
    seeds: dict[str, set[int]] = {}
    for s in segments:
        seeds.setdefault(s.split, set()).add(read_episode_meta(world_root, s.episode)["world_seed"])
        assert parse_action(s.action) is not None
        if s.split == "train":
            assert not is_heldout_phrasing(s.action), s.action
    assert {k: len(v) for k, v in seeds.items()} == {"train": 3, "val": 1, "test": 1}
    assert (
        not (seeds["train"] & seeds["val"])
        and not (seeds["train"] & seeds["test"])
        and not (seeds["val"] & seeds["test"])
    )
    assert seeds["val"] == {world_seed(1, 3)}


def test_split_rule_never_overlaps():
    assert split_sizes(8, 0.1, 0.1) == {"train": 6, "val": 1, "test": 1}
    assert split_sizes(1000, 0.1, 0.1) == {"train": 800, "val": 100, "test": 100}
    assert split_sizes(2, 0.1, 0.1) == {"train": 2, "val": 0, "test": 0}
    with pytest.raises(ValueError, match="no world left"):
        split_sizes(3, 0.5, 0.5)


def test_training_manifest_never_contains_heldout_phrasings(tmp_path):
    make_world_dataset(
        MakeWorldConfig(
            out=str(tmp_path), episodes=24, seed=0, frames_per_action=1, actions_per_episode=12, size=16, workers=1
        )
    )
    segments = read_manifest(tmp_path)
    train = [s for s in segments if s.split == "train"]
    other = [s for s in segments if s.split != "train"]
    assert len(train) >= 200 and other
    assert not any(is_heldout_phrasing(s.action) for s in train)
    assert len({s.action for s in train}) > 50  # many phrasings are really used
    # evaluation splits do draw held-out phrasings (about a quarter of the rows)
    assert any(is_heldout_phrasing(s.action) for s in other)


def test_world_dataset_resumes_and_refuses_other_settings(tmp_path):
    config = MakeWorldConfig(
        out=str(tmp_path), episodes=3, frames_per_action=2, actions_per_episode=2, workers=1, world="blocks"
    )
    make_world_dataset(config)
    manifest = (tmp_path / "manifest.jsonl").read_text()
    video = tmp_path / "videos" / "blocks-000001.mp4"
    stamp = video.stat().st_mtime_ns
    (tmp_path / "meta" / "blocks-000002.json").unlink()  # an interrupted run: episode 2 unfinished
    make_world_dataset(config)
    assert video.stat().st_mtime_ns == stamp  # finished episodes are not rendered again
    assert (tmp_path / "meta" / "blocks-000002.json").is_file()
    assert (tmp_path / "manifest.jsonl").read_text() == manifest
    meta = read_episode_meta(tmp_path, "blocks-000000")
    assert len(meta["object_positions"]["red"]) == 5
    with pytest.raises(UserInputError, match="different settings"):
        make_world_dataset(
            MakeWorldConfig(
                out=str(tmp_path),
                episodes=3,
                frames_per_action=2,
                actions_per_episode=2,
                workers=1,
                world="blocks",
                size=64,
            )
        )



def test_world_dataset_names_damaged_meta_files_and_renders_their_episodes_again(tmp_path):
    """Meta files were read twice: by check_world_out at start-up and again per episode, which compared the
    settings a second time and handled damage differently, so a meta file holding `[]` crashed the resumed run
    with an AttributeError traceback, while an unparsable one was rendered again without a word. Now one
    reader handles damage alike in both places; check_world_out refuses other settings before any work and
    names damaged files, and an episode about to be reused is checked again (another run may have written it)."""
    config = MakeWorldConfig(
        out=str(tmp_path), episodes=3, frames_per_action=2, actions_per_episode=2, workers=1, world="blocks"
    )
    make_world_dataset(config)
    meta_dir = tmp_path / "meta"
    manifest = (tmp_path / "manifest.jsonl").read_text()
    metas = {path.name: path.read_text() for path in meta_dir.iterdir()}
    kept = tmp_path / "videos" / "blocks-000001.mp4"
    stamp = kept.stat().st_mtime_ns
    (meta_dir / "blocks-000000.json").write_text("[]")
    (meta_dir / "blocks-000002.json").write_text("{not json")
    (meta_dir / "blocks-000007.json").write_bytes(b"\xff")  # not an episode of this run
    # a clash of settings is refused before any work, in one line: damaged files are not reported then
    other = json.loads(metas["blocks-000001.json"])
    (meta_dir / "blocks-000001.json").write_text(json.dumps({**other, "generator": {**other["generator"], "size": 64}}))
    lines: list[str] = []
    with pytest.raises(UserInputError, match=r"made with different settings \(meta/blocks-000001\.json: "):
        make_world_dataset(config, report=lines.append)
    assert lines == [] and (meta_dir / "blocks-000000.json").read_text() == "[]"
    (meta_dir / "blocks-000001.json").write_text(metas["blocks-000001.json"])
    make_world_dataset(config, report=lines.append)
    assert lines == [
        f"{meta_dir}/blocks-000000.json: damaged episode meta file (expected a JSON object, got list); "
        "rendering blocks-000000 again",
        f"{meta_dir}/blocks-000002.json: damaged episode meta file (Expecting property name enclosed in double "
        "quotes: line 1 column 2 (char 1)); rendering blocks-000002 again",
        f"{meta_dir}/blocks-000007.json: damaged episode meta file ('utf-8' codec can't decode byte 0xff in "
        "position 0: invalid start byte); ignored (not an episode of this run)",
    ]
    assert {name: (meta_dir / name).read_text() for name in metas} == metas  # rendered again, identically
    assert (tmp_path / "manifest.jsonl").read_text() == manifest
    assert kept.stat().st_mtime_ns == stamp  # the intact episode is reused
    # the right settings but no primitives (the episode's rows are made from them): rendered again, named
    (meta_dir / "blocks-000001.json").write_text(json.dumps({k: v for k, v in other.items() if k != "primitives"}))
    lines.clear()
    make_world_dataset(config, report=lines.append)
    assert lines[0] == (f"{meta_dir}/blocks-000001.json: damaged episode meta file (no list of primitives); "
                        "rendering blocks-000001 again") and len(lines) == 2  # and blocks-000007, as before
    assert (meta_dir / "blocks-000001.json").read_text() == metas["blocks-000001.json"]
    # a meta file rewritten with other settings after check_world_out (a second run into the same --out)
    from slowfast_vgen.data.world_dataset import _finished_meta

    (meta_dir / "blocks-000001.json").write_text(json.dumps({**other, "generator": {**other["generator"], "size": 64}}))
    with pytest.raises(UserInputError, match=r"blocks-000001\.json was generated with other settings .* while this run"):
        _finished_meta(meta_dir / "blocks-000001.json", kept, config)

# ---- readers ---------------------------------------------------------------------------------------


def test_readers_agree_and_report_errors(tmp_path):
    write_video(tmp_path / "a.mp4", coded_frames(9), fps=8)
    decord_reader = open_video(tmp_path / "a.mp4", "decord")
    imageio_reader = open_video(tmp_path / "a.mp4", "imageio")
    assert isinstance(imageio_reader, ImageioVideoReader)
    assert decord_reader.num_frames == imageio_reader.num_frames == 9
    a, b = decord_reader.get_frames([0, 4, 8]), imageio_reader.get_frames([0, 4, 8])
    assert a.shape == b.shape == (3, 32, 32, 3) and np.abs(a.astype(int) - b).max() <= 2
    with pytest.raises(VideoReadError, match="frame 9 requested but the video has 9 frames"):
        decord_reader.get_frames([8, 9])
    with pytest.raises(VideoReadError, match="file not found"):
        open_video(tmp_path / "missing.mp4")
    (tmp_path / "bad.mp4").write_bytes(b"not a video" * 100)
    with pytest.raises(VideoReadError, match="bad.mp4"):
        open_video(tmp_path / "bad.mp4")


def test_auto_backend_works_around_decord_width_bug(tmp_path):
    """decord 0.6 returns mis-strided frames for 16-pixel-wide videos; auto falls back to imageio."""
    write_video(tmp_path / "narrow.mp4", coded_frames(5, size=16), fps=8)
    with pytest.raises(DecordGeometryError, match="cannot return frames of this width"):
        open_video(tmp_path / "narrow.mp4", "decord")
    reader = open_video(tmp_path / "narrow.mp4")
    frames = reader.get_frames([0, 4])
    assert frames.shape == (2, 16, 16, 3) and abs(int(frames[1].mean()) - (10 + 7 * 4)) <= 2


def test_imageio_reader_streams_long_videos(tmp_path):
    """Over its memory budget the imageio reader decodes on request (forward, restarting to go back)."""
    write_video(tmp_path / "a.mp4", coded_frames(20), fps=8)
    held = ImageioVideoReader(tmp_path / "a.mp4")
    streamed = ImageioVideoReader(tmp_path / "a.mp4", memory_budget=0)
    assert not held.streaming and streamed.streaming
    assert streamed.num_frames == held.num_frames == 20 and streamed.fps == held.fps == 8.0
    for indices in ([3, 4, 5], [9, 7, 7, 19], [0], [19, 18], [12, 2]):
        assert np.array_equal(streamed.get_frames(indices), held.get_frames(indices)), indices
    assert decode_codes(torch.from_numpy(streamed.get_frames([6, 1])).permute(3, 0, 1, 2).float() / 127.5 - 1) == [6, 1]
    with pytest.raises(VideoReadError, match="frame 20 requested but the video has 20 frames"):
        streamed.get_frames([20])


def test_validate_reports_decoders_that_disagree(tmp_path, monkeypatch):
    """A decoder that silently returns frame i + 12 (as decord 0.6 did on an MPEG-1 file) is a bad row."""
    write_video(tmp_path / "videos" / "a.mp4", coded_frames(30), fps=8)
    write_manifest(tmp_path, [seg("videos/a.mp4", 0, 30)])
    assert validate_dataset(tmp_path).ok  # decord and imageio agree exactly on H.264
    original = DecordVideoReader.get_frames

    def shifted(self, indices):
        return original(self, [min(i + 12, self.num_frames - 1) for i in indices])

    monkeypatch.setattr(DecordVideoReader, "get_frames", shifted)
    report = validate_dataset(tmp_path)
    assert report.lines() == [
        "manifest.jsonl:1: videos/a.mp4: decoders disagree: decord and imageio return different frames at 4 of 5 "
        "sampled indices (frame 0: mean absolute difference 84.0 > 2.0); re-encode the video as H.264 .mp4"
    ]
    for backend in ("decord", "imageio"):  # whichever reader validates, the other one is compared with it
        assert "decoders disagree" in validate_dataset(tmp_path, backend=backend).lines()[0]


def test_resize_center_crop_keeps_aspect():
    frames = np.zeros((2, 20, 40, 3), dtype=np.uint8)
    frames[:, :, 6:34] = 255  # a white centre band, 28 px wide, black at both sides
    out = resize_center_crop(frames, 10, 10)
    assert out.shape == (2, 10, 10, 3) and out.dtype == np.uint8
    assert out.min() >= 250  # cover-resize to 10x20 then crop the centre 10 columns: only the band is left
    squashed = resize_center_crop(frames, 10, 20)  # same aspect: nothing cropped, the black sides stay
    assert squashed[:, :, 0].max() < 60 and squashed[:, :, 10].min() >= 250
    assert resize_center_crop(frames, 20, 40) is frames


# ---- validation (library; the script is exercised in test_data_tools.py) ------------------------------


def test_validate_clean_dataset(world_root):
    report = validate_dataset(world_root)
    assert report.ok, report.lines()
    assert report.num_rows == 15 and report.num_videos == 5


def test_validate_reports_every_kind_of_problem(tmp_path):
    for name in ("good", "truncated", "corrupt", "zero", "empty", "short"):
        noisy_video(tmp_path / "videos" / f"{name}.mp4", n=20)
    truncate_half(tmp_path / "videos" / "truncated.mp4")
    zero_middle(tmp_path / "videos" / "corrupt.mp4")
    zero_frame_video(tmp_path / "videos" / "zero.mp4")
    (tmp_path / "videos" / "empty.mp4").write_bytes(b"")
    good = seg("videos/good.mp4", 0, 20).to_json()
    rows = [
        good,  # 1 clean
        {**good, "video": "videos/truncated.mp4"},  # 2 truncated file
        {**good, "video": "videos/corrupt.mp4"},  # 3 container over-reports
        {**good, "video": "videos/zero.mp4"},  # 4 zero-frame video
        {**good, "video": "videos/empty.mp4"},  # 5 zero bytes
        {**good, "start_frame": 15, "end_frame": 21},  # 6 beyond decoded length
        {**good, "video": "videos/missing.mp4"},  # 7 missing file
        {**good, "action": ""},  # 8 empty action
        {**good, "video": "../outside.mp4"},  # 9 escaping path
        {**good, "video": "/abs/good.mp4"},  # 10 absolute path
    ]
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    report = validate_dataset(tmp_path)
    assert not report.ok
    by_line = {p.line: " ".join(p.reasons) for p in report.problems}
    assert 1 not in by_line
    assert "cannot decode video" in by_line[2]
    assert "container reports 20 frames, only" in by_line[3] and "beyond decoded length" in by_line[3]
    assert "zero frames" in by_line[4]
    assert "empty (0 bytes)" in by_line[5]
    assert "segment [15, 21) beyond decoded length 20" in by_line[6]
    assert "video file missing" in by_line[7]
    assert "empty action" in by_line[8]
    assert "escapes the dataset root" in by_line[9]
    assert "is absolute" in by_line[10]
    assert "not valid JSON" in by_line[11]
    assert len(report.lines()) == 10 and report.lines()[0].startswith("manifest.jsonl:2: videos/truncated.mp4: ")
    assert validate_dataset(tmp_path).lines() == report.lines()  # deterministic, even on the corrupt file


# ---- chunk dataset ---------------------------------------------------------------------------------


def test_chunk_shapes_and_ranges(world_root):
    config = ChunkDatasetConfig(
        root=str(world_root), split="train", target_frames=4, context_frames_min=1, context_frames_max=4
    )
    ds = ChunkDataset(config)
    assert len(ds) == 3 * 3 and ds.num_short_segments == 0
    seen = set()
    for i in range(len(ds)):
        sample = ds[i]
        assert isinstance(sample, ChunkSample)
        f_p = sample.context.shape[1]
        assert 1 <= f_p <= 4
        seen.add(f_p)
        assert sample.context.shape == (3, f_p, 32, 32) and sample.target.shape == (3, 4, 32, 32)
        assert sample.context.dtype == torch.float32 and -1.0 <= sample.context.min() and sample.target.max() <= 1.0
        assert parse_action(sample.action) is not None
        # the first segment of an episode starts at frame 1: only one context frame exists
        if ds.items[i].segment.start_frame == 1:
            assert f_p == 1
    assert len(seen) >= 2
    small = ChunkDataset(ChunkDatasetConfig(root=str(world_root), split="val", height=16, width=16, target_frames=4))
    assert small[0].target.shape == (3, 4, 16, 16)


def test_chunk_frames_come_from_the_right_places(coded_root):
    ds = ChunkDataset(
        ChunkDatasetConfig(
            root=str(coded_root), height=16, width=16, target_frames=5, context_frames_min=1, context_frames_max=3
        )
    )
    assert len(ds) == 3 and ds.num_short_segments == 1  # [18, 20) is too short for 5 target frames
    for epoch in range(4):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            sample = ds[i]
            item = ds.items[i]
            context, target = decode_codes(sample.context), decode_codes(sample.target)
            start = target[0]
            assert target == list(range(start, start + 5))
            assert item.segment.start_frame <= start and start + 5 <= item.segment.end_frame
            assert context == list(range(start - len(context), start))  # immediately preceding frames
            if item.segment.start_frame == 0:  # first segment: f_p = 1, context = the segment's first frame
                assert context == [0] and target == [1, 2, 3, 4, 5]
    assert [s.action for s in (ds[0], ds[1], ds[2])] == ["first", "second", "third"]
    # reproducible: same seed and epoch -> same chunk
    assert torch.equal(ds[1].context, ds[1].context)


def test_episode_chunks_follow_each_other_without_a_gap(world_root):
    """The loop uses the end of X_i as the context of X_(i+1): an episode's chunks are consecutive frames
    of its video (a target_frames below the segment length left gaps of the segment's remaining frames)."""
    from slowfast_vgen.data.episodes import EpisodeDataset

    config = ChunkDatasetConfig(root=str(world_root), target_frames=4)
    episodes = EpisodeDataset(config, 3)
    chunks, actions = episodes[0]
    (video,) = {s.video for s in episodes.episodes[0]}
    frames = open_video(world_root / video).get_frames(list(range(1, 13)))  # frames 1..12: three actions of 4
    expected = torch.from_numpy(frames).float().div(127.5).sub(1.0).permute(3, 0, 1, 2)  # (3, 12, H, W)
    assert torch.equal(chunks.permute(1, 0, 2, 3, 4).flatten(1, 2), expected)
    assert actions == [s.action for s in episodes.episodes[0]]
    # the count was called "too short" although these episodes are long enough: their chunks have gaps
    with pytest.raises(UserInputError, match="has 2 consecutive segments of >= 2 frames, each chunk starting where the "
                                             r"one before ends \(3 episodes have no such run: too few segments, or gaps"):
        EpisodeDataset(ChunkDatasetConfig(root=str(world_root), target_frames=2), 2)


def test_episode_dataset_skips_missing_and_corrupt_videos_by_name(world_root, tmp_path):
    """One missing video stopped the slow-fast loop; episodes are now skipped with a warning naming the
    video, as ChunkDataset skips chunks, until max_bad_fraction is passed."""
    import shutil

    from slowfast_vgen.data.episodes import EpisodeDataset

    root = tmp_path / "nav"
    shutil.copytree(world_root, root)
    full = EpisodeDataset(ChunkDatasetConfig(root=str(root), target_frames=4), 3)
    (missing,), (corrupt,) = ({s.video for s in full.episodes[k]} for k in (0, 1))
    (root / missing).unlink()
    (root / corrupt).write_bytes((root / corrupt).read_bytes()[:200])
    config = ChunkDatasetConfig(root=str(root), target_frames=4, max_bad_fraction=0.7)  # 2 of 3 videos may be bad
    with pytest.warns(RuntimeWarning, match=f"skipping unreadable video {missing}: file not found"):
        episodes = EpisodeDataset(config, 3)
    assert len(episodes) == len(full) - 1 and missing in episodes.bad_videos
    index = next(k for k, e in enumerate(episodes.episodes) if e[0].video == corrupt)
    with pytest.warns(RuntimeWarning, match=f"skipping unreadable video {corrupt}"):
        chunks, actions = episodes[index]  # the next episode instead
    assert actions == [s.action for s in episodes.episodes[index + 1]] and chunks.shape[:3] == (3, 3, 4)
    assert torch.equal(episodes[index][0], chunks)  # the same replacement every time
    with pytest.warns(RuntimeWarning), pytest.raises(UserInputError, match="1 of 3 videos in split 'train'.*more "
                                                                            "than max_bad_fraction=0.0"):
        EpisodeDataset(ChunkDatasetConfig(root=str(root), target_frames=4, max_bad_fraction=0.0), 3)


def test_first_consecutive_run_breaks_at_gaps_and_short_segments():
    from slowfast_vgen.data.episodes import first_consecutive_run

    a = [seg("v.mp4", 1 + 4 * i, 5 + 4 * i, f"a{i}") for i in range(5)]
    assert first_consecutive_run(list(reversed(a)), 4, 3) == a[:3]  # ordered by start frame
    assert first_consecutive_run([a[0], a[2], a[3], a[4]], 4, 3) == a[2:]  # a dropped segment is a gap
    short = seg("v.mp4", 5, 7, "short")
    assert first_consecutive_run([a[0], short, a[2], a[3]], 4, 3) is None
    assert first_consecutive_run(a, 2, 2) is None  # every chunk stops 2 frames before the next one starts
    clips = [seg(f"videos/x/{n:06d}.mp4", lead, lead + 4, f"c{n}") for n, lead in ((7, 8), (3, 0), (9, 8))]
    assert first_consecutive_run(clips, 4, 3) == clips  # ingested clips: manifest order, lead-ins ignored


def test_collate_pads_contexts_on_the_left():
    def sample(f_p: int, base: float) -> ChunkSample:
        context = torch.arange(f_p, dtype=torch.float32).add(base).view(1, f_p, 1, 1).expand(3, f_p, 2, 2)
        return ChunkSample(context, torch.full((3, 3, 2, 2), -1.0), f"a{f_p}", f"v{f_p}")

    batch = collate_chunks([sample(1, 0.5), sample(3, 0.0)])
    assert isinstance(batch, ChunkBatch) and len(batch) == 2
    assert batch.frames.shape == (2, 3, 6, 2, 2)
    assert batch.context_mask.tolist() == [[True, True, True, False, False, False]] * 2
    assert batch.frames[0, 0, :3, 0, 0].tolist() == [0.5, 0.5, 0.5]  # first context frame repeated
    assert batch.frames[1, 0, :3, 0, 0].tolist() == [0.0, 1.0, 2.0]
    assert batch.actions == ["a1", "a3"] and batch.num_context == 3
    moved = batch.to("cpu")
    assert isinstance(moved, ChunkBatch) and torch.equal(moved.frames, batch.frames)
    with pytest.raises(ValueError, match="same number of frames"):
        collate_chunks([sample(1, 0.0), ChunkSample(torch.zeros(3, 1, 2, 2), torch.zeros(3, 2, 2, 2), "x", "y")])


def test_bad_videos_are_skipped_and_counted(tmp_path):
    root = many_videos_root(tmp_path, 10)
    truncate_half(root / "videos" / "v3.mp4")
    (root / "videos" / "v7.mp4").unlink()
    config = ChunkDatasetConfig(root=str(root), height=16, width=16, target_frames=4, max_bad_fraction=0.25)
    with pytest.warns(RuntimeWarning, match="v7.mp4: file not found"):
        ds = ChunkDataset(config)
    assert len(ds) == 9 and ds.bad_videos.keys() == {"videos/v7.mp4"}
    with pytest.warns(RuntimeWarning, match="skipping unreadable video videos/v3.mp4"):
        samples = [ds[i] for i in range(len(ds))]
    assert set(ds.bad_videos) == {"videos/v3.mp4", "videos/v7.mp4"}
    assert all(s.video not in ds.bad_videos for s in samples)
    assert len({s.video for s in samples}) == 8
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a known-bad video is not retried (and not warned about) again
        replacement = [ds[i] for i in range(len(ds))]
    assert [s.video for s in replacement] == [s.video for s in samples]  # deterministic replacement


def test_too_many_bad_videos_raise(tmp_path):
    root = many_videos_root(tmp_path, 10)
    for i in (1, 4, 8):
        truncate_half(root / "videos" / f"v{i}.mp4")
    ds = ChunkDataset(ChunkDatasetConfig(root=str(root), height=16, width=16, target_frames=4, max_bad_fraction=0.25))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(UserInputError, match=r"3 of 10 videos .* unreadable, more than max_bad_fraction=0.25"):
            for i in range(len(ds)):
                ds[i]
        for i in (0, 2, 5, 9):
            (root / "videos" / f"v{i}.mp4").unlink()
        with pytest.raises(UserInputError, match=r"3 of 10 videos .*v0.mp4 \(file not found\)"):  # fails at build time
            ChunkDataset(
                ChunkDatasetConfig(root=str(root), height=16, width=16, target_frames=4, max_bad_fraction=0.25)
            )


def test_dataset_rejects_bad_config_and_empty_split(world_root, tmp_path):
    with pytest.raises(ValueError, match="context_frames_min"):
        ChunkDatasetConfig(root=str(world_root), context_frames_min=3, context_frames_max=2)
    with pytest.raises(UserInputError, match="no segments with split 'holdout'"):
        ChunkDataset(ChunkDatasetConfig(root=str(world_root), split="holdout"))
    with pytest.raises(UserInputError, match="no usable segments"):
        ChunkDataset(ChunkDatasetConfig(root=str(world_root), target_frames=5))
    with pytest.raises(UserInputError, match="dataset directory not found"):
        ChunkDataset(ChunkDatasetConfig(root=str(tmp_path / "nope")))


def test_dataloader_with_two_workers(world_root):
    ds = ChunkDataset(ChunkDatasetConfig(root=str(world_root), target_frames=4, context_frames_max=2))
    ds[0]  # a reader opened in the parent must not break (or deadlock) the forked workers
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate_chunks, timeout=60)
    batches = list(loader)
    assert sum(len(b) for b in batches) == len(ds)
    for batch in batches:
        f = batch.frames.shape[2]
        assert batch.frames.shape[:2] == (len(batch), 3) and batch.frames.shape[3:] == (32, 32)
        assert batch.context_mask.shape == (len(batch), f)
        assert (~batch.context_mask).sum(dim=1).tolist() == [4] * len(batch)


def test_make_world_refuses_seeds_whose_worlds_reach_the_heldout_worlds():
    """Dataset worlds are seed * 1_000_000 + w; the evaluation worlds start at 900_000_000."""
    from slowfast_vgen.data import world_dataset
    from slowfast_vgen.data.live_worlds import HELDOUT_WORLD_SEED_BASE

    assert world_dataset.HELDOUT_WORLD_SEED_BASE == HELDOUT_WORLD_SEED_BASE
    for seed in (0, 1, 2, 899):  # README: --seed 1, --seed 2; the last allowed seed
        config = MakeWorldConfig(out="x", episodes=1000, seed=seed)
        assert world_seed(seed, config.num_worlds - 1) < HELDOUT_WORLD_SEED_BASE
    for seed in (900, 901, -1):
        with pytest.raises(ValueError, match=rf"^seed must be in \[0, 900\) so that its worlds .* got {seed}$"):
            MakeWorldConfig(out="x", episodes=3, seed=seed)


def test_training_world_seed_check_allows_exactly_the_seeds_below_the_heldout_worlds():
    """One check for every generator of training worlds (make_world, live worlds, the IDM's pair sampler)."""
    from slowfast_vgen.data.world_dataset import WORLD_SEED_STRIDE, check_training_world_seed

    for seed, worlds in ((0, 1), (899, 1), (899, WORLD_SEED_STRIDE)):  # the last world seed is 899_999_999
        check_training_world_seed(seed, worlds)
    for seed, worlds in ((-1, 1), (-1, WORLD_SEED_STRIDE), (900, 1), (10**6, 1)):
        with pytest.raises(ValueError) as failure:
            check_training_world_seed(seed, worlds, what="val_seed")
        assert str(failure.value) == (
            "val_seed must be in [0, 900) so that its worlds (val_seed * 1000000 + w) never include the held-out "
            f"evaluation worlds (seeds from 900000000), got {seed}"
        )


def test_write_video_refuses_frames_that_are_not_uint8(tmp_path):
    """Float frames in [0, 1] (the pipeline's output_type="np") were cast to an all-black video, and int64 300 wrapped
    to 44, without a word."""
    for frames in (np.full((2, 8, 8, 3), 0.8, np.float32), np.full((2, 8, 8, 3), 300, np.int64)):
        with pytest.raises(ValueError, match=f"expected uint8 frames \\(0-255\\), got {frames.dtype}"):
            write_video(tmp_path / "v.mp4", frames, fps=8)
    assert not list(tmp_path.iterdir())


def test_read_image_scales_16_bit_grey_and_follows_exif_orientation(tmp_path):
    """A 16-bit grey PNG was clipped (61 % grey read as white), and a phone's portrait JPEG (EXIF orientation 6)
    was read lying on its side."""
    from PIL import Image

    from slowfast_vgen.video_io import read_image

    Image.fromarray(np.full((4, 6), 40000, np.uint16)).save(tmp_path / "grey16.png")
    grey = read_image(tmp_path / "grey16.png")
    assert grey.shape == (4, 6, 3) and np.all(grey == round(40000 / 65535 * 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.new("RGB", (32, 16), (200, 30, 30)).save(tmp_path / "portrait.jpg", exif=exif)
    assert read_image(tmp_path / "portrait.jpg").shape == (32, 16, 3)
    # a malformed EXIF block (PIL: SyntaxError "not a TIFF file") was a traceback; its pixels are fine
    Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "badexif.png", exif=b"hello world, not tiff")
    assert read_image(tmp_path / "badexif.png")[0, 0].tolist() == [10, 20, 30]
