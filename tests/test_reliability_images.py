"""Bad and unusual pictures, handed to a loaded model: each is answered correctly or refused clearly,
and the model answers the next good request exactly."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from reliability_cases import covers
from reliability_support import RED_CAPTION, assert_still_answers, encoded, picture

from vlm_notebook import ImageError, load_image, shapes
from vlm_notebook.magics import VLMMagics
from vlm_notebook.models import Qwen2VL, SmolVLM
from vlm_notebook.models.base import VLM
from vlm_notebook.widgets import VLMWidget

GREEN_TRIANGLE = shapes.Scene("triangle", "green", "gray")


@pytest.fixture(params=["smolvlm", "qwen2vl"])
def model(request: pytest.FixtureRequest, shapes_smolvlm: SmolVLM) -> Iterator[VLM]:
    loaded: VLM = shapes_smolvlm if request.param == "smolvlm" else request.getfixturevalue("shapes_qwen2vl")
    yield loaded
    assert loaded.caption_with(picture()) == RED_CAPTION, "after every case, good or bad, the model answers exactly"


def answered(text: object) -> bool:
    return isinstance(text, str) and bool(text.strip())


def refused(model: VLM, image: object, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        model.caption_with(image)
    with pytest.raises(ImageError, match=message):  # streaming refuses before starting a worker
        model.caption_with(image, stream=True)


@covers("not-an-image")
@pytest.mark.timeout(60)
def test_text_is_not_an_image(model: VLM, tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_bytes(b"a shopping list, not a picture")
    refused(model, b"a shopping list, not a picture", "not an image format")
    refused(model, tmp_path / "notes.png", "not an image format")


@covers("zero-bytes")
@pytest.mark.timeout(60)
def test_zero_bytes_are_refused_as_empty(model: VLM, tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    refused(model, b"", "empty")
    refused(model, str(tmp_path / "empty.jpg"), "empty")


@covers("truncated-jpeg")
@pytest.mark.timeout(60)
def test_a_truncated_jpeg_is_refused(model: VLM, tmp_path: Path) -> None:
    path = tmp_path / "cut.jpg"
    path.write_bytes(encoded(picture(), "JPEG")[:200])
    refused(model, path, "corrupt or truncated")


def png_declaring(width: int, height: int) -> bytes:
    """A 1-pixel PNG whose header claims ``width`` x ``height``: refused unless read before decoding."""
    png = encoded(Image.new("1", (1, 1)))
    header = b"IHDR" + struct.pack(">II", width, height) + png[24:29]  # depth, colour type, ...
    return png[:12] + header + struct.pack(">I", zlib.crc32(header)) + png[33:]


@covers("png-bomb")
@pytest.mark.timeout(60)
def test_a_png_bomb_is_refused_before_decoding(model: VLM, tmp_path: Path) -> None:
    bomb = encoded(Image.new("1", (10_000, 10_000)))
    assert len(bomb) < 50_000, "a small file that declares 100 million pixels"
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb)
    over_limit = r"10000x10000 = 100,000,000 pixels, over the limit of 64,000,000.*max_pixels"
    refused(model, path, over_limit)
    refused(model, png_declaring(10_000, 10_000), over_limit)  # its pixels would not even decode
    refused(model, png_declaring(20_000, 20_000), r"too large to open safely.*400000000 pixels.*resize")


@covers("tiny-1x1")
@pytest.mark.timeout(60)
def test_a_one_pixel_picture_is_answered(model: VLM) -> None:
    dot = Image.new("RGB", (1, 1), (255, 0, 0))
    assert load_image(encoded(dot)).getpixel((0, 0)) == (255, 0, 0)
    stream = model.caption_with(encoded(dot), stream=True)
    assert not isinstance(stream, str)
    assert stream.wait(30).strip() and stream.stats.finish_reason == "stop"


@covers("thin-10000x10")
@pytest.mark.timeout(60)
@pytest.mark.parametrize("size", [(10_000, 10), (10, 10_000)], ids=["wide", "tall"])
def test_a_thin_picture_is_answered_by_smolvlm(shapes_smolvlm: SmolVLM, size: tuple[int, int]) -> None:
    assert shapes_smolvlm.caption(Image.new("RGB", size, (255, 0, 0))).startswith("A red")
    assert shapes_smolvlm.caption(picture()) == RED_CAPTION


@covers("thin-10000x10")
@pytest.mark.timeout(60)
@pytest.mark.parametrize("size", [(10_000, 10), (10, 10_000)], ids=["wide", "tall"])
def test_a_thin_picture_is_refused_by_qwen2vl_with_what_to_do(shapes_qwen2vl: Qwen2VL, size: tuple[int, int]) -> None:
    thin = encoded(Image.new("RGB", size, (255, 0, 0)))
    refused(shapes_qwen2vl, thin, r"1000 times as long as it is wide; Qwen2-VL takes pictures up to 200.*crop")
    assert shapes_qwen2vl.caption(Image.new("RGB", (400, 2), (255, 0, 0))).strip(), "200:1 is accepted"
    assert_still_answers(shapes_qwen2vl)


@covers("grayscale")
@pytest.mark.timeout(60)
def test_a_grayscale_picture_is_answered(model: VLM) -> None:
    gray = picture().convert("L")
    loaded = load_image(encoded(gray))
    assert loaded.mode == "RGB"
    red, green, blue = (np.asarray(loaded)[:, :, channel] for channel in range(3))
    assert (red == green).all() and (green == blue).all() and (red == np.asarray(gray)).all()
    assert answered(model.caption_with(encoded(gray)))


@covers("palette")
@pytest.mark.timeout(60)
def test_a_palette_picture_is_captioned_like_the_original(model: VLM) -> None:
    assert model.caption_with(encoded(picture().convert("P"))) == RED_CAPTION


@covers("rgba")
@pytest.mark.timeout(60)
def test_a_transparent_background_is_seen_as_white(model: VLM) -> None:
    pixels = np.asarray(picture().convert("RGBA")).copy()
    white = (pixels[:, :, :3] == 255).all(axis=2)
    pixels[white] = (0, 0, 0, 0)  # the background becomes transparent black
    cutout = Image.fromarray(pixels)
    assert model.caption_with(encoded(cutout)) == RED_CAPTION


@covers("cmyk")
@pytest.mark.timeout(60)
def test_a_cmyk_jpeg_is_captioned_like_the_original(model: VLM) -> None:
    cmyk = encoded(picture().convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(cmyk)).mode == "CMYK"
    assert model.caption_with(cmyk) == RED_CAPTION


@covers("16-bit")
@pytest.mark.timeout(60)
def test_a_16_bit_picture_is_scaled_to_8_bits(model: VLM) -> None:
    levels = np.array([[0, 32768, 65535]], dtype=np.uint16).repeat(8, axis=0).repeat(8, axis=1)
    deep = encoded(Image.fromarray(levels))
    assert Image.open(io.BytesIO(deep)).mode.startswith("I")
    loaded = load_image(deep)
    assert [loaded.getpixel((x, 0)) for x in (0, 8, 16)] == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]
    assert answered(model.caption_with(deep))


@covers("animated-gif")
@pytest.mark.timeout(60)
def test_an_animated_gif_is_read_at_its_first_frame(model: VLM) -> None:
    frames = [picture(), picture(shapes.Scene("square", "blue", "gray"))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(io.BytesIO(buffer.getvalue())).n_frames == 2  # type: ignore[attr-defined]
    assert model.caption_with(buffer.getvalue()) == RED_CAPTION


@covers("exif-rotated")
@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("orientation", "stored_as"),
    [(3, Image.Transpose.ROTATE_180), (6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270)],
    ids=["upside-down", "rotate-right", "rotate-left"],
)
def test_an_exif_rotated_photo_is_seen_upright(model: VLM, orientation: int, stored_as: Image.Transpose) -> None:
    upright = picture(GREEN_TRIANGLE)
    sideways = upright.transpose(stored_as)  # the pixels as a camera held sideways stores them
    exif = Image.Exif()
    exif[0x0112] = orientation  # how a viewer must turn them
    photo = encoded(sideways, "JPEG", quality=95, exif=exif.tobytes())
    shown = np.asarray(load_image(photo), dtype=np.int16)
    assert np.abs(shown - np.asarray(upright, dtype=np.int16)).mean() < 3, "upright, as a viewer shows it"
    assert model.caption_with(photo) == "A green triangle on a gray background."


@covers("numpy-shape")
@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((64, 64, 2), r"\(H, W\), \(H, W, 3\) or \(H, W, 4\).*got \(64, 64, 2\)\.$"),
        ((64, 64, 5), r"got \(64, 64, 5\)"),
        ((4096,), r"got \(4096,\)"),
        ((1, 64, 64, 3), r"got \(1, 64, 64, 3\)"),
        ((3, 64, 64), r"channels last.*array\.transpose\(1, 2, 0\)"),
    ],
    ids=["2-channels", "5-channels", "flat", "batched", "channels-first"],
)
def test_a_numpy_array_of_the_wrong_shape_is_refused(model: VLM, shape: tuple[int, ...], message: str) -> None:
    refused(model, np.zeros(shape, dtype=np.uint8), message)


@covers("numpy-dtype")
@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((8, 8, 3), dtype=np.int64), "uint8 .* or float .*got dtype int64"),
        (np.zeros((8, 8, 3), dtype=np.uint16), "got dtype uint16"),
        (np.zeros((8, 8), dtype=bool), "got dtype bool"),
        (np.full((8, 8, 3), 255.0), r"A float image \(a float numpy array, .*\) must hold finite values between 0 and"),
        (np.full((8, 8, 3), np.nan), "finite values between 0 and 1"),
    ],
    ids=["int64", "uint16", "bool", "float-0-255", "nan"],
)
def test_a_numpy_array_of_the_wrong_dtype_is_refused(model: VLM, array: np.ndarray, message: str) -> None:
    refused(model, array, message)


def closed_pictures(tmp_path: Path) -> list[Image.Image]:
    """The red circle as a PNG and as an animated GIF, each used after its ``with`` block; and a
    picture after ``close()``."""
    picture().save(tmp_path / "red.png")
    frames = [picture(), picture(GREEN_TRIANGLE)]
    frames[0].save(tmp_path / "two.gif", save_all=True, append_images=frames[1:])
    with Image.open(tmp_path / "red.png") as unread:
        pass
    with Image.open(tmp_path / "two.gif") as animated:
        animated.load()
    closed = picture()
    closed.close()
    return [unread, animated, closed]


CLOSED = r"was closed before vlm-notebook could read its pixels.*reopen it.*or pass the file's path"


@covers("closed-pil-image")
@pytest.mark.timeout(60)
def test_a_closed_pil_image_is_refused_with_what_to_do(model: VLM, tmp_path: Path) -> None:
    for closed in closed_pictures(tmp_path):
        refused(model, closed, CLOSED)
    assert model.caption_with(tmp_path / "red.png") == RED_CAPTION, "the path, as the message says, works"


@covers("closed-pil-image")
@pytest.mark.timeout(60)
def test_a_widget_refuses_a_closed_image_and_keeps_working(shapes_smolvlm: SmolVLM, tmp_path: Path) -> None:
    for closed in closed_pictures(tmp_path):
        with pytest.raises(ImageError, match=CLOSED):
            VLMWidget(shapes_smolvlm, image=closed)
    widget = VLMWidget(shapes_smolvlm, image=picture())
    for closed in closed_pictures(tmp_path):
        with pytest.raises(ImageError, match=CLOSED):
            widget.image = closed
    assert widget.run() and widget.wait(30) == RED_CAPTION, "the widget kept its picture and works"
    widget.close()
    assert_still_answers(shapes_smolvlm)


@covers("empty-array")
@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("shape", "dtype"), [((0, 4, 3), np.float32), ((4, 0), np.float64), ((0, 4, 3), np.uint8)],
    ids=["float-rows", "float-columns", "uint8"],
)
def test_an_array_without_pixels_is_refused(model: VLM, shape: tuple[int, ...], dtype: type) -> None:
    refused(model, np.zeros(shape, dtype=dtype), r"The image has no pixels \(\d+x\d+\)")


@covers("float-pil-image")
@pytest.mark.timeout(60)
def test_a_float_pil_image_is_read_as_0_to_1_like_a_float_array(model: VLM) -> None:
    gray = picture().convert("L")
    levels = np.asarray(gray, dtype=np.float32) / 255.0
    assert model.caption_with(Image.fromarray(levels, mode="F")) == model.caption_with(gray)
    assert np.array_equal(np.asarray(load_image(Image.fromarray(levels, mode="F"))), np.asarray(load_image(levels)))
    refused(model, Image.fromarray(levels * 255.0, mode="F"), r"between 0 and 1: divide values of 0\.\.255 by 255")


@covers("path-strings")
@pytest.mark.timeout(60)
def test_a_path_too_long_for_the_file_system_is_refused(model: VLM, tmp_path: Path) -> None:
    refused(model, str(tmp_path / ("photo" * 60 + ".png")), "a file or folder name in it is longer than the file")


@covers("path-strings")
@pytest.mark.timeout(60)
def test_a_path_in_the_home_folder_written_with_a_tilde_is_read(
    model: VLM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    picture().save(tmp_path / "red circle.png")
    assert model.caption_with("~/red circle.png") == RED_CAPTION


@covers("path-strings")
@pytest.mark.timeout(60)
@pytest.mark.parametrize("url", ["http://example.com/photo.jpg", "https://example.com/photo.jpg"])
def test_a_url_is_refused_with_the_advice_to_download_it(model: VLM, url: str) -> None:
    refused(model, url, rf"'{url}' is a URL, and vlm-notebook does not download pictures: download it first")


@covers("path-strings")
@pytest.mark.timeout(60)
def test_the_caption_magic_gives_the_same_refusals_and_reads_a_tilde_path(
    shapes_smolvlm: SmolVLM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    magics = VLMMagics(shell=None)
    magics._models[("smolvlm", shapes_smolvlm.entry.source)] = shapes_smolvlm  # the loaded model, not a new one
    magics.default_model = "shapes-smolvlm"
    long_path = str(tmp_path / ("photo" * 60 + ".png"))
    with pytest.raises(ImageError, match="longer than the file system allows"):
        magics.vlm_caption(long_path)
    with pytest.raises(ImageError, match=r"is a URL.*download it first"):
        magics.vlm_caption("https://example.com/photo.jpg")
    monkeypatch.setenv("HOME", str(tmp_path))
    picture().save(tmp_path / "red.png")
    assert magics.vlm_caption("~/red.png") == RED_CAPTION
    assert_still_answers(shapes_smolvlm)
