"""car_racing/common/video.py: every MP4 is H.264 yuv420p (plays in browsers), written atomically."""

import numpy as np
import pytest

from car_racing.common.video import VideoWriter, video_codec, video_info, write_video


def test_written_video_decodes_as_h264_yuv420p_with_every_frame(tmp_path):
    rng = np.random.default_rng(0)
    frames = [np.repeat(np.repeat(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8), 8, 0), 8, 1)
              for _ in range(37)]
    path = tmp_path / "clip.mp4"
    assert write_video(path, frames, fps=50) == 37
    assert video_codec(path) == ("h264", "yuv420p")
    assert video_info(path) == (37, 96, 96, 50.0)

    import av

    with av.open(str(path)) as container:  # the pixels survive (CRF 18): each decoded frame is close to its source
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    errors = [np.abs(d.astype(int) - f.astype(int)).mean() for d, f in zip(decoded, frames)]
    assert max(errors) < 12, errors


def test_video_writer_scales_and_refuses_a_size_change(tmp_path):
    with pytest.raises(ValueError, match="frame of 10×10"):
        with VideoWriter(tmp_path / "bad.mp4", fps=25, scale=2) as video:
            video.write(np.zeros((8, 8, 3), np.uint8))
            video.write(np.zeros((5, 5, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []  # nothing left behind, not even the temporary file
    with VideoWriter(tmp_path / "ok.mp4", fps=25, scale=3) as video:
        for i in range(4):
            video.write(np.full((7, 9, 3), 60 * i, np.uint8))
    assert video_info(tmp_path / "ok.mp4")[:3] == (4, 28, 22)  # 27×21 padded to even


def test_write_gif_with_one_shared_palette(tmp_path):
    from PIL import Image

    from car_racing.common.video import write_gif

    frames = [np.full((20, 30, 3), (10 * i, 200 - 10 * i, 90), np.uint8) for i in range(8)]
    assert write_gif(tmp_path / "a.gif", frames, fps=25, colors=16) == 8
    with Image.open(tmp_path / "a.gif") as gif:
        assert (gif.size, gif.n_frames, gif.info["duration"]) == ((30, 20), 8, 40)
    with pytest.raises(ValueError):
        write_gif(tmp_path / "b.gif", [])
    assert [p.name for p in tmp_path.iterdir()] == ["a.gif"]
