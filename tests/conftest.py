"""Shared fixtures: a tiny pixel-space model (1.3 M-parameter UNet3D, 16x16 frames) built in code."""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning: with several torch processes on 2 cores
# (the 2-process training test, a background job) spinning threads slow everything ~10x.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest
import torch

from slowfast_vgen.model import ModelBundle, ModelConfig


def _usable_cores() -> int:
    """The cores this process may run on (a container's share of a larger host, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto`` (pyproject addopts): one worker per usable core."""
    return _usable_cores()


# each worker takes its share of the cores
torch.set_num_threads(max(1, _usable_cores() // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: pass --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_config() -> ModelConfig:
    return ModelConfig(height=16, width=16, seed=0)


@pytest.fixture()
def tiny_bundle(tiny_config) -> ModelBundle:
    """A fresh tiny model per test (tests mutate it by injecting LoRAs)."""
    return ModelBundle.from_config(tiny_config)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_config):
    path = tmp_path_factory.mktemp("models") / "tiny"
    ModelBundle.from_config(tiny_config).save_pretrained(path)
    return path


@pytest.fixture()
def first_frame() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)


@pytest.fixture()
def drawn_timesteps(monkeypatch) -> list[torch.Tensor]:
    """Every tensor of training timesteps ``diffusion.sample_timesteps`` returns during the test."""
    from slowfast_vgen import diffusion

    drawn: list[torch.Tensor] = []
    real = diffusion.sample_timesteps

    def spy(*args, **kwargs):
        timesteps = real(*args, **kwargs)
        drawn.append(timesteps)
        return timesteps

    monkeypatch.setattr(diffusion, "sample_timesteps", spy)
    return drawn
