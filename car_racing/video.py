"""Writing MP4 videos and image grids people can look at (shared by the visualisation scripts).

Frames are RGB uint8 (H, W, 3) numpy arrays, as everywhere else in the project; conversion to
OpenCV's BGR happens here. Videos use the ``mp4v`` codec (MPEG-4 Part 2 in an .mp4 container): the
pip OpenCV wheels cannot encode H.264, and mp4v plays in VLC, mpv, QuickTime and most desktop players
(not in every browser). Files are written under a temporary name and renamed when complete.

    with VideoWriter("runs/episode.mp4", fps=50, scale=4) as video:
        for frame in frames:
            video.write(label(frame, "step 3"))

    write_video("runs/episode.mp4", frames, fps=50, scale=4)   # the same in one call
    count, width, height, fps = video_info("runs/episode.mp4")  # read back with OpenCV
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np

from car_racing.cli import UsageError
from car_racing.runtime import atomic_path

DEFAULT_CODEC = "mp4v"


def upscale(frame: np.ndarray, scale: int) -> np.ndarray:
    """Enlarge an (H, W, 3) uint8 image by an integer factor with nearest-neighbour (crisp pixels)."""
    if scale == 1:
        return frame
    return cv2.resize(frame, (frame.shape[1] * scale, frame.shape[0] * scale), interpolation=cv2.INTER_NEAREST)


def label(frame: np.ndarray, text: str, position: tuple[int, int] = (4, 4), scale: float | None = None,
          color: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """A copy of the RGB ``frame`` with ``text`` written at ``position`` (top-left x, y) on a dark box.
    Lines are separated by newlines; the font scale defaults to one that suits the frame height."""
    frame = np.ascontiguousarray(frame).copy()
    scale = scale if scale is not None else max(0.3, frame.shape[0] / 400)
    thickness = max(1, int(round(scale * 1.5)))
    x, y = position
    for line in text.split("\n"):
        (width, height), baseline = cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        cv2.rectangle(frame, (x - 2, y - 2), (x + width + 2, y + height + baseline + 2), (0, 0, 0), -1)
        cv2.putText(frame, line, (x, y + height), cv2.FONT_HERSHEY_SIMPLEX, scale, color, thickness, cv2.LINE_AA)
        y += height + baseline + 6
    return frame


def side_by_side(frames: Sequence[np.ndarray], gap: int = 0, gap_value: int = 255) -> np.ndarray:
    """Concatenate equally tall (H, W_i, 3) images left to right, with ``gap`` pixel columns between."""
    parts: list[np.ndarray] = []
    for i, frame in enumerate(frames):
        if i and gap:
            parts.append(np.full((frame.shape[0], gap, 3), gap_value, dtype=np.uint8))
        parts.append(frame)
    return np.concatenate(parts, axis=1)


class VideoWriter:
    """An MP4 file written frame by frame (atomic: the file appears when the writer closes without error).

    Args:
        path: output .mp4 path (parent folders are created).
        fps: frames per second (CarRacing runs at 50).
        scale: integer nearest-neighbour upscaling applied to every frame.
        codec: FourCC; ``mp4v`` works with the pip OpenCV wheels.

    The first frame fixes the size; frames are RGB uint8 (H, W, 3). Odd sizes are padded to even
    (many players need even dimensions).
    """

    def __init__(self, path: str | os.PathLike, fps: float = 50, scale: int = 1, codec: str = DEFAULT_CODEC):
        self.path = Path(path)
        self.fps = float(fps)
        self.scale = int(scale)
        self.codec = codec
        self.frames_written = 0
        self._stack = contextlib.ExitStack()
        self._tmp: Path | None = None
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None

    def __enter__(self) -> "VideoWriter":
        self._tmp = self._stack.enter_context(atomic_path(self.path))
        return self

    def write(self, frame: np.ndarray) -> None:
        """Append one RGB uint8 (H, W, 3) frame."""
        if self._tmp is None:
            raise RuntimeError("use VideoWriter in a with-statement")
        frame = upscale(np.asarray(frame, dtype=np.uint8), self.scale)
        height, width = frame.shape[:2]
        padded = (width + width % 2, height + height % 2)
        if self._writer is None:
            self._size = padded
            self._writer = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter_fourcc(*self.codec), self.fps, padded)
            if not self._writer.isOpened():
                raise RuntimeError(f"{self.path}: OpenCV cannot write {self.codec!r} video here")
        if padded != self._size:
            raise ValueError(f"{self.path}: frame of {width}×{height} after {self._size[0]}×{self._size[1]} frames")
        if padded != (width, height):
            frame = np.pad(frame, ((0, padded[1] - height), (0, padded[0] - width), (0, 0)))
        self._writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        self.frames_written += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._writer is not None:
            self._writer.release()
        if exc_type is None and self.frames_written == 0:
            self._stack.__exit__(ValueError, ValueError("no frames"), None)  # drop the empty temporary file
            raise ValueError(f"{self.path}: no frames to write")
        self._stack.__exit__(exc_type, exc, tb)


def write_video(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float = 50, scale: int = 1,
                codec: str = DEFAULT_CODEC) -> int:
    """Write RGB uint8 frames to an MP4 (atomically); returns the number of frames written."""
    with VideoWriter(path, fps=fps, scale=scale, codec=codec) as video:
        for frame in frames:
            video.write(frame)
    return video.frames_written


def write_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write an RGB uint8 (H, W, 3) image as PNG (atomically)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(np.asarray(image, dtype=np.uint8), cv2.COLOR_RGB2BGR)):
            raise RuntimeError(f"{path}: OpenCV could not write the image")


def video_info(path: str | os.PathLike) -> tuple[int, int, int, float]:
    """(frames decoded, width, height, fps) of a video, read back with OpenCV (frames counted by decoding)."""
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise ValueError(f"{path}: OpenCV cannot open this video")
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = float(capture.get(cv2.CAP_PROP_FPS))
        count = 0
        while capture.grab():
            count += 1
    finally:
        capture.release()
    return count, width, height, fps


def check_strip_args(strip: str | os.PathLike | None, frames: int, scale: int) -> None:
    """One-line :class:`car_racing.cli.UsageError` for a bad ``--strip`` / ``--strip-frames`` / ``--strip-scale``."""
    if strip is not None and Path(strip).suffix.lower() != ".png":
        raise UsageError(f"--strip {strip}: expected a path ending in .png")
    if frames < 1:
        raise UsageError(f"--strip-frames {frames}: expected at least 1")
    if scale < 1:
        raise UsageError(f"--strip-scale {scale}: expected at least 1")
