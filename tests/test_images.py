"""Every kind of image a user hands over becomes an upright RGB picture, or a clear ImageError."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlm_notebook import ImageError, load_image


def encoded(picture: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt, **params)
    return buffer.getvalue()


RED = Image.new("RGB", (8, 6), (255, 0, 0))


@pytest.mark.parametrize(
    "given",
    [
        RED,
        encoded(RED),
        bytearray(encoded(RED)),
        memoryview(encoded(RED)),
        np.zeros((6, 8, 3), dtype=np.uint8) + np.array([255, 0, 0], dtype=np.uint8),
        np.zeros((6, 8, 3), dtype=np.float32) + np.array([1.0, 0, 0], dtype=np.float32),
    ],
    ids=["pil", "bytes", "bytearray", "memoryview", "uint8-array", "float-array"],
)
def test_accepted_inputs_become_rgb(given: object) -> None:
    picture = load_image(given)
    assert picture.mode == "RGB"
    assert picture.size == (8, 6)
    assert picture.getpixel((0, 0)) == (255, 0, 0)


def test_a_path_and_a_str_path(tmp_path: Path) -> None:
    path = tmp_path / "red.png"
    RED.save(path)
    assert load_image(path).size == (8, 6)
    assert load_image(str(path)).getpixel((1, 1)) == (255, 0, 0)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "I;16", "LA"])
def test_other_modes_become_rgb(mode: str) -> None:
    picture = RED.convert(mode) if mode != "I;16" else Image.new("I;16", (8, 6), 65535)
    loaded = load_image(encoded(picture, "TIFF" if mode in ("CMYK", "I;16") else "PNG"))
    assert loaded.mode == "RGB" and loaded.size == (8, 6)


def test_transparency_is_composited_on_white() -> None:
    clear = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert load_image(clear).getpixel((0, 0)) == (255, 255, 255)


def test_exif_rotation_is_applied() -> None:
    wide = Image.new("RGB", (20, 10), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    rotated = load_image(encoded(wide, "JPEG", exif=exif.tobytes()))
    assert rotated.size == (10, 20)


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("P", (5, 5), index) for index in (1, 2)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    picture = load_image(buffer.getvalue())
    assert picture.size == (5, 5)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (b"", "empty"),
        (b"this is not an image", "not an image format"),
        (encoded(Image.new("RGB", (64, 64)), "JPEG")[:200], "corrupt or truncated"),
        (np.zeros((4, 4, 2), dtype=np.uint8), "shape"),
        (np.zeros((4, 4, 3), dtype=np.int64), "dtype"),
        (np.full((4, 4), 2.0), "between 0 and 1"),
        (12345, "Cannot use a int"),
        ("/no/such/picture.png", "No image file"),
    ],
    ids=["zero-bytes", "not-an-image", "truncated-jpeg", "bad-shape", "bad-dtype", "float-range", "int", "no-file"],
)
def test_bad_inputs_give_a_clear_error(given: object, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        load_image(given)


def test_a_folder_given_as_a_picture_is_named_as_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="is a folder: give the path of one image file in it"):
        load_image(tmp_path)


def test_a_decompression_bomb_is_refused_before_decoding() -> None:
    bomb = encoded(Image.new("1", (10_000, 10_000)))  # 100 MP, a few kB of PNG
    assert len(bomb) < 100_000
    with pytest.raises(ImageError, match="pixels"):
        load_image(bomb)


def test_the_pixel_limit_can_be_lowered() -> None:
    with pytest.raises(ImageError, match="over the limit"):
        load_image(RED, max_pixels=10)


def closed_images(tmp_path: Path) -> list[Image.Image]:
    """A PNG and an animated GIF used after their ``with`` block, and a picture after ``close()``."""
    RED.save(tmp_path / "red.png")
    frames = [Image.new("P", (5, 5), index) for index in (1, 2)]
    frames[0].save(tmp_path / "two.gif", save_all=True, append_images=frames[1:])
    with Image.open(tmp_path / "red.png") as unread:
        pass  # the pixels were never read, and now the file is closed
    with Image.open(tmp_path / "two.gif") as animated:
        animated.load()  # the first frame is read; counting frames needs the file
    closed = RED.copy()
    closed.close()
    return [unread, animated, closed]


@pytest.mark.timeout(30)
def test_a_closed_pil_image_is_refused_with_what_to_do(tmp_path: Path) -> None:
    for picture in closed_images(tmp_path):
        with pytest.raises(ImageError, match=r"was closed.*reopen it.*or pass the file's path"):
            load_image(picture)
    with Image.open(tmp_path / "red.png") as read_in_time:
        read_in_time.load()  # read inside the block: usable after it
    assert load_image(read_in_time).getpixel((0, 0)) == (255, 0, 0)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("shape", [(0, 4, 3), (4, 0), (0, 0, 4)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8])
def test_an_array_without_pixels_is_refused(shape: tuple[int, ...], dtype: type) -> None:
    with pytest.raises(ImageError, match=rf"no pixels \({shape[1]}x{shape[0]}\)"):
        load_image(np.zeros(shape, dtype=dtype))


@pytest.mark.timeout(30)
def test_a_float_pil_image_is_read_as_0_to_1_like_a_float_array() -> None:
    levels = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    from_pil = load_image(Image.fromarray(levels, mode="F"))
    from_array = load_image(levels)
    assert [from_pil.getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]
    assert np.array_equal(np.asarray(from_pil), np.asarray(from_array))
    with pytest.raises(ImageError, match=r"mode F\) must hold finite values between 0 and 1: divide .* by 255"):
        load_image(Image.fromarray(levels * 255, mode="F"))


@pytest.mark.timeout(30)
def test_a_path_starting_with_a_tilde_is_read_from_the_home_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    RED.save(tmp_path / "photo.png")
    assert load_image("~/photo.png").getpixel((0, 0)) == (255, 0, 0)
    assert load_image(Path("~/photo.png")).size == (8, 6)
    with pytest.raises(ImageError, match=rf"No image file at '{tmp_path}/other.png'"):
        load_image("~/other.png")


@pytest.mark.timeout(30)
def test_a_file_name_too_long_for_the_file_system_is_refused(tmp_path: Path) -> None:
    long_name = str(tmp_path / ("a" * 300 + ".png"))
    with pytest.raises(ImageError, match="longer than the file system allows") as caught:
        load_image(long_name)
    assert len(str(caught.value)) < 300, "the message shows the path shortened"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("url", ["http://example.com/cat.jpg", "https://example.com/cat.jpg", " HTTPS://x.org/a.png"])
def test_a_url_is_refused_with_the_advice_to_download_it(url: str) -> None:
    with pytest.raises(ImageError, match=r"is a URL.*does not download pictures: download it first") as caught:
        load_image(url)
    assert repr(url) in str(caught.value), "the address is quoted as given, not mangled into a path"
