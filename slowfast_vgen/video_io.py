"""Writing videos and reading images; conversions between uint8 frames and model tensors.

Frames on disk and in numpy are ``(F, H, W, 3) uint8``; model tensors are
``(B, C, F, H, W) float`` in ``[-1, 1]`` (the diffusers video convention).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from .errors import OutputWriteError, UserInputError, first_line
from .io_utils import atomic_output_file


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """``(F, H, W, 3) uint8`` -> ``(1, 3, F, H, W) float32`` in ``[-1, 1]``."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (F, H, W, 3), got {tuple(frames.shape)}")
    video = torch.from_numpy(np.ascontiguousarray(frames)).float().div(127.5).sub(1.0)
    return video.permute(3, 0, 1, 2).unsqueeze(0)  # (F, H, W, C) -> (1, C, F, H, W)


def tensor_to_frames(video: torch.Tensor) -> np.ndarray:
    """``(C, F, H, W)`` or ``(1, C, F, H, W)`` in ``[-1, 1]`` -> ``(F, H, W, 3) uint8``."""
    if video.ndim == 5:
        if video.shape[0] != 1:
            raise ValueError(f"expected a single video, got batch {video.shape[0]}")
        video = video[0]
    pixels = ((video.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return pixels.permute(1, 2, 3, 0).cpu().numpy()  # (C, F, H, W) -> (F, H, W, C)


def read_image(path: str | os.PathLike, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read an image file as ``(H, W, 3) uint8`` RGB, optionally resized to ``size=(H, W)``."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            image = as_shown_rgb(image)
            if size is not None and (image.height, image.width) != tuple(size):
                image = image.resize((size[1], size[0]), Image.BICUBIC)
            return np.asarray(image, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:  # the bomb was a traceback
        raise UserInputError(f"cannot read image {path}: {first_line(err)}") from None


def as_shown_rgb(image):
    """A PIL image as 8-bit RGB the way viewers show it: EXIF orientation applied (a phone's portrait
    photo stands) and high-bit-depth grey scaled (:func:`_as_rgb`). Every reader of a first frame uses it."""
    from PIL import ImageOps

    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a malformed EXIF block (PIL's SyntaxError "not a TIFF file"): the pixels are fine
        pass
    return _as_rgb(image)


def _as_rgb(image):
    """A PIL image as 8-bit RGB. 16-bit and 32-bit grey images (modes ``I;16``, ``I``, ``F``) are scaled
    to 0-255 from their type's range (``convert`` clipped them: 61 % grey became white)."""
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 1.0 if image.mode == "F" else (65535.0 if image.mode.startswith("I;16") else max(65535.0, values.max()))
        image = Image.fromarray(np.clip(np.round(values / top * 255.0), 0, 255).astype(np.uint8), mode="L")
    return image.convert("RGB")


MAX_VIDEO_SIDE = 8192
"""Largest frame side ``--upscale`` may make (libx264's own limit is 16384; memory gives out before)."""
DECORD_WIDTH_ALIGNMENT = 32
"""decord 0.6 fails on videos whose width is not a multiple of 32 ("The size must exactly match")."""


def auto_upscale(width: int, min_width: int = 128, max_factor: int = 16) -> int:
    """The smallest integer factor that makes a video at least ``min_width`` wide with a width
    decord can read (a multiple of 32); 1 when the width already qualifies."""
    start = max(1, -(-min_width // width))
    for factor in range(start, max_factor + 1):
        if (factor * width) % DECORD_WIDTH_ALIGNMENT == 0:
            return factor
    return start


def upscale_frames(frames: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling ``(F, H, W, 3) -> (F, H*k, W*k, 3)`` (pixels stay exact blocks)."""
    if factor == 1:
        return frames
    return frames.repeat(factor, axis=1).repeat(factor, axis=2)


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float = 8.0, upscale: int = 1) -> Path:
    """Write ``(F, H, W, 3) uint8`` frames atomically as H.264 mp4 (or GIF for a ``.gif`` path).

    The mp4 uses yuv420p at the exact frame size (``macro_block_size=1`` disables imageio's
    resizing), so decord and browsers read it back with the same frame count. ``upscale``
    enlarges small frames (nearest neighbour) for viewing; see :func:`auto_upscale`.
    """
    import imageio.v3 as iio

    path = Path(path)
    if path.suffix.lower() != ".gif":
        with video_stream(path, fps, upscale) as append:  # append() checks the frames
            append(frames)
        return path
    with atomic_output_file(path) as tmp:
        iio.imwrite(tmp, upscale_frames(_checked_frames(frames), upscale), extension=".gif", duration=1000.0 / fps, loop=0)
    return path


@contextmanager
def video_stream(path: str | os.PathLike, fps: float = 8.0, upscale: int = 1,
                 before_publish: Callable[[], None] | None = None) -> Iterator[Callable[[np.ndarray], None]]:
    """Encode an mp4 as its frames arrive: yields ``append(frames)`` for ``(F, H, W, 3) uint8``
    batches. Frames go to the encoder at once (a long video is never held in memory, upscaled or
    not); the file appears at ``path`` when the block ends without an error and not before
    (written beside it, then renamed), with the settings of :func:`write_video`. ``before_publish``
    runs once the video is complete, just before it replaces ``path`` (e.g. to drop the old one's sidecars).
    """
    import imageio.v2 as imageio

    with atomic_output_file(path) as tmp:
        writer = None
        try:
            def append(frames: np.ndarray) -> None:
                nonlocal writer
                frames = _checked_frames(frames)
                if writer is None:
                    writer = imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                                macro_block_size=1, pixelformat="yuv420p",
                                                output_params=["-crf", "12", "-preset", "veryfast"])
                for frame in upscale_frames(frames, upscale):
                    height, width = frame.shape[:2]
                    if height % 2 or width % 2:  # yuv420p needs even sizes: one edge row or column, after
                        # upscaling (padded before, an odd frame grew by the whole factor: 15 px x 2 -> 32, not 30)
                        frame = np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
                    try:
                        writer.append_data(frame)
                    except OSError as err:  # ffmpeg stopped (a full disk): imageio's error holds its whole command
                        raise OutputWriteError(f"the video encoder stopped writing {path}: {first_line(err)} "
                                               "(is the disk full?)") from None

            yield append
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            raise ValueError("no frames were written to the video")
        problem = mp4_problem(tmp)  # ffmpeg's exit status does not come back through imageio
        if problem:
            raise OutputWriteError(f"the video encoder could not finish {path}: {problem} (is the disk full?)")
        if before_publish is not None:
            before_publish()


def mp4_problem(path: str | os.PathLike) -> str | None:
    """Why the file at ``path`` is not a complete mp4, or None: its top-level boxes must tile the file
    and include ``moov``, the index ffmpeg writes last (a full disk left a file without it that
    nothing can open, and the encoder's failure was only printed)."""
    size, offset, boxes = os.path.getsize(path), 0, set()
    with open(path, "rb") as handle:
        while offset < size:
            handle.seek(offset)
            header = handle.read(16)
            if len(header) < 8:
                return f"a box header is cut off at byte {offset}"
            length, kind = int.from_bytes(header[:4], "big"), header[4:8]
            if length == 1 and len(header) == 16:  # a 64-bit box size follows the type
                length = int.from_bytes(header[8:16], "big")
            elif length == 0:  # the box runs to the end of the file
                length = size - offset
            if length < 8 or offset + length > size:
                return f"the box {kind!r} at byte {offset} runs past the end of the file ({size} bytes)"
            boxes.add(kind)
            offset += length
    return None if b"moov" in boxes else "it has no moov box (the index written last)"


def _checked_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:  # a cast turned floats in [0, 1] into black frames and wrapped 300 to 44
        raise ValueError(f"expected uint8 frames (0-255), got {frames.dtype}; scale float frames in [0, 1] by 255 "
                         "and round them first")
    frames = np.ascontiguousarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"expected non-empty frames of shape (F, H, W, 3), got {frames.shape}")
    return frames
