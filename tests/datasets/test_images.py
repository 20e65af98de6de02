"""`load_rgb` reads any PIL format as RGB and fails clearly; `fit_square` center-crops and resizes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from editsweep.datasets.base import DatasetError
from editsweep.datasets.images import fit_square, load_rgb


def _jpeg_bytes(size: tuple[int, int] = (64, 48), **save_args: object) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(buf, "JPEG", **save_args)
    return buf.getvalue()


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red stays red
    rgba[1, 1] = (0, 0, 255, 0)  # transparent blue becomes white
    path = tmp_path / "a.png"
    Image.fromarray(rgba, "RGBA").save(path)
    pixels = np.asarray(load_rgb(path))
    assert load_rgb(path).mode == "RGB"
    assert tuple(pixels[0, 0]) == (255, 0, 0)
    assert tuple(pixels[1, 1]) == (255, 255, 255)


@pytest.mark.parametrize("mode", ["L", "P", "1", "CMYK", "LA"])
def test_other_modes_become_rgb(tmp_path, mode):
    path = tmp_path / ("x.tiff" if mode == "CMYK" else "x.png")
    Image.new("RGB", (8, 8), (200, 30, 30)).convert(mode).save(path)
    image = load_rgb(path)
    assert image.mode == "RGB" and image.size == (8, 8)


def test_palette_transparency_is_composited_on_white(tmp_path):
    image = Image.new("P", (2, 1), 0)
    image.putpalette([255, 0, 0, 0, 0, 0])
    image.putpixel((1, 0), 1)
    path = tmp_path / "p.png"
    image.save(path, transparency=1)
    assert np.asarray(load_rgb(path)).tolist() == [[[255, 0, 0], [255, 255, 255]]]


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "g16.png"
    Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16)).save(path)
    assert np.asarray(load_rgb(path))[0, :, 0].tolist() == [0, 128, 255]


def test_format_comes_from_content_not_extension(tmp_path):
    path = tmp_path / "really_jpeg.png"
    path.write_bytes(_jpeg_bytes())
    image = load_rgb(path)
    assert image.mode == "RGB" and image.size == (64, 48)


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    path.write_bytes(_jpeg_bytes((64, 48), exif=exif.tobytes()))
    assert load_rgb(path).size == (48, 64)


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope.jpg"
    with pytest.raises(DatasetError, match="not found") as e:
        load_rgb(path)
    assert str(path) in str(e.value)


def test_garbage_bytes_name_the_path(tmp_path):
    path = tmp_path / "garbage.jpeg"
    path.write_bytes(b"this is not an image" * 10)
    with pytest.raises(DatasetError, match="cannot read image") as e:
        load_rgb(path)
    assert str(path) in str(e.value)


def test_truncated_file_names_the_path_and_cause(tmp_path):
    data = _jpeg_bytes((256, 256))
    path = tmp_path / "truncated.jpeg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="truncated") as e:
        load_rgb(path)
    assert str(path) in str(e.value)


def test_fit_square_keeps_the_center():
    # Three vertical bands; the square crop of a 3:1 image is exactly the middle (green) band.
    bands = np.zeros((100, 300, 3), dtype=np.uint8)
    bands[:, :100] = (255, 0, 0)
    bands[:, 100:200] = (0, 255, 0)
    bands[:, 200:] = (0, 0, 255)
    out = fit_square(Image.fromarray(bands), 32)
    assert out.size == (32, 32) and out.mode == "RGB"
    assert np.abs(np.asarray(out, dtype=int) - (0, 255, 0)).max() <= 2


def test_fit_square_tall_image_and_upscaling():
    assert fit_square(Image.new("RGB", (10, 30)), 64).size == (64, 64)


def test_fit_square_rejects_non_positive_size():
    with pytest.raises(ValueError):
        fit_square(Image.new("RGB", (8, 8)), 0)
