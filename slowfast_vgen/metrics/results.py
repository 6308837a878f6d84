"""A metric value, or the reason it could not be computed.

Metrics that need pretrained weights (LPIPS, FVD, SRC) are reported as *unavailable with a
reason* when their weights file is not configured or cannot be read: never as a number that a
table could mistake for a measurement.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional


class WeightsUnavailable(Exception):
    """A feature network's weights are missing or unreadable; ``str(err)`` is the reason."""


@dataclasses.dataclass(frozen=True)
class MetricResult:
    """``value`` when the metric was computed, otherwise ``reason`` says why it was not."""

    name: str
    value: Optional[float] = None
    reason: Optional[str] = None

    def __post_init__(self) -> None:
        if (self.value is None) == (self.reason is None):
            raise ValueError(f"MetricResult {self.name!r} needs exactly one of value / reason, got {self.value!r} / {self.reason!r}")

    @classmethod
    def ok(cls, name: str, value: float) -> "MetricResult":
        return cls(name=name, value=float(value))

    @classmethod
    def unavailable(cls, name: str, reason: str) -> "MetricResult":
        return cls(name=name, reason=str(reason))

    @property
    def available(self) -> bool:
        return self.value is not None

    def to_json(self) -> dict[str, Any]:
        """JSON-safe dict; a non-finite value (PSNR of identical frames is ``inf``) becomes a string."""
        value: Any = self.value
        if value is not None and not math.isfinite(value):
            value = str(value)
        return {"name": self.name, "available": self.available, "value": value, "reason": self.reason}

    def __str__(self) -> str:
        if self.value is None:
            return f"{self.name}: unavailable ({self.reason})"
        return f"{self.name}: {self.value:.4g}"
