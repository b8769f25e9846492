"""Writing MP4 videos and image grids people can look at (shared by the visualisation scripts).

Every MP4 the project writes goes through :class:`VideoWriter`: H.264 (libx264, ``yuv420p``, CRF 18, in an
.mp4 with ``+faststart``), encoded with PyAV (``av``, whose wheels bundle FFmpeg with libx264). That is the
one format that plays everywhere: web browsers, GitHub, VS Code's and Jupyter's previews, phones and
desktop players. (OpenCV's pip wheels can only write MPEG-4 Part 2, ``mp4v``, which browsers do not play.)
yuv420p stores colour at half resolution, so frames are padded to even width and height.

Frames are RGB uint8 (H, W, 3) numpy arrays, as everywhere else in the project. Files are written under
a temporary name and renamed when complete.

    with VideoWriter("runs/episode.mp4", fps=50, scale=4) as video:
        for frame in frames:
            video.write(label(frame, "step 3"))

    write_video("runs/episode.mp4", frames, fps=50, scale=4)   # the same in one call
    count, width, height, fps = video_info("runs/episode.mp4")  # read back (frames counted by decoding)
    video_codec("runs/episode.mp4")                             # "h264"
"""

from __future__ import annotations

import contextlib
import os
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Sequence

import cv2
import numpy as np

from car_racing.common.cli import UsageError
from car_racing.common.runtime import atomic_path

CODEC = "libx264"  # H.264
PIXEL_FORMAT = "yuv420p"  # the chroma layout every H.264 decoder (browsers included) plays
DEFAULT_CRF = 18


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


def titled_rows(rows: list[tuple[str, np.ndarray]], scale: int, gap: int = 2) -> np.ndarray:
    """Stack titled rows of uint8 (N, 64, 64, 3) images into one RGB image: per row a 22-pixel title strip,
    then the images upscaled by ``scale`` (white gaps of ``gap`` pixels)."""
    width = max(len(images) for _, images in rows) * (64 * scale + gap) + gap
    parts = []
    for title, images in rows:
        strip = label(np.full((22, width, 3), 255, dtype=np.uint8), title, position=(gap + 2, 3), scale=0.45)
        row = np.full((64 * scale + 2 * gap, width, 3), 255, dtype=np.uint8)
        for i, image in enumerate(images):
            x = gap + i * (64 * scale + gap)
            row[gap:gap + 64 * scale, x:x + 64 * scale] = upscale(image, scale)
        parts += [strip, row]
    return np.concatenate(parts, axis=0)


class VideoWriter:
    """An H.264 MP4 written frame by frame (atomic: the file appears when the writer closes without error).

    Args:
        path: output .mp4 path (parent folders are created).
        fps: frames per second (CarRacing runs at 50).
        scale: integer nearest-neighbour upscaling applied to every frame.
        crf: x264 constant rate factor (0 lossless … 51 worst; 18 looks lossless for these frames).

    The first frame fixes the size; frames are RGB uint8 (H, W, 3). Odd sizes are padded to even with
    black (yuv420p needs even dimensions).
    """

    def __init__(self, path: str | os.PathLike, fps: float = 50, scale: int = 1, crf: int = DEFAULT_CRF):
        self.path = Path(path)
        self.fps = float(fps)
        self.scale = int(scale)
        self.crf = int(crf)
        self.frames_written = 0
        self._stack = contextlib.ExitStack()
        self._tmp: Path | None = None
        self._container: Any = None
        self._stream: Any = None
        self._size: tuple[int, int] | None = None

    def __enter__(self) -> "VideoWriter":
        self._tmp = self._stack.enter_context(atomic_path(self.path))
        return self

    def _open(self, size: tuple[int, int]) -> None:
        import av  # imported here: only scripts that write videos need it

        self._container = av.open(str(self._tmp), mode="w", format="mp4", options={"movflags": "+faststart"})
        self._stream = self._container.add_stream(CODEC, rate=Fraction(self.fps).limit_denominator(1001))
        self._stream.width, self._stream.height = size
        self._stream.pix_fmt = PIXEL_FORMAT
        self._stream.options = {"crf": str(self.crf)}

    def write(self, frame: np.ndarray) -> None:
        """Append one RGB uint8 (H, W, 3) frame."""
        if self._tmp is None:
            raise RuntimeError("use VideoWriter in a with-statement")
        frame = upscale(np.asarray(frame, dtype=np.uint8), self.scale)
        height, width = frame.shape[:2]
        padded = (width + width % 2, height + height % 2)
        if self._container is None:
            self._size = padded
            self._open(padded)
        if padded != self._size:
            raise ValueError(f"{self.path}: frame of {width}×{height} after {self._size[0]}×{self._size[1]} frames")
        if padded != (width, height):
            frame = np.pad(frame, ((0, padded[1] - height), (0, padded[0] - width), (0, 0)))
        import av

        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        for packet in self._stream.encode(video_frame):  # converted to yuv420p by the stream
            self._container.mux(packet)
        self.frames_written += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._container is not None:
            try:
                if exc_type is None:
                    for packet in self._stream.encode():  # flush the encoder's delayed frames
                        self._container.mux(packet)
            finally:
                self._container.close()
        if exc_type is None and self.frames_written == 0:
            self._stack.__exit__(ValueError, ValueError("no frames"), None)  # drop the empty temporary file
            raise ValueError(f"{self.path}: no frames to write")
        self._stack.__exit__(exc_type, exc, tb)


def write_video(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float = 50, scale: int = 1,
                crf: int = DEFAULT_CRF) -> int:
    """Write RGB uint8 frames to an H.264 MP4 (atomically); returns the number of frames written."""
    with VideoWriter(path, fps=fps, scale=scale, crf=crf) as video:
        for frame in frames:
            video.write(frame)
    return video.frames_written


def write_gif(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float = 25, colors: int | None = None
              ) -> int:
    """Write RGB uint8 frames as a looping animated GIF (Pillow; atomic); returns the number of frames.

    ``colors=None``: one adaptive palette per frame. ``colors=N``: one palette of N colours for the whole
    animation, taken from up to ~32 frames spread over it, without dithering: no palette flicker, and much smaller for
    blurry images (V's decodings) that would otherwise use all 256 colours per frame. For short README
    animations only: an MP4 is far smaller for anything long."""
    from PIL import Image

    arrays = [np.asarray(frame, dtype=np.uint8) for frame in frames]
    if not arrays:
        raise ValueError(f"{path}: no frames to write")
    images = [Image.fromarray(array) for array in arrays]
    if colors is not None:
        palette = Image.fromarray(np.concatenate(arrays[::max(1, len(arrays) // 32)], axis=0)).quantize(
            colors=colors, method=Image.Quantize.MEDIANCUT)
        images = [image.quantize(palette=palette, dither=Image.Dither.NONE) for image in images]
    path = Path(path)
    with atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], loop=0,
                       duration=int(round(1000 / fps)), optimize=True)
    return len(images)


def read_video(path: str | os.PathLike) -> Iterable[np.ndarray]:
    """The RGB uint8 (H, W, 3) frames of a video's first video stream, decoded one by one with PyAV."""
    import av

    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")


def write_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write an RGB uint8 (H, W, 3) image as PNG (atomically)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(np.asarray(image, dtype=np.uint8), cv2.COLOR_RGB2BGR)):
            raise RuntimeError(f"{path}: OpenCV could not write the image")


def video_info(path: str | os.PathLike) -> tuple[int, int, int, float]:
    """(frames decoded, width, height, fps) of a video's first video stream, read back with PyAV."""
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as err:
        raise ValueError(f"{path}: cannot open this video ({err})") from None
    with container:
        stream = container.streams.video[0]
        count = sum(1 for _ in container.decode(stream))
        return count, stream.codec_context.width, stream.codec_context.height, float(stream.average_rate or 0)


def video_codec(path: str | os.PathLike) -> tuple[str, str]:
    """(codec name, pixel format) of a video's first video stream, e.g. ``("h264", "yuv420p")``."""
    import av

    with av.open(str(path)) as container:
        context = container.streams.video[0].codec_context
        return context.name, context.pix_fmt


def check_strip_args(strip: str | os.PathLike | None, frames: int, scale: int) -> None:
    """One-line :class:`car_racing.common.cli.UsageError` for a bad ``--strip`` / ``--strip-frames`` / ``--strip-scale``."""
    if strip is not None and Path(strip).suffix.lower() != ".png":
        raise UsageError(f"--strip {strip}: expected a path ending in .png")
    if frames < 1:
        raise UsageError(f"--strip-frames {frames}: expected at least 1")
    if scale < 1:
        raise UsageError(f"--strip-scale {scale}: expected at least 1")
