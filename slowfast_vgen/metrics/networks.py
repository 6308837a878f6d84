"""Feature networks of the learned metrics, loaded from local ``.safetensors`` files only.

* :class:`LPIPSAlexNet` - LPIPS v0.1 over AlexNet (Zhang et al. 2018). Weights file keys:
  torchvision AlexNet ``features.{0,3,6,8,10}.{weight,bias}`` plus the LPIPS linear heads
  ``lin{0..4}.model.1.weight`` (the key names of the ``lpips`` package and of torchmetrics'
  ``lpips_models/alex.pth``). Merging those two trusted state dicts into one safetensors file
  is a one-off offline step for the user; this code never unpickles anything.
* :class:`InceptionI3d` - I3D Inception-v1 (Carreira & Zisserman 2017), the FVD feature
  network, with the state-dict key names of the widely used ``pytorch-i3d`` port
  (``Conv3d_1a_7x7.conv3d.weight``, ``Mixed_3b.b1b.bn.running_mean``, ``logits.conv3d.bias`` ...).
  :class:`I3DFeatures` adds FVD's preprocessing and returns the 400 time-averaged logits.
* ResNet-18 for SRC is ``transformers``' ``ResNetModel`` with the resnet-18 configuration
  (:func:`build_resnet18`); :class:`ResNet18Features` returns its 512-d pooled features.
  Weights may use transformers key names (``microsoft/resnet-18``, with or without the
  ``resnet.`` prefix) or torchvision ones (``layer1.0.conv1.weight`` ...), see
  :func:`torchvision_resnet_key`.

Loading failures (file not set, not found, unreadable, wrong keys or shapes) raise
:class:`~slowfast_vgen.metrics.results.WeightsUnavailable` with the reason; a path that is not
``.safetensors`` raises :class:`~slowfast_vgen.errors.UserInputError` (refused).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserInputError
from .config import check_weights_suffix
from .results import WeightsUnavailable

# ---- safetensors loading ------------------------------------------------------------------------


def load_safetensors(path: Optional[str], what: str, field: str) -> dict[str, torch.Tensor]:
    """The tensors of the ``.safetensors`` file at ``path`` (``field`` names the config entry)."""
    if not path:
        raise WeightsUnavailable(f"{what} weights not configured (set MetricsConfig.{field} to a local .safetensors file)")
    try:
        check_weights_suffix(str(path), field)
    except ValueError as err:
        raise UserInputError(str(err)) from None
    file = Path(path)
    if not file.is_file():
        raise WeightsUnavailable(f"{what} weights file not found: {file}")
    from safetensors.torch import load_file

    try:
        return load_file(str(file), device="cpu")
    except Exception as err:  # safetensors raises SafetensorError / OSError on a corrupt file
        raise WeightsUnavailable(f"cannot read {what} weights file {file}: {err}") from None


def load_weights(module: nn.Module, state: dict[str, torch.Tensor], what: str, path: str) -> nn.Module:
    """Copy ``state`` into ``module`` strictly (BatchNorm ``num_batches_tracked`` may be absent)."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    bad_shape = [k for k in state if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
    if bad_shape:
        k = bad_shape[0]
        problems.append(f"{len(bad_shape)} shape mismatches (e.g. {k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)})")
    if problems:
        raise WeightsUnavailable(f"{what} weights file {path} does not fit the network: " + "; ".join(problems))
    module.load_state_dict(state, strict=False)
    return module.eval().requires_grad_(False)


def _batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([fn(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])


# ---- LPIPS (AlexNet) ----------------------------------------------------------------------------


class _LinearHead(nn.Module):
    """LPIPS 1x1 channel weighting; ``model.1.weight`` is ``(1, C, 1, 1)`` like the lpips package."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))


class LPIPSAlexNet(nn.Module):
    """AlexNet conv trunk (torchvision layout, so key indices match) + LPIPS v0.1 linear heads."""

    CHANNELS = (64, 192, 384, 256, 256)
    TAPS = (1, 4, 7, 9, 11)  # indices in ``features`` of the five ReLUs LPIPS compares

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        )  # fmt: skip
        for i, c in enumerate(self.CHANNELS):
            self.add_module(f"lin{i}", _LinearHead(c))
        # LPIPS' ScalingLayer, applied to inputs in [-1, 1]
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)

    def layer_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Activations of the five tapped ReLUs for ``(N, 3, H, W)`` images in ``[0, 1]``."""
        x = ((images * 2 - 1) - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.TAPS:
                out.append(x)
        return out

    @property
    def lin_weights(self) -> list[torch.Tensor]:
        """The ``(C_l,)`` channel weights of the five linear heads."""
        return [getattr(self, f"lin{i}").model[1].weight.flatten() for i in range(len(self.CHANNELS))]


def load_lpips_alexnet(path: Optional[str], field: str = "lpips_weights") -> LPIPSAlexNet:
    """:class:`LPIPSAlexNet` with weights from a local safetensors file (AlexNet ``classifier.*`` keys are ignored)."""
    state = {k: v for k, v in load_safetensors(path, "LPIPS (AlexNet)", field).items() if not k.startswith("classifier.")}
    return load_weights(LPIPSAlexNet(), state, "LPIPS (AlexNet)", str(path))  # type: ignore[return-value]


# ---- I3D (Inception-v1, inflated) ---------------------------------------------------------------


def _same_pad(sizes: Sequence[int], kernel: Sequence[int], stride: Sequence[int]) -> list[int]:
    """TensorFlow 'SAME' padding for (T, H, W) as an ``F.pad`` list (last dim first)."""
    pads: list[int] = []
    for n, k, s in reversed(list(zip(sizes, kernel, stride))):
        total = max(k - (s if n % s == 0 else n % s), 0)
        pads += [total // 2, total - total // 2]
    return pads


class _Unit3D(nn.Module):
    """Conv3d ('SAME' padding) + BatchNorm3d + ReLU, the I3D building block."""

    def __init__(self, cin: int, cout: int, kernel=(1, 1, 1), stride=(1, 1, 1), norm: bool = True, relu: bool = True, bias: bool = False) -> None:
        super().__init__()
        self.kernel, self.stride, self.relu = tuple(kernel), tuple(stride), relu
        self.conv3d = nn.Conv3d(cin, cout, self.kernel, self.stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(cout, eps=1e-3, momentum=0.01) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(F.pad(x, _same_pad(x.shape[2:], self.kernel, self.stride)))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class _MaxPool3dSame(nn.Module):
    def __init__(self, kernel: Sequence[int], stride: Sequence[int]) -> None:
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # zero padding, as in the reference port (inputs are post-ReLU, so >= 0)
        return F.max_pool3d(F.pad(x, _same_pad(x.shape[2:], self.kernel, self.stride)), self.kernel, self.stride)


class _Inception(nn.Module):
    """Four parallel branches: 1x1; 1x1 -> 3x3x3; 1x1 -> 3x3x3; 3x3x3 max-pool -> 1x1."""

    def __init__(self, cin: int, widths: Sequence[int]) -> None:
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3 = widths
        self.b0 = _Unit3D(cin, w0)
        self.b1a, self.b1b = _Unit3D(cin, w1a), _Unit3D(w1a, w1b, (3, 3, 3))
        self.b2a, self.b2b = _Unit3D(cin, w2a), _Unit3D(w2a, w2b, (3, 3, 3))
        self.b3a, self.b3b = _MaxPool3dSame((3, 3, 3), (1, 1, 1)), _Unit3D(cin, w3)
        self.out_channels = w0 + w1b + w2b + w3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))]
        return torch.cat(branches, dim=1)  # (B, sum of widths, T, H, W)


class InceptionI3d(nn.Module):
    """I3D Inception-v1 up to the Kinetics logits; input ``(B, 3, T, 224, 224)`` in ``[-1, 1]``, T >= 9."""

    MIXED = {
        "Mixed_3b": (64, 96, 128, 16, 32, 32), "Mixed_3c": (128, 128, 192, 32, 96, 64),
        "Mixed_4b": (192, 96, 208, 16, 48, 64), "Mixed_4c": (160, 112, 224, 24, 64, 64),
        "Mixed_4d": (128, 128, 256, 24, 64, 64), "Mixed_4e": (112, 144, 288, 32, 64, 64),
        "Mixed_4f": (256, 160, 320, 32, 128, 128), "Mixed_5b": (256, 160, 320, 32, 128, 128),
        "Mixed_5c": (384, 192, 384, 48, 128, 128),
    }  # fmt: skip

    def __init__(self, num_classes: int = 400) -> None:
        super().__init__()
        blocks: list[tuple[str, nn.Module]] = [
            ("Conv3d_1a_7x7", _Unit3D(3, 64, (7, 7, 7), (2, 2, 2))),
            ("MaxPool3d_2a_3x3", _MaxPool3dSame((1, 3, 3), (1, 2, 2))),
            ("Conv3d_2b_1x1", _Unit3D(64, 64)),
            ("Conv3d_2c_3x3", _Unit3D(64, 192, (3, 3, 3))),
            ("MaxPool3d_3a_3x3", _MaxPool3dSame((1, 3, 3), (1, 2, 2))),
        ]
        channels = 192
        for name, widths in self.MIXED.items():
            if name == "Mixed_4b":
                blocks.append(("MaxPool3d_4a_3x3", _MaxPool3dSame((3, 3, 3), (2, 2, 2))))
            if name == "Mixed_5b":
                blocks.append(("MaxPool3d_5a_2x2", _MaxPool3dSame((2, 2, 2), (2, 2, 2))))
            block = _Inception(channels, widths)
            blocks.append((name, block))
            channels = block.out_channels
        self.block_names = [name for name, _ in blocks]
        for name, block in blocks:
            self.add_module(name, block)
        self.logits = _Unit3D(channels, num_classes, norm=False, relu=False, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, T, H, W)`` -> ``(B, num_classes)`` logits averaged over time."""
        for name in self.block_names:
            x = getattr(self, name)(x)
        x = F.avg_pool3d(x, kernel_size=(2, 7, 7), stride=1)  # (B, 1024, T', 1, 1) at 224 px
        x = self.logits(x)  # (B, classes, T', 1, 1)
        return x.flatten(2).mean(dim=2)  # (B, classes, T') -> (B, classes)


def resample_time(videos: torch.Tensor, num_frames: int) -> torch.Tensor:
    """``(B, F, C, H, W)`` -> ``(B, max(F, num_frames), C, H, W)``: short clips get nearest-frame resampling."""
    length = videos.shape[1]
    if length >= num_frames:
        return videos
    index = torch.div(torch.arange(num_frames) * length, num_frames, rounding_mode="floor")
    return videos[:, index]


class I3DFeatures(nn.Module):
    """FVD features: clips ``(B, F, 3, H, W)`` in ``[0, 1]`` -> ``(B, 400)`` I3D logits.

    Preprocessing as in the reference FVD: frames resized (bilinear) to ``image_size`` square,
    scaled to ``[-1, 1]``; clips shorter than ``num_frames`` are resampled in time (I3D needs
    at least 9 frames; FVD is conventionally computed on 16).
    """

    def __init__(self, network: InceptionI3d, num_frames: int = 16, image_size: int = 224) -> None:
        super().__init__()
        self.network, self.num_frames, self.image_size = network.eval(), num_frames, image_size

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        videos = resample_time(videos, self.num_frames)
        b, f = videos.shape[:2]
        frames = videos.flatten(0, 1)  # (B, F, 3, H, W) -> (B*F, 3, H, W)
        frames = F.interpolate(frames, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        clips = frames.view(b, f, 3, self.image_size, self.image_size).transpose(1, 2)  # -> (B, 3, F, S, S)
        return self.network(clips * 2 - 1)


def load_i3d(path: Optional[str], num_frames: int = 16, image_size: int = 224, field: str = "i3d_weights") -> I3DFeatures:
    """:class:`I3DFeatures` around an :class:`InceptionI3d` with weights from a local safetensors file."""
    state = load_safetensors(path, "I3D", field)
    net = load_weights(InceptionI3d(), state, "I3D", str(path))
    return I3DFeatures(net, num_frames=num_frames, image_size=image_size)  # type: ignore[arg-type]


# ---- ResNet-18 (transformers) -------------------------------------------------------------------


def build_resnet18() -> nn.Module:
    """``transformers.ResNetModel`` with the resnet-18 configuration (basic blocks, 2-2-2-2), random weights."""
    from transformers import ResNetConfig, ResNetModel

    config = ResNetConfig(
        num_channels=3, embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2],
        layer_type="basic", hidden_act="relu", downsample_in_first_stage=False,
    )  # fmt: skip
    return ResNetModel(config).eval()


_TV_LAYER = re.compile(r"layer(\d)\.(\d)\.(conv1|bn1|conv2|bn2|downsample\.0|downsample\.1)\.(.+)")


def torchvision_resnet_key(key: str) -> Optional[str]:
    """transformers ``ResNetModel`` key for a torchvision resnet key (``None`` for the ``fc`` head)."""
    if key.startswith("fc."):
        return None
    if key.startswith("conv1."):
        return "embedder.embedder.convolution." + key[len("conv1.") :]
    if key.startswith("bn1."):
        return "embedder.embedder.normalization." + key[len("bn1.") :]
    match = _TV_LAYER.fullmatch(key)
    if match is None:
        return key
    stage, block, part, rest = match.groups()
    prefix = f"encoder.stages.{int(stage) - 1}.layers.{block}."
    part_name = {
        "conv1": "layer.0.convolution", "bn1": "layer.0.normalization",
        "conv2": "layer.1.convolution", "bn2": "layer.1.normalization",
        "downsample.0": "shortcut.convolution", "downsample.1": "shortcut.normalization",
    }[part]  # fmt: skip
    return prefix + part_name + "." + rest


def _resnet_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Normalise a ResNet-18 state dict to ``ResNetModel`` keys (drop classifier heads)."""
    if any(k.startswith("layer1.") for k in state):  # torchvision naming
        mapped = {torchvision_resnet_key(k): v for k, v in state.items()}
        return {k: v for k, v in mapped.items() if k is not None}
    out = {}
    for k, v in state.items():
        if k.startswith("classifier."):
            continue
        out[k[len("resnet.") :] if k.startswith("resnet.") else k] = v
    return out


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ResNet18Features(nn.Module):
    """SRC features: images ``(N, 3, H, W)`` in ``[0, 1]`` -> ``(N, 512)`` pooled ResNet-18 features
    (resized bilinearly to ``image_size`` square, ImageNet-normalised)."""

    def __init__(self, network: nn.Module, image_size: int = 224) -> None:
        super().__init__()
        self.network, self.image_size = network.eval(), image_size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        pooled = self.network(pixel_values=(x - self.mean) / self.std).pooler_output  # (N, 512, 1, 1)
        return pooled.flatten(1)


def load_resnet18(path: Optional[str], image_size: int = 224, field: str = "resnet18_weights") -> ResNet18Features:
    """:class:`ResNet18Features` with weights from a local safetensors file (transformers or torchvision keys)."""
    state = _resnet_state(load_safetensors(path, "ResNet-18", field))
    net = load_weights(build_resnet18(), state, "ResNet-18", str(path))
    return ResNet18Features(net, image_size=image_size)


def video_features(videos: Iterable[torch.Tensor], net: nn.Module, batch_size: int = 8, device: str = "cpu") -> torch.Tensor:
    """``(N, D)`` features of clips ``(F, 3, H, W)`` in ``[0, 1]`` (all the same shape) with ``net``."""
    clips = torch.stack(list(videos))  # (N, F, 3, H, W)
    net = net.to(device)
    return _batched(lambda c: net(c.to(device)).float().cpu(), clips, batch_size)


def image_features(images: torch.Tensor, net: nn.Module, batch_size: int = 16, device: str = "cpu") -> torch.Tensor:
    """``(N, D)`` features of images ``(N, 3, H, W)`` in ``[0, 1]`` with ``net``."""
    net = net.to(device)
    return _batched(lambda x: net(x.to(device)).float().cpu(), images, batch_size)
