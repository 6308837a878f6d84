"""`sfvgen serve`: the web app's functions on a tiny model, and the page itself in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import decord
import numpy as np
import pytest
import torch

from slowfast_vgen.cli import main
from slowfast_vgen.config import load_config
from slowfast_vgen.errors import UserInputError
from slowfast_vgen.session import GenerationConfig
from slowfast_vgen.webapp import WebApp, stats_rows, stats_svg

pytestmark = [  # gradio 6's queue statistics on pandas 3
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]
FAST = ["sampler.num_inference_steps=2", "fast.rank=4", "frames_per_chunk=4", "context_frames=4", "window=8"]


@pytest.fixture()
def app(tiny_bundle, tmp_path):
    config = load_config(GenerationConfig, None, FAST)
    web = WebApp(tiny_bundle, "tiny", config, workdir=tmp_path / "work")
    yield web
    web.close()


def _memory(tab) -> dict[str, torch.Tensor]:
    return tab.session.fast_learner.state_dict()


def _same_memory(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def test_a_step_adds_one_chunk_to_the_video_the_sidecar_and_the_plot(app):
    tab = app.start("navigation", 3, seed=0, fast="paper")
    chunk = app.config.frames_per_chunk
    assert tab.session.num_frames == 1
    record = app.step(tab, "move right")
    assert tab.session.num_frames == 1 + chunk and record.action == "move right"
    video, sidecar = app.export(tab)
    reader = decord.VideoReader(str(video))
    assert len(reader) == 1 + chunk
    meta = json.loads(sidecar.read_text())
    assert meta["frames"] == 1 + chunk and [c["action"] for c in meta["chunks"]] == ["move right"]
    assert meta["chunks"][0]["temp_lora_loss"] > 0 and meta["fast_mode"] == "paper"
    assert 'data-chunks="1"' in stats_svg(stats_rows(tab.session.records))
    app.step(tab, "  move up ")
    rows = stats_rows(tab.session.records)
    assert [row["chunk"] for row in rows] == [0, 1] and rows[1]["action"] == "move up"
    assert stats_svg(rows).count('class="sfv-point"') == 2 * 3  # one point per chunk in each of the 3 panels
    assert len(decord.VideoReader(str(app.export(tab)[0]))) == 1 + 2 * chunk


def test_two_tabs_keep_their_own_frames_and_memory(app):
    first = app.start("navigation", 0, seed=5, fast="paper")
    second = app.start("navigation", 0, seed=5, fast="paper")
    assert first.session.adapter_name != second.session.adapter_name and first.folder != second.folder
    app.step(first, "move right")
    app.step(first, "move left")
    assert second.session.num_frames == 1 and second.session.num_chunks_done == 0
    app.step(second, "move right")  # the first tab's two updates must not leak into this chunk
    assert np.array_equal(second.session.video(), first.session.video()[: second.session.num_frames])
    assert not _same_memory(_memory(first), _memory(second))
    assert first.session.num_chunks_done == 2 and second.session.num_chunks_done == 1


def test_tabs_take_turns_on_the_model(app):
    import threading

    tabs = [app.start(seed=seed) for seed in (0, 1)]
    running, most = 0, 0
    counter = threading.Lock()
    forward = app.bundle.unet.forward

    def counting_forward(*args, **kwargs):
        nonlocal running, most
        with counter:
            running += 1
            most = max(most, running)
        try:
            time.sleep(0.005)  # widen the window in which an unserialised second tab would overlap
            return forward(*args, **kwargs)
        finally:
            with counter:
                running -= 1

    app.bundle.unet.forward = counting_forward
    threads = [threading.Thread(target=app.step, args=(tab, "move right")) for tab in tabs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most == 1 and [tab.session.num_chunks_done for tab in tabs] == [1, 1]


def test_bad_inputs_are_messages_and_the_episode_goes_on(app, tmp_path):
    tab = app.start(seed=1)
    app.step(tab, "move down")
    frames, session = tab.session.video(), tab.session
    not_an_image = tmp_path / "holiday.png"
    not_an_image.write_bytes(b"%PDF-1.4 this is not a picture")
    with pytest.raises(UserInputError, match="holiday.png is not an image"):
        app.start(image=str(not_an_image), tab=tab)
    for action in ["", "   ", None]:
        with pytest.raises(UserInputError, match="action is empty"):
            app.step(tab, action)
    with pytest.raises(UserInputError, match="not a zip file"):
        app.load_session(tab, str(not_an_image))
    escaping = tmp_path / "escape.zip"
    with zipfile.ZipFile(escaping, "w") as handle:
        handle.writestr("../session.json", "{}")
    with pytest.raises(UserInputError, match="outside the zip"):
        app.load_session(tab, str(escaping))
    with pytest.raises(UserInputError, match="Temp-LoRA rule"):
        app.switch_fast(tab, "sometimes")
    with pytest.raises(UserInputError, match="seed"):
        app.start(seed=2.5, tab=tab)
    assert tab.session is session and np.array_equal(tab.session.video(), frames)
    app.step(tab, "move up")  # still usable
    assert tab.session.num_chunks_done == 2


def test_page_seeds_are_kept_exactly_and_booleans_refused(app):
    """Through a float, 12345678901234567 became ...568 (another episode than `sfvgen play` makes) and
    2**64 - 1 was refused as 2**64; True was seed 1."""
    for given, seed in ((12345678901234567, 12345678901234567), (2**64 - 1, 2**64 - 1), (3.0, 3), ("42", 42)):
        assert app.generation_config(seed=given).seed == seed
    for bad in (True, 2.5, float("nan"), "x", [1]):
        with pytest.raises(UserInputError, match="seed must be an integer"):
            app.generation_config(seed=bad)


def test_an_uploaded_image_is_the_first_frame(app, tmp_path):
    from PIL import Image

    picture = tmp_path / "first.png"
    pixels = np.random.default_rng(0).integers(0, 256, (40, 24, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(picture)
    tab = app.start(image=str(picture))
    expected = np.asarray(Image.fromarray(pixels).resize((16, 16), Image.BICUBIC))
    assert np.array_equal(tab.session.frames[0], expected)


def test_saved_session_loads_into_another_tab_and_continues_identically(app, tmp_path):
    tab = app.start("navigation", 2, seed=7, fast="paper")
    app.step(tab, "move right")
    archive = app.save_session(tab)
    with zipfile.ZipFile(archive) as handle:  # the directory `sfvgen play`'s :save writes
        assert {"session.json", "state.safetensors", "optimizer.safetensors",
                "memory/adapter_config.json", "memory/adapter_model.safetensors"} <= set(handle.namelist())
    copy = app.load_session(None, str(archive))
    assert copy.session.adapter_name != tab.session.adapter_name
    assert np.array_equal(copy.session.video(), tab.session.video())
    assert copy.session.records == tab.session.records
    assert _same_memory(_memory(copy), _memory(tab))
    app.step(copy, "move up")
    app.step(tab, "move up")  # same RNG states and memory: the same next chunk
    assert np.array_equal(copy.session.video(), tab.session.video())
    assert _same_memory(_memory(copy), _memory(tab))
    # the zip of a folder (as a user zips a :save DIR) loads too, and replaces a tab's episode
    folder_zip = tmp_path / "folder.zip"
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(folder_zip, "w") as target:
        for name in source.namelist():
            target.writestr(f"my-session/{name}", source.read(name))
    other = app.start(seed=9)
    old = other.session
    app.load_session(other, str(folder_zip))
    assert other.session is not old and old.closed and other.session.num_chunks_done == 1


def _rewritten(archive: Path, out: Path, prefix: str = "", edit=None, extra: dict | None = None) -> Path:
    """``archive``'s files under ``prefix``, session.json passed through ``edit``, plus ``extra`` files."""
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(out, "w") as target:
        for name in source.namelist():
            data = source.read(name)
            if name == "session.json" and edit is not None:
                meta = json.loads(data)
                edit(meta)
                data = json.dumps(meta).encode()
            target.writestr(f"{prefix}{name}", data)
        for name, data in (extra or {}).items():
            target.writestr(name, data)
    return out


def test_a_damaged_session_upload_leaves_the_tab_as_it_was_and_no_new_tab_folder(app, tmp_path):
    tab = app.start(seed=5, fast="paper")
    app.step(tab, "move right")
    archive = app.save_session(tab)
    app.step(tab, "move left")
    session, frames = tab.session, tab.session.video()
    bad = _rewritten(archive, tmp_path / "bad.zip", edit=lambda meta: meta["records"][0].update(seconds=None))
    with pytest.raises(UserInputError, match=r"session\.json: record 0: seconds is None") as failure:
        app.load_session(tab, str(bad))
    # named as the user's upload, not as the server's scratch folder it was unpacked into
    assert "bad.zip" in str(failure.value) and str(app.workdir) not in str(failure.value)
    assert tab.session is session and not session.closed and np.array_equal(tab.session.video(), frames)
    app.step(tab, "move up")  # the episode goes on
    assert tab.session.num_chunks_done == 3
    folders = sorted(p.name for p in app.workdir.iterdir())
    with pytest.raises(UserInputError, match="record 0: seconds is None"):
        app.load_session(None, str(bad))  # as a new tab
    assert sorted(p.name for p in app.workdir.iterdir()) == folders
    # a session that loads but cannot be written out does not replace the episode either
    import slowfast_vgen.cli as cli

    write_outputs = cli.write_outputs

    def fails_for_the_new_session(session, *args, **kwargs):
        if session is not tab.session or session.num_chunks_done == 1:
            raise OSError("disk full")
        return write_outputs(session, *args, **kwargs)

    cli.write_outputs = fails_for_the_new_session
    try:
        with pytest.raises(OSError, match="disk full"):
            app.load_session(tab, str(archive))
    finally:
        cli.write_outputs = write_outputs
    assert tab.session is session and not session.closed and tab.session.num_chunks_done == 3
    # a zip made by macOS Finder (its __MACOSX/ folder beside the session's) loads
    mac = _rewritten(archive, tmp_path / "mac.zip", prefix="sess/", extra={"__MACOSX/sess/._session.json": b"\0"})
    assert app.load_session(None, str(mac)).session.num_chunks_done == 1


def test_a_rule_the_other_memory_settings_do_not_allow_is_a_message(tiny_bundle, tmp_path):
    config = load_config(GenerationConfig, None, [*FAST, "fast.replay=1"])
    web = WebApp(tiny_bundle, "tiny", config, workdir=tmp_path / "work")
    try:
        tab = web.start(seed=0, fast="paper")
        with pytest.raises(UserInputError, match="^Temp-LoRA rule text: fast.replay rehearses history windows"):
            web.switch_fast(tab, "text")
        with pytest.raises(UserInputError, match="^Temp-LoRA rule full-sequence: fast.replay"):
            web.start(seed=0, fast="full-sequence")
    finally:
        web.close()


def test_memory_reset_save_and_load(app):
    tab = app.start(seed=3, fast="paper")
    initial = _memory(tab)
    app.step(tab, "move left")
    learned = _memory(tab)
    assert not _same_memory(initial, learned)
    archive = app.save_memory(tab)
    app.reset_memory(tab)
    assert _same_memory(_memory(tab), initial) and tab.session.num_chunks_done == 1
    assert app.load_memory(tab, str(archive)) == []  # made with this episode's settings
    assert _same_memory(_memory(tab), learned)
    app.switch_fast(tab, "text")  # a fresh memory that learns by another rule: loads, and says so
    assert app.load_memory(tab, str(archive)) == ["mode paper -> text"]
    assert _same_memory(_memory(tab), learned)
    damaged = archive.parent / "damaged.zip"
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(damaged, "w") as target:
        for name in source.namelist():
            target.writestr(name, b"not safetensors" if name.endswith(".safetensors") else source.read(name))
    with pytest.raises(UserInputError) as failure:
        app.load_memory(tab, str(damaged))
    assert "damaged.zip" in str(failure.value) and str(app.workdir) not in str(failure.value)
    app.switch_fast(tab, "off")
    for method in (app.reset_memory, app.save_memory):
        with pytest.raises(UserInputError, match="no memory"):
            method(tab)
    with pytest.raises(UserInputError, match="no memory"):
        app.load_memory(tab, str(archive))


def test_switching_the_rule_keeps_the_video_and_starts_a_fresh_memory(app):
    tab = app.start(seed=4, fast="paper")
    app.step(tab, "move right")
    old, frames = tab.session, tab.session.video()
    assert app.switch_fast(tab, "off") and old.closed
    assert tab.session.fast_learner is None and np.array_equal(tab.session.video(), frames)
    app.step(tab, "move right")
    assert tab.session.records[-1].temp_lora_loss is None and tab.session.num_chunks_done == 2
    assert not app.switch_fast(tab, "off")
    app.switch_fast(tab, "text")
    app.step(tab, "move left")
    assert tab.session.records[-1].temp_lora_loss is not None
    rows = stats_rows(tab.session.records)
    svg = stats_svg(rows)
    assert 'data-series="loss" data-points="2"' in svg and 'data-series="seconds" data-points="3"' in svg


def test_stats_plot_escapes_actions_and_handles_no_chunks():
    assert 'data-chunks="0"' in stats_svg([]) and "sfv-point" not in stats_svg([])
    rows = [{"chunk": 0, "action": "<script>alert(1)</script>", "seconds": 1.0, "loss": None, "peak_mb": 5.0}]
    svg = stats_svg(rows)
    assert "<script>" not in svg and "&lt;script&gt;" in svg and svg.count('class="sfv-point"') == 2


def test_build_ui_makes_the_page(app):
    pytest.importorskip("gradio")
    from slowfast_vgen.webapp import build_ui

    page = build_ui(app)
    ids = {block.elem_id for block in page.blocks.values() if getattr(block, "elem_id", None)}
    assert {"sfv-left", "sfv-right", "sfv-up", "sfv-down", "sfv-video", "sfv-stats", "sfv-status", "sfv-new",
            "sfv-fast", "sfv-image", "sfv-downloads", "sfv-save-session", "sfv-load-session"} <= ids
    assert {fn.api_visibility for fn in page.fns.values()} == {"private"}  # the page's events, no API


def _adapters(app) -> set[str]:
    return set(getattr(app.bundle.unet, "peft_config", None) or {})


def _until(condition, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def test_a_tab_that_goes_away_frees_its_memory_and_folder(app):
    gone, stays = app.start(seed=1, fast="paper"), app.start(seed=2, fast="paper")
    app.attach("browser-1", gone)
    app.attach("browser-2", stays)
    app.step(gone, "move right")
    assert {gone.session.adapter_name, stays.session.adapter_name} <= _adapters(app) and app.open_tabs == 2
    assert app.detach("browser-1")  # gradio's unload event: the tab was closed or reloaded
    assert gone.closed and gone.session.closed and not gone.folder.exists()
    assert gone.session.adapter_name not in _adapters(app) and stays.session.adapter_name in _adapters(app)
    assert not app.detach("browser-1") and not app.close_tab(gone) and app.open_tabs == 1  # once only
    app.step(stays, "move right")  # the other tab goes on
    assert stays.session.num_chunks_done == 1


def test_gradio_deleting_a_tab_state_closes_its_episode(app):
    gr = pytest.importorskip("gradio")
    from slowfast_vgen.webapp import build_ui

    page = build_ui(app)
    (state,) = [block for block in page.blocks.values() if isinstance(block, gr.State)]
    tab = app.start(seed=3, fast="paper")
    state.delete_callback(None)  # a tab that never started an episode
    state.delete_callback(tab)  # what gradio calls when it deletes the state (an hour after the tab went away)
    assert _until(lambda: tab.closed) and tab.session.adapter_name not in _adapters(app)


def _run_event(base: str, fn_index: int, data: list, session: str) -> dict:
    """One event through gradio's queue, as the page sends it: the ``process_completed`` message."""
    import httpx

    body = {"data": data, "fn_index": fn_index, "session_hash": session, "event_data": None, "trigger_id": None}
    httpx.post(f"{base}/gradio_api/queue/join", json=body, timeout=10).raise_for_status()
    with httpx.stream("GET", f"{base}/gradio_api/queue/data", params={"session_hash": session}, timeout=120) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:") and json.loads(line[5:])["msg"] == "process_completed":
                return json.loads(line[5:])
    raise AssertionError("the event did not complete")


def test_launch_serves_localhost_runs_long_events_and_closes_a_tab_that_disconnects(app, monkeypatch, tmp_path):
    pytest.importorskip("gradio")
    import httpx

    from slowfast_vgen.webapp import launch

    step = app.step

    def slow_step(*args, **kwargs):
        time.sleep(6)  # longer than the 5 s client timeout that broke gradio 3.36's queue
        return step(*args, **kwargs)

    monkeypatch.setattr(app, "step", slow_step)
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))  # as sfvgen serve: gradio's copies in a temp dir
    from slowfast_vgen import webapp

    monkeypatch.setattr(webapp, "MAX_UPLOAD_BYTES", 2**20)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    page = launch(app, port=port, block=False)
    try:
        with urllib.request.urlopen(f"{base}/", timeout=10) as response:
            assert response.status == 200 and b"sfvgen" in response.read()
        assert page.server_name == "127.0.0.1" and not page.share
        assert httpx.get(f"{base}/gradio_api/info", timeout=10).json()["named_endpoints"] == {}  # no API
        (right,) = [index for index, fn in page.fns.items() if fn.name == "on_right"]
        done = _run_event(base, right, [None, "navigation", 0, 0, "paper", None], "browser-1")
        assert done["success"], done
        video, status = done["output"]["data"][1], done["output"]["data"][4]
        assert Path(video["path"]).is_relative_to(tmp_path / "gradio") and video["path"].endswith("video.mp4")
        assert "move right" in status
        tab = app.tab_of("browser-1")
        assert tab.session.num_chunks_done == 1 and tab.session.adapter_name in _adapters(app)
        # save the session (a download) and load it in another browser session (an upload), as the page does
        monkeypatch.setattr(app, "step", step)
        (save,) = [index for index, fn in page.fns.items() if fn.name == "on_save_session"]
        archive, status = _run_event(base, save, [None], "browser-1")["output"]["data"]
        assert archive["path"].endswith("session-1-chunks.zip") and "session saved" in status
        with open(archive["path"], "rb") as handle:
            uploaded = httpx.post(f"{base}/gradio_api/upload", files={"files": ("saved.zip", handle)}, timeout=30)
        upload = {"path": uploaded.json()[0], "orig_name": "saved.zip", "meta": {"_type": "gradio.FileData"}}
        too_large = httpx.post(f"{base}/gradio_api/upload", files={"files": ("big.zip", b"0" * (2**20 + 1))}, timeout=30)
        assert too_large.status_code == 413, too_large.text  # refused by the server, not stored
        (load,) = [index for index, fn in page.fns.items() if fn.name == "on_load_session"]
        done = _run_event(base, load, [None, upload], "browser-2")
        assert done["success"] and "session loaded" in done["output"]["data"][4], done
        copy = app.tab_of("browser-2")
        assert copy is not tab and copy.session.num_chunks_done == 1 and app.open_tabs == 2
        assert np.array_equal(copy.session.video(), tab.session.video())
        # the page's heartbeat connection ends (the tab closed): gradio's unload event closes the episode
        with httpx.stream("GET", f"{base}/gradio_api/heartbeat/browser-1", timeout=10) as heartbeat:
            next(heartbeat.iter_lines())
        assert _until(lambda: tab.closed), "the episode of a disconnected tab is still open"
        assert tab.session.adapter_name not in _adapters(app) and copy.session.adapter_name in _adapters(app)
        assert app.open_tabs == 1 and app.tab_of("browser-2") is copy
    finally:
        page.close()


def test_serve_without_gradio_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` raises ImportError
    assert main(["serve", "--port", "7860"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: sfvgen serve needs gradio") and 'pip install -e ".[app]"' in err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("argv", [["serve", "--port", "0"], ["serve", "--world-seed", "-1"],
                                  ["serve", "--port", "7860", "bogus.key=1"]])
def test_serve_bad_input_exits_2(argv, tiny_model_dir, capsys):
    assert main([*argv, "--model", str(tiny_model_dir)]) == 2
    assert capsys.readouterr().err.startswith("error:")


# ---------------------------------------------------------------------------- the page in a real browser
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1200,1100", "--hide-scrollbars"]


def _browser_or_skip(profile: Path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("no Chromium: install Debian's chromium and chromium-driver (.ci/run does)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the test extra has it)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)  # given paths: selenium downloads nothing


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _Output:
    """A process's output lines, read as they come (the test waits for some)."""

    def __init__(self, process: subprocess.Popen):
        import threading

        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(process.stdout), daemon=True)
        self._reader.start()

    def text(self) -> str:
        return "".join(self.lines)

    def finish(self, timeout: float = 10) -> str:
        self._reader.join(timeout)
        return self.text()


def _wait_for_http(url: str, process: subprocess.Popen, output: _Output, start: float, timeout: float) -> float:
    """Seconds from ``start`` (the process's start) to the first HTTP 200 from ``url``."""
    while time.monotonic() - start < timeout:
        if process.poll() is not None:
            raise AssertionError(f"sfvgen serve exited with {process.returncode}: {output.finish()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - start
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"sfvgen serve did not answer {url} within {timeout} s")


def test_the_page_in_headless_chromium(tmp_path):
    pytest.importorskip("gradio")
    browser = _browser_or_skip(tmp_path / "profile")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    started, seconds = time.monotonic(), float("nan")
    server = subprocess.Popen(  # the real command, on the embedded default model
        [sys.executable, "-m", "slowfast_vgen", "serve", "--port", str(port), "--steps", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
    )
    output = _Output(server)
    try:
        # a liveness bound, not a speed bar (startup time is a benchmark's business): the suite shares 2 cores
        seconds = _wait_for_http(url, server, output, started, timeout=120)
        _drive(browser, url, tmp_path, output)
    finally:
        browser.quit()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        print(f"sfvgen serve answered after {seconds:.1f} s; its output:\n{output.finish()}")  # shown when the test fails


def _drive(browser, url: str, tmp_path: Path, output: _Output) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    def points() -> int:
        return len(browser.find_elements(By.CSS_SELECTOR, '#sfv-stats svg[data-series="seconds"] circle.sfv-point'))

    def video_src() -> str | None:
        videos = browser.find_elements(By.CSS_SELECTOR, "#sfv-video video")
        return videos[0].get_attribute("src") if videos else None

    def status() -> str:
        return browser.find_element(By.ID, "sfv-status").text

    def wait(condition, what: str, timeout: float = 60):
        from selenium.common.exceptions import TimeoutException

        try:
            WebDriverWait(browser, timeout, poll_frequency=0.2).until(lambda _: condition())
        except TimeoutException:
            focus = browser.execute_script("return document.activeElement && document.activeElement.outerHTML.slice(0, 80)")
            raise AssertionError(f"{what} (after {timeout} s; status {status()!r}, {points()} points, video "
                                 f"{video_src()}, focus {focus})") from None

    browser.get(url)
    wait(lambda: browser.find_elements(By.ID, "sfv-right"), "the page did not render")
    first_tab = browser.current_window_handle
    # 1. a new episode shows the first frame; the plot has no point yet
    browser.find_element(By.ID, "sfv-new").click()
    wait(lambda: video_src() is not None, "no video after New episode")
    assert points() == 0 and "new episode" in status()
    # 2. the right arrow generates a chunk: the video's source changes, the plot gains a point
    before = video_src()
    browser.find_element(By.ID, "sfv-right").click()
    wait(lambda: points() == 1 and video_src() != before, "no chunk after the right arrow")
    assert "'move right'" in status()
    # 3. the keyboard's left arrow does the same
    before = video_src()
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_LEFT)
    wait(lambda: points() == 2 and video_src() != before, "no chunk after the left arrow key")
    assert "'move left'" in status()
    _screenshot(browser, tmp_path)
    # 4. an uploaded non-image is a message; the episode goes on
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not a picture")
    upload = browser.find_element(By.CSS_SELECTOR, "#sfv-image input[type=file]")
    upload.send_keys(str(not_an_image))
    def uploaded() -> bool:  # the file's row (its name's stem and extension in separate elements), not "Uploading"
        text = browser.find_element(By.ID, "sfv-image").text
        return "notes.png" in text.replace("\n", "") and "Uploading" not in text

    wait(uploaded, "the upload did not arrive")
    before = video_src()
    browser.find_element(By.ID, "sfv-new").click()
    wait(lambda: "is not an image" in status(), "no message for a non-image upload")
    assert video_src() == before and points() == 2
    # 5. a second tab is its own episode: no frames, and its chunk is its first
    browser.switch_to.new_window("tab")
    browser.get(url)
    wait(lambda: browser.find_elements(By.ID, "sfv-right"), "the second tab did not render")
    assert video_src() is None and points() == 0
    browser.find_element(By.ID, "sfv-right").click()
    wait(lambda: points() == 1, "no chunk in the second tab")
    assert "chunk 0:" in status()
    # 6. closing the second tab closes its episode on the server (its memory leaves the model); the first goes on
    second_tab = browser.current_window_handle
    assert output.text().count("closed the episode") == 0
    browser.close()
    browser.switch_to.window(first_tab)
    wait(lambda: output.text().count("closed the episode") == 1, "the closed tab's episode is still open", timeout=30)
    assert points() == 2 and second_tab not in browser.window_handles
    before = video_src()
    browser.find_element(By.ID, "sfv-up").click()
    wait(lambda: points() == 3 and video_src() != before, "no chunk in the first tab after the second closed")
    # 7. offline: the page loaded nothing from anywhere but the server (no font CDN, no analytics)
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources and [name for name in resources if not name.startswith((url, "data:", "blob:"))] == []


def _screenshot(browser, tmp_path: Path) -> None:
    """The page after two chunks: docs/webapp.png when SFVGEN_SCREENSHOT names it."""
    from io import BytesIO

    from PIL import Image

    from selenium.webdriver.support.ui import WebDriverWait

    loaded = "const v = document.querySelector('#sfv-video video'); return !!v && v.readyState >= 2;"
    WebDriverWait(browser, 20).until(lambda _: browser.execute_script(loaded), message="the video did not load")
    png = browser.get_screenshot_as_png()
    image = Image.open(BytesIO(png)).convert("RGB").quantize(colors=256)  # a small PNG for the README
    for path in [tmp_path / "webapp.png", os.environ.get("SFVGEN_SCREENSHOT")]:
        if path:
            image.save(path, optimize=True)


def test_two_quick_first_presses_in_one_browser_tab_start_one_episode(app):
    pytest.importorskip("gradio")
    import threading
    import types

    from slowfast_vgen.webapp import Tab, build_ui

    page = build_ui(app)
    handlers = {fn.fn.__name__: fn.fn for fn in page.fns.values() if fn.fn}
    request = types.SimpleNamespace(session_hash="browser-1")  # both presses come from one browser tab
    results, go = {}, threading.Barrier(2)

    def press(name):
        go.wait()
        results[name] = handlers[name](None, "navigation", 0, 0, "paper", None, request, lambda *a, **k: None)

    threads = [threading.Thread(target=press, args=(name,)) for name in ("on_left", "on_right")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    tabs = {name: [value for value in result.values() if isinstance(value, Tab)] for name, result in results.items()}
    assert sorted(tabs) == ["on_left", "on_right"] and all(len(found) == 1 for found in tabs.values()), results
    (left,), (right,) = tabs["on_left"], tabs["on_right"]
    assert left is right is app.tab_of("browser-1") and app.open_tabs == 1
    assert left.session.num_chunks_done == 2  # both presses stepped the one episode
    assert _adapters(app) == {left.session.adapter_name}
    assert sorted(p.name for p in app.workdir.iterdir()) == [left.folder.name]
    assert app.detach("browser-1") and not _adapters(app) and not left.folder.exists()
