"""Metrics: frame metrics, FVD maths, SCuts, SRC, ground-truth memory metrics, action accuracy, CIs.

Feature networks use random weights saved by the tests as safetensors (same architectures as
the real LPIPS-AlexNet / I3D / ResNet-18) or a tiny 3-D conv net for FVD.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from slowfast_vgen.config import load_config
from slowfast_vgen.errors import UserInputError
from slowfast_vgen.metrics import (
    MetricResult,
    MetricsConfig,
    PretrainedMetrics,
    action_accuracy,
    action_chunks,
    chunk_scores,
    detail_energy,
    detail_ratio,
    estimate_shift,
    frechet_distance,
    gaussian_fit,
    mean_ci,
    motion_direction,
    psnr,
    psnr_per_frame,
    revisit_scores,
    scene_cut_frames,
    scene_cuts,
    ssim,
    t_quantile_975,
    to_unit_frames,
)
from slowfast_vgen.metrics.frames import PSNR_CEILING_DB
from slowfast_vgen.metrics.networks import (
    InceptionI3d,
    LPIPSAlexNet,
    build_resnet18,
    load_i3d,
    load_safetensors,
    torchvision_resnet_key,
)

NOISE_LEVELS = (4.0, 12.0, 30.0, 60.0)  # std of added noise, in uint8 grey levels


# ---- helpers ------------------------------------------------------------------------------------


def smooth_texture(rng: np.random.Generator, size: int = 32, cutoff: float = 4.0) -> np.ndarray:
    """A periodic, smooth random ``(size, size, 3) uint8`` texture (Gaussian low-pass of noise)."""
    noise = rng.normal(size=(3, size, size))
    freq = np.fft.fftfreq(size) * size
    lowpass = np.exp(-(freq[:, None] ** 2 + freq[None, :] ** 2) / (2 * cutoff**2))
    image = np.real(np.fft.ifft2(np.fft.fft2(noise) * lowpass))  # (3, H, W), periodic
    image = (image - image.min()) / (image.max() - image.min())
    return (image.transpose(1, 2, 0) * 255).round().astype(np.uint8)


def panning_video(texture: np.ndarray, num_frames: int, step: tuple[int, int]) -> np.ndarray:
    """``(F, H, W, 3)``: frame ``t`` is the texture rolled by ``t * (dx, dy)`` content pixels."""
    dx, dy = step
    return np.stack([np.roll(texture, shift=(t * dy, t * dx), axis=(0, 1)) for t in range(num_frames)])


def add_noise(video: np.ndarray, std: float, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(scale=std, size=video.shape)
    return np.clip(video.astype(np.float64) + noise, 0, 255).round().astype(np.uint8)


class TinyVideoNet(nn.Module):
    """A small 3-D conv feature net for FVD tests: ``(B, F, 3, H, W)`` in [0, 1] -> ``(B, 16)``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(
            nn.Conv3d(3, 8, 3, stride=(1, 2, 2), padding=1), nn.ReLU(),
            nn.Conv3d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool3d(1),
        )  # fmt: skip

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        return self.body(videos.transpose(1, 2)).flatten(1)  # (B, F, C, H, W) -> (B, C, F, H, W) -> (B, 16)


@pytest.fixture(scope="module")
def lpips_weights(tmp_path_factory) -> str:
    torch.manual_seed(0)
    net = LPIPSAlexNet()
    for i in range(5):  # real LPIPS heads are non-negative
        head = getattr(net, f"lin{i}").model[1]
        head.weight.data = head.weight.data.abs()
    path = tmp_path_factory.mktemp("weights") / "lpips_alex.safetensors"
    save_file(net.state_dict(), str(path))
    return str(path)


@pytest.fixture(scope="module")
def resnet_weights(tmp_path_factory) -> str:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18.safetensors"
    state = {"resnet." + k: v for k, v in build_resnet18().state_dict().items()}  # microsoft/resnet-18 naming
    state["classifier.1.weight"] = torch.zeros(1000, 512)  # a classifier head is ignored
    save_file(state, str(path))
    return str(path)


@pytest.fixture(scope="module")
def videos() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    steps = [(1, 0), (-1, 0), (0, 1), (0, -1), (0, 0), (2, 1), (1, -2), (0, 2), (-2, 0), (1, 1)]
    return [panning_video(smooth_texture(rng), 8, step) for step in steps]


# ---- frame metrics ------------------------------------------------------------------------------


def test_frame_conversion_accepts_both_layouts():
    video = np.random.default_rng(0).integers(0, 256, size=(3, 8, 10, 3), dtype=np.uint8)
    unit = to_unit_frames(video)
    assert unit.shape == (3, 3, 8, 10) and unit.dtype == torch.float32
    assert float(unit.max()) <= 1.0
    assert torch.equal(to_unit_frames(unit), unit)
    assert psnr(video, unit) == PSNR_CEILING_DB  # uint8 and float views of the same clip
    with pytest.raises(ValueError, match=r"\(F, 3, H, W\)"):
        to_unit_frames(unit.permute(0, 2, 3, 1))  # float channels-last is ambiguous: refused


def test_identical_videos_give_perfect_scores(videos, lpips_weights):
    video = videos[0]
    assert psnr(video, video) == PSNR_CEILING_DB == 100.0  # finite: a perfect score counts in means
    assert (psnr_per_frame(video, video) == PSNR_CEILING_DB).all()
    assert ssim(video, video) == pytest.approx(1.0, abs=1e-6)
    metrics = PretrainedMetrics(MetricsConfig(lpips_weights=lpips_weights), fvd_net=TinyVideoNet())
    result = metrics.lpips(video, video)
    assert result.available and result.value == pytest.approx(0.0, abs=1e-7)
    fvd = metrics.fvd(videos, videos)
    assert fvd.available and fvd.value == pytest.approx(0.0, abs=1e-6)


def test_more_noise_is_monotonically_worse(videos, lpips_weights):
    metrics = PretrainedMetrics(MetricsConfig(lpips_weights=lpips_weights), fvd_net=TinyVideoNet())
    clean = videos[0]
    noisy = [add_noise(clean, std, seed=1) for std in NOISE_LEVELS]
    psnrs = [psnr(n, clean) for n in noisy]
    ssims = [ssim(n, clean) for n in noisy]
    lpipss = [metrics.lpips(n, clean).value for n in noisy]
    fvds = [metrics.fvd(videos, [add_noise(v, std, seed=i) for i, v in enumerate(videos)]).value for std in NOISE_LEVELS]
    assert all(a > b for a, b in zip(psnrs, psnrs[1:])), psnrs
    assert all(a > b for a, b in zip(ssims, ssims[1:])), ssims
    assert all(a < b for a, b in zip(lpipss, lpipss[1:])), lpipss
    assert all(a < b for a, b in zip(fvds, fvds[1:])), fvds
    assert lpipss[0] > 0 and fvds[0] > 0


def test_detail_ratio_is_one_for_the_truth_above_for_speckle_below_for_blur(videos):
    dot = np.zeros((1, 3, 3, 3), np.float32)  # (F, 3, H, W) float: one bright pixel in the middle
    dot[:, :, 1, 1] = 1.0
    assert detail_energy(dot) == pytest.approx((8 / 9) ** 2)  # the pixel minus its 3x3 mean, 1 - 1/9
    clean = videos[0]
    blurred = torch.nn.functional.avg_pool2d(torch.from_numpy(clean).permute(0, 3, 1, 2).float(), 3, 1, 1,
                                             count_include_pad=False).round().byte().permute(0, 2, 3, 1).numpy()
    ratios = [detail_ratio(clean, clean), detail_ratio(add_noise(clean, 10, seed=1), clean),
              detail_ratio(add_noise(clean, 30, seed=1), clean), detail_ratio(blurred, clean)]
    assert ratios[0] == 1.0 and 1 < ratios[1] < ratios[2] and ratios[3] < 1, ratios
    flat = np.full_like(clean, 128)
    assert math.isnan(detail_ratio(clean, flat))  # the truth has no detail to compare with
    with pytest.raises(ValueError, match="no interior pixels"):
        detail_energy(np.zeros((1, 2, 8, 3), np.uint8))


def test_frechet_distance_known_values():
    x = torch.randn(200, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(x, x + 2.0) == pytest.approx(6 * 4.0, rel=1e-9)  # mean term only
    # N(0, I) vs N(0, 4I) in D dims: D * (1 + 4 - 2*2) = D, computed from exact statistics
    from slowfast_vgen.metrics import frechet_distance_from_stats

    eye = torch.eye(6, dtype=torch.float64)
    assert frechet_distance_from_stats(torch.zeros(6), eye, torch.zeros(6), 4 * eye) == pytest.approx(6.0)
    with pytest.raises(ValueError, match="at least 2"):
        gaussian_fit(x[:1])


# ---- weights files: missing, refused, wrong -----------------------------------------------------


def test_missing_weights_make_metrics_unavailable_with_reason(tmp_path, videos):
    missing = tmp_path / "nowhere" / "alex.safetensors"
    metrics = PretrainedMetrics(MetricsConfig(lpips_weights=str(missing)))
    result = metrics.lpips(videos[0], videos[0])
    assert not result.available and result.value is None
    assert str(missing) in result.reason and "not found" in result.reason
    fvd = metrics.fvd(videos, videos)
    assert not fvd.available and "i3d_weights" in fvd.reason  # not configured: names the setting
    src = metrics.src(videos[0], [(0, 4)])
    assert not src.available and "resnet18_weights" in src.reason
    assert set(metrics.availability()) == {"lpips", "fvd", "src"}
    assert "unavailable" in str(result) and result.to_json()["available"] is False


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".pth"])
def test_pickle_weights_are_refused(tmp_path, suffix):
    path = str(tmp_path / f"weights{suffix}")
    with pytest.raises(ValueError, match="refused"):
        MetricsConfig(resnet18_weights=path)
    with pytest.raises(UserInputError, match="refused"):
        load_config(MetricsConfig, overrides=[f"lpips_weights={path}"])
    with pytest.raises(UserInputError, match="safetensors"):
        load_safetensors(path, "I3D", "i3d_weights")


@pytest.mark.parametrize("field, value", [("scene_threshold", "nan"), ("scene_threshold", "inf"),
                                          ("scene_threshold", "0"), ("motion_stay_threshold", "nan"),
                                          ("motion_stay_threshold", "inf"), ("motion_stay_threshold", "-1")])
def test_float_settings_refuse_nan_and_infinity(field, value):
    with pytest.raises(UserInputError, match=rf"^bad config: {field} must be a finite number"):
        load_config(MetricsConfig, overrides=[f"{field}={value}"])


def test_named_weights_files_are_checked_by_check_weights_files(tmp_path):
    from slowfast_vgen.metrics import check_weights_files

    check_weights_files(MetricsConfig())  # nothing named: every metric just unavailable
    with pytest.raises(ValueError, match=r"^resnet18_weights='.*nope\.safetensors' does not exist"):
        check_weights_files(MetricsConfig(resnet18_weights=str(tmp_path / "nope.safetensors")))
    (tmp_path / "d.safetensors").mkdir()
    with pytest.raises(ValueError, match=r"^metrics\.lpips_weights='.*d\.safetensors' is a directory"):
        check_weights_files(MetricsConfig(lpips_weights=str(tmp_path / "d.safetensors")), prefix="metrics.")


def test_unreadable_or_mismatched_weights_are_unavailable(tmp_path, videos):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a safetensors file")
    result = PretrainedMetrics(MetricsConfig(lpips_weights=str(corrupt))).lpips(videos[0], videos[0])
    assert not result.available and "cannot read" in result.reason
    wrong = tmp_path / "wrong.safetensors"
    save_file({"features.0.weight": torch.zeros(2, 2)}, str(wrong))
    result = PretrainedMetrics(MetricsConfig(lpips_weights=str(wrong))).lpips(videos[0], videos[0])
    assert not result.available and "does not fit" in result.reason and "missing" in result.reason


def test_metric_result_needs_value_or_reason():
    with pytest.raises(ValueError):
        MetricResult("x")
    assert MetricResult.ok("psnr", math.inf).to_json()["value"] == "inf"


# ---- FVD network: I3D round trip ----------------------------------------------------------------


def test_i3d_loads_from_safetensors_and_gives_logits(tmp_path):
    torch.manual_seed(0)
    net = InceptionI3d().eval()
    keys = set(net.state_dict())
    for key in ("Conv3d_1a_7x7.conv3d.weight", "Mixed_3b.b1b.bn.running_var", "Mixed_5c.b3b.conv3d.weight", "logits.conv3d.bias"):
        assert key in keys  # pytorch-i3d key names
    path = tmp_path / "i3d.safetensors"
    save_file({k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}, str(path))
    features = load_i3d(str(path))
    clip = torch.rand(1, 8, 3, 32, 32)  # 8 frames are resampled to 16, 32 px resized to 224
    with torch.inference_mode():
        out = features(clip)
        expected = net(torch.nn.functional.interpolate(clip[:, torch.arange(16) // 2].flatten(0, 1), size=224, mode="bilinear").view(1, 16, 3, 224, 224).transpose(1, 2) * 2 - 1)
    assert out.shape == (1, 400)
    torch.testing.assert_close(out, expected)


# ---- long-video metrics -------------------------------------------------------------------------


def test_scene_cuts_find_a_planted_hard_cut():
    rng = np.random.default_rng(3)
    warm = smooth_texture(rng) // 2 + np.array([120, 60, 0], np.uint8)  # distinct palettes
    cold = smooth_texture(rng) // 2 + np.array([0, 60, 120], np.uint8)
    first, second = panning_video(warm, 30, (1, 0)), panning_video(cold, 30, (0, 1))
    assert scene_cuts(first, min_scene_len=5) == 0
    assert scene_cuts(second, min_scene_len=5) == 0
    video = np.concatenate([first, second])
    assert scene_cut_frames(video, min_scene_len=5) == [30]
    assert scene_cuts(video, min_scene_len=5, upscale=4) == 1
    assert scene_cuts(to_unit_frames(video), min_scene_len=5) == 1  # float frames too


def test_src_identical_revisit_is_one_and_unrelated_is_lower(resnet_weights):
    rng = np.random.default_rng(4)
    place, elsewhere, unrelated = smooth_texture(rng), smooth_texture(rng), smooth_texture(rng, cutoff=8)
    video = np.stack([place, elsewhere, place, unrelated])
    metrics = PretrainedMetrics(MetricsConfig(resnet18_weights=resnet_weights, src_image_size=64))
    same = metrics.src(video, [(0, 2)])
    other = metrics.src(video, [(0, 3)])
    assert same.available and same.value == pytest.approx(1.0, abs=1e-6)
    assert other.available and other.value < same.value - 1e-4
    both = metrics.src(video, [(0, 2), (0, 3)])
    assert both.value == pytest.approx((same.value + other.value) / 2, abs=1e-6)
    with pytest.raises(ValueError, match="out of range"):
        metrics.src(video, [(0, 9)])


def test_torchvision_resnet_keys_map_onto_transformers_resnet():
    tv_keys = ["conv1.weight", "fc.weight", "fc.bias"]
    tv_keys += [f"bn1.{p}" for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
    for stage in range(1, 5):
        for block in range(2):
            for conv in ("conv1", "conv2"):
                tv_keys.append(f"layer{stage}.{block}.{conv}.weight")
            for bn in ("bn1", "bn2") + (("downsample.1",) if stage > 1 and block == 0 else ()):
                tv_keys += [f"layer{stage}.{block}.{bn}.{p}" for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
            if stage > 1 and block == 0:
                tv_keys.append(f"layer{stage}.{block}.downsample.0.weight")
    mapped = {torchvision_resnet_key(k) for k in tv_keys} - {None}
    assert mapped == set(build_resnet18().state_dict())


# ---- ground-truth memory metrics ----------------------------------------------------------------


def test_chunk_and_revisit_scores():
    rng = np.random.default_rng(5)
    truth = panning_video(smooth_texture(rng), 9, (1, 0))
    truth[8] = truth[0]  # the route returns to its start
    generated = truth.copy()
    generated[4:] = add_noise(truth[4:], 20.0, seed=0)
    first, second = chunk_scores(generated, truth, [(0, 4), (4, 9)])
    assert (first.start, first.end, first.psnr, first.ssim) == (0, 4, PSNR_CEILING_DB, pytest.approx(1.0, abs=1e-6))
    assert second.psnr < 30 and second.ssim < 1
    (revisit,) = revisit_scores(generated, truth, [(0, 8)])
    assert revisit.psnr_vs_truth == pytest.approx(psnr(generated[8:9], truth[8:9]))
    assert revisit.psnr_vs_first == pytest.approx(revisit.psnr_vs_truth)  # first visit is exact here
    assert revisit.first_psnr_vs_truth == PSNR_CEILING_DB  # a perfect memory of the start frame is exact
    (inner,) = revisit_scores(generated, truth, [(4, 8)])  # a generated first visit: a perfect memory scores its error
    assert inner.first_psnr_vs_truth == pytest.approx(psnr(generated[4:5], truth[4:5])) and inner.first_psnr_vs_truth < 30
    with pytest.raises(ValueError, match="out of range"):
        chunk_scores(generated, truth, [(5, 12)])


# ---- action accuracy ----------------------------------------------------------------------------

# content shift per frame for each commanded primitive ("move right" = content moves left)
CONTENT_STEP = {"move left": (2, 0), "move right": (-2, 0), "move up": (0, 2), "move down": (0, -2), "stay": (0, 0)}


@pytest.mark.parametrize("noise", [0.0, 25.0])
@pytest.mark.parametrize("primitive", sorted(CONTENT_STEP))
def test_motion_direction_of_each_primitive(primitive, noise):
    rng = np.random.default_rng(6)
    chunk = panning_video(smooth_texture(rng), 9, CONTENT_STEP[primitive])
    if noise:
        chunk = add_noise(chunk, noise, seed=7)
    assert motion_direction(chunk) == primitive


def test_stay_threshold_is_the_camera_speed_per_frame_step():
    """9 frames are 8 steps: a pan of 4 px over them is 0.5 px per step, exactly the default threshold."""
    rng = np.random.default_rng(6)
    texture = smooth_texture(rng)
    slow = panning_video(texture, 9, (0, 0))
    slow[4:] = panning_video(texture, 9, (-4, 0))[1]  # content shifts 4 px once: the camera moved right 4 px
    assert motion_direction(slow, stay_threshold=0.5) == "move right"
    assert motion_direction(slow, stay_threshold=0.51) == "stay"


def test_estimate_shift_convention():
    texture = smooth_texture(np.random.default_rng(8))
    moved = np.roll(texture, shift=(-1, 3), axis=(0, 1))  # content 3 px right, 1 px up
    assert estimate_shift(texture, moved) == (3, -1)


def test_action_accuracy_fraction_and_episode_chunks():
    rng = np.random.default_rng(9)
    commanded = ["move left", "move right", "move up", "move down", "stay"]
    k = 4
    frames = [smooth_texture(rng)]
    for p in commanded:
        dx, dy = CONTENT_STEP[p]
        for _ in range(k):
            frames.append(np.roll(frames[-1], shift=(dy, dx), axis=(0, 1)))
    video = np.stack(frames)  # episode layout: 1 + M*K frames
    chunks = action_chunks(video, k)
    assert len(chunks) == 5 and all(len(c) == k + 1 for c in chunks)
    assert action_accuracy(chunks, commanded) == 1.0
    wrong = commanded[:3] + ["stay", "move down"]  # two labels swapped
    assert action_accuracy(chunks, wrong) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="navigation primitives"):
        action_accuracy(chunks, commanded[:4] + ["push red left"])
    with pytest.raises(ValueError, match="1 \\+ M\\*K"):
        action_chunks(video[:-1], k)


# ---- statistics ---------------------------------------------------------------------------------


def test_mean_ci_known_values():
    mean, low, high = mean_ci([1, 2, 3, 4, 5])
    half = 2.7764 * math.sqrt(2.5) / math.sqrt(5)
    assert (mean, low, high) == (3.0, pytest.approx(3 - half, abs=1e-9), pytest.approx(3 + half, abs=1e-9))
    assert mean_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    single = mean_ci([7.0])
    assert single[0] == 7.0 and math.isnan(single[1]) and math.isnan(single[2])
    assert t_quantile_975(1) == pytest.approx(12.7062)
    assert t_quantile_975(50) == pytest.approx(2.0086, abs=2e-3)
    assert t_quantile_975(10**6) == pytest.approx(1.95996, abs=1e-4)
    with pytest.raises(ValueError):
        mean_ci([])
