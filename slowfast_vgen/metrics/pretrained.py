"""The learned metrics (LPIPS, FVD, SRC) as :class:`MetricResult` values.

:class:`PretrainedMetrics` loads each feature network from the local file named in
:class:`~.config.MetricsConfig` the first time it is needed (once), or takes a network passed in
(any ``nn.Module`` with the same call signature: FVD's feature network is pluggable). A network
that cannot be loaded makes its metric ``MetricResult.unavailable(name, reason)``; the other
metrics are unaffected. A non-safetensors path is refused (``UserInputError``), not reported.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .config import MetricsConfig
from .frames import Frames, lpips_distance, to_unit_frames
from .frechet import frechet_distance
from .long_video import check_pairs, scene_revisit_consistency
from .networks import LPIPSAlexNet, image_features, load_i3d, load_lpips_alexnet, load_resnet18, video_features
from .results import MetricResult, WeightsUnavailable

Loaded = Union[nn.Module, WeightsUnavailable]


def lpips(x: Frames, y: Frames, net: LPIPSAlexNet, min_size: int = 64, batch_size: int = 16, device: str = "cpu") -> float:
    """Mean LPIPS over the frame pairs of two clips (0 for identical clips).

    Frames whose short side is below ``min_size`` are upsampled bilinearly first (AlexNet's
    stride-4 stem and two max-pools leave nothing of a 16x16 frame).
    """
    a, b = to_unit_frames(x), to_unit_frames(y)
    if a.shape != b.shape:
        raise ValueError(f"videos differ in shape: {tuple(a.shape)} vs {tuple(b.shape)} (as (F, 3, H, W))")
    h, w = a.shape[-2:]
    if min(h, w) < min_size:
        scale = min_size / min(h, w)
        size = (round(h * scale), round(w * scale))
        a = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
        b = F.interpolate(b, size=size, mode="bilinear", align_corners=False)
    net = net.to(device).eval()
    distances = []
    with torch.inference_mode():
        for i in range(0, a.shape[0], batch_size):
            fa = net.layer_features(a[i : i + batch_size].to(device))
            fb = net.layer_features(b[i : i + batch_size].to(device))
            distances.append(lpips_distance(fa, fb, net.lin_weights).float().cpu())
    return float(torch.cat(distances).mean())


def fvd(real: Sequence[Frames], fake: Sequence[Frames], net: nn.Module, batch_size: int = 8, device: str = "cpu") -> float:
    """FVD: Fréchet distance between Gaussian fits of ``net`` features of real and generated clips.

    ``net`` maps ``(B, F, 3, H, W)`` in ``[0, 1]`` to ``(B, D)`` (e.g. :class:`.networks.I3DFeatures`).
    Each set needs at least 2 clips; the estimate is only meaningful with many more than ``D``.
    """
    if len(real) < 2 or len(fake) < 2:
        raise ValueError(f"FVD needs at least 2 clips per set, got {len(real)} real and {len(fake)} generated")
    real_feats = video_features([to_unit_frames(v) for v in real], net, batch_size, device)  # (N, D)
    fake_feats = video_features([to_unit_frames(v) for v in fake], net, batch_size, device)
    return frechet_distance(real_feats, fake_feats)


def src(video: Frames, pairs: Sequence[Sequence[int]], net: nn.Module, batch_size: int = 16, device: str = "cpu") -> float:
    """SRC of one video: mean cosine similarity of ``net`` features at first and later visits.

    Only the frames named in ``pairs`` go through ``net`` (``(N, 3, H, W)`` in ``[0, 1]`` -> ``(N, D)``).
    """
    frames = to_unit_frames(video)
    checked = check_pairs(pairs, frames.shape[0])
    used = sorted({i for pair in checked for i in pair})
    feats = image_features(frames[used], net, batch_size, device)  # (len(used), D)
    where = {frame: row for row, frame in enumerate(used)}
    return scene_revisit_consistency(feats, [(where[a], where[b]) for a, b in checked])


class PretrainedMetrics:
    """LPIPS, FVD and SRC with their networks loaded lazily from :class:`MetricsConfig` paths."""

    def __init__(
        self,
        config: Optional[MetricsConfig] = None,
        *,
        lpips_net: Optional[LPIPSAlexNet] = None,
        fvd_net: Optional[nn.Module] = None,
        src_net: Optional[nn.Module] = None,
    ) -> None:
        self.config = config or MetricsConfig()
        c = self.config
        self._loaders: dict[str, Callable[[], nn.Module]] = {
            "lpips": lambda: load_lpips_alexnet(c.lpips_weights),
            "fvd": lambda: load_i3d(c.i3d_weights, num_frames=c.fvd_num_frames, image_size=c.fvd_image_size),
            "src": lambda: load_resnet18(c.resnet18_weights, image_size=c.src_image_size),
        }
        self._nets: dict[str, Loaded] = {}
        for name, net in (("lpips", lpips_net), ("fvd", fvd_net), ("src", src_net)):
            if net is not None:
                self._nets[name] = net.eval()

    def network(self, name: str) -> Loaded:
        """The network of metric ``name`` (``"lpips"``, ``"fvd"``, ``"src"``), or why it is unavailable."""
        if name not in self._loaders:
            raise ValueError(f"unknown learned metric {name!r}; expected one of {sorted(self._loaders)}")
        if name not in self._nets:
            try:
                self._nets[name] = self._loaders[name]()
            except WeightsUnavailable as err:
                self._nets[name] = err
        return self._nets[name]

    def availability(self) -> dict[str, Optional[str]]:
        """``{metric: None if available else reason}`` (loads the networks)."""
        out: dict[str, Optional[str]] = {}
        for name in self._loaders:
            net = self.network(name)
            out[name] = str(net) if isinstance(net, WeightsUnavailable) else None
        return out

    def available(self, name: str) -> bool:
        """Whether the network of ``name`` (``lpips``, ``fvd``, ``src``) has its weights (loads it)."""
        return not isinstance(self.network(name), WeightsUnavailable)

    def lpips(self, x: Frames, y: Frames) -> MetricResult:
        net = self.network("lpips")
        if isinstance(net, WeightsUnavailable):
            return MetricResult.unavailable("lpips", str(net))
        c = self.config
        return MetricResult.ok("lpips", lpips(x, y, net, c.lpips_min_size, c.batch_size, c.device))  # type: ignore[arg-type]

    def fvd(self, real: Sequence[Frames], fake: Sequence[Frames]) -> MetricResult:
        net = self.network("fvd")
        if isinstance(net, WeightsUnavailable):
            return MetricResult.unavailable("fvd", str(net))
        return MetricResult.ok("fvd", fvd(real, fake, net, self.config.batch_size, self.config.device))

    def src(self, video: Frames, pairs: Sequence[Sequence[int]]) -> MetricResult:
        net = self.network("src")
        if isinstance(net, WeightsUnavailable):
            return MetricResult.unavailable("src", str(net))
        return MetricResult.ok("src", src(video, pairs, net, self.config.batch_size, self.config.device))
