"""Synthetic "shapes" pictures with exact captions and question/answer pairs.

Every picture shows one coloured shape on a plain background: 4 shapes x 6 colours x
3 backgrounds = 72 scenes. The text for a scene is fully determined by the scene, so a
model trained on it can be checked for exact answers. Captions, prompts and questions
exist in English (``"en"``, the default) and Japanese (``"ja"``). Only PIL, numpy and the
standard library are used here.

:func:`draw` makes square pictures (canonical, or with the shape placed at random);
:func:`random_picture` makes the pictures users send: any aspect ratio from 1:3 to 3:1, any
size, the shape anywhere, encoded as PNG, JPEG or RGBA PNG (see :data:`RANDOM`).
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
BACKGROUNDS: tuple[str, ...] = ("white", "black", "gray")

#: Languages of the captions, the caption prompts and the questions.
LANGUAGES: tuple[str, ...] = ("en", "ja")
#: Languages of captions (each with the caption prompt of ``vlm_notebook.languages``): the two above and more.
CAPTION_LANGUAGES: tuple[str, ...] = ("en", "ja", "zh", "ko", "fr", "de", "es")

CAPTION_PROMPTS: tuple[str, ...] = ("Describe this image.", "Describe this")
CAPTION_PROMPTS_JA: tuple[str, ...] = ("この画像を説明してください。",)

_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (40, 80, 230),
    "yellow": (245, 215, 20),
    "purple": (140, 50, 190),
    "orange": (250, 140, 20),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
}

_JAPANESE: dict[str, str] = {
    "red": "赤 🔴",
    "green": "緑 🟢",
    "blue": "青 🔵",
    "yellow": "黄色 🟡",
    "purple": "紫 🟣",
    "orange": "オレンジ 🟠",
}

# Japanese words: the noun, and the form used before a noun ("赤い円", "緑の円").
_JA_SHAPES: dict[str, str] = {"circle": "円", "square": "正方形", "triangle": "三角形", "diamond": "ひし形"}
_JA_COLOURS: dict[str, str] = {
    "red": "赤", "green": "緑", "blue": "青", "yellow": "黄色", "purple": "紫", "orange": "オレンジ",
    "white": "白", "black": "黒", "gray": "灰色",
}
_JA_ADJECTIVES: dict[str, str] = {
    "red": "赤い", "green": "緑の", "blue": "青い", "yellow": "黄色い", "purple": "紫の", "orange": "オレンジの",
    "white": "白い", "black": "黒い", "gray": "灰色の",
}

_CANONICAL_FRACTION = 0.5  # side of the canonical shape, as a fraction of the picture
_RANDOM_FRACTION = (0.35, 0.70)  # range of the side of a randomly placed shape
_SUPERSAMPLE = 4  # draw this much larger, then downscale, for smooth edges

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Scene:
    """One combination of shape, shape colour and background colour."""

    shape: str
    colour: str
    background: str


@dataclass(frozen=True)
class Drawing:
    """A rendered scene and the shape's bounding box (x0, y0, x1, y1), normalised to 0..1."""

    image: Image.Image
    box: Box


def all_scenes() -> list[Scene]:
    """All 72 scenes, ordered by shape, then colour, then background."""
    return [Scene(shape, colour, background) for shape in SHAPES for colour in COLOURS for background in BACKGROUNDS]


def _article(word: str) -> str:
    return "An" if word[0] in "aeiou" else "A"


def _check_language(language: str, known: tuple[str, ...] = LANGUAGES) -> None:
    if language not in known:
        raise ValueError(f"unknown language {language!r}; known: {', '.join(known)}")


def caption_prompts(language: str = "en") -> tuple[str, ...]:
    """The prompts that ask for a caption in ``language`` (one of :data:`CAPTION_LANGUAGES`)."""
    _check_language(language, CAPTION_LANGUAGES)
    if language == "en":
        return CAPTION_PROMPTS
    if language == "ja":
        return CAPTION_PROMPTS_JA
    from .languages import CAPTION_PROMPTS as BY_LANGUAGE  # no torch there either

    return (BY_LANGUAGE[language],)


def caption(scene: Scene, language: str = "en") -> str:
    """The exact caption, e.g. ``"A red circle on a white background."``, ``"白い背景に赤い円。"``,
    ``"Un cercle rouge sur fond blanc."``: in any of :data:`CAPTION_LANGUAGES`."""
    _check_language(language, CAPTION_LANGUAGES)
    if language == "ja":
        return f"{_JA_ADJECTIVES[scene.background]}背景に{_JA_ADJECTIVES[scene.colour]}{_JA_SHAPES[scene.shape]}。"
    if language != "en":
        return _CAPTIONS[language](scene)
    noun = f"{scene.colour} {scene.shape}"
    return f"{_article(noun)} {noun} on a {scene.background} background."


def _words(names: tuple[str, ...], words: str) -> dict[str, str]:
    return dict(zip(names, words.split(), strict=True))


_ALL_COLOURS = (*COLOURS, *BACKGROUNDS)
_ZH = {
    **_words(SHAPES, "圆形 正方形 三角形 菱形"),
    **_words(_ALL_COLOURS, "红色 绿色 蓝色 黄色 紫色 橙色 白色 黑色 灰色"),
}
_KO = {
    **_words(SHAPES, "원 정사각형 삼각형 마름모"),
    **_words(_ALL_COLOURS, "빨간 초록 파란 노란 보라색 주황색 흰색 검은색 회색"),
}
_FR = {
    **_words(SHAPES, "cercle carré triangle losange"),
    **_words(_ALL_COLOURS, "rouge vert bleu jaune violet orange blanc noir gris"),
}
_ES = {
    **_words(SHAPES, "círculo cuadrado triángulo rombo"),
    **_words(_ALL_COLOURS, "rojo verde azul amarillo morado naranja blanco negro gris"),
}
# German: the noun's gender sets the article and the adjective's ending (ein roter Kreis, ein
# rotes Quadrat, eine rote Raute).
_DE_SHAPES = {
    "circle": ("Kreis", "Ein", "er"), "square": ("Quadrat", "Ein", "es"),
    "triangle": ("Dreieck", "Ein", "es"), "diamond": ("Raute", "Eine", "e"),
}
_DE = _words(_ALL_COLOURS, "rot grün blau gelb violett orangefarben weiß schwarz grau")


def _german(scene: Scene) -> str:
    noun, article, ending = _DE_SHAPES[scene.shape]
    return f"{article} {_DE[scene.colour]}{ending} {noun} auf {_DE[scene.background]}em Hintergrund."


_CAPTIONS: dict[str, Callable[[Scene], str]] = {
    "zh": lambda s: f"{_ZH[s.background]}背景上的{_ZH[s.colour]}{_ZH[s.shape]}。",
    "ko": lambda s: f"{_KO[s.background]} 배경에 {_KO[s.colour]} {_KO[s.shape]}.",
    "fr": lambda s: f"Un {_FR[s.shape]} {_FR[s.colour]} sur fond {_FR[s.background]}.",
    "de": _german,
    "es": lambda s: f"Un {_ES[s.shape]} {_ES[s.colour]} sobre fondo {_ES[s.background]}.",
}


def questions(scene: Scene, language: str = "en") -> list[tuple[str, str]]:
    """Question/answer pairs in ``language``.

    In English the last answer is multi-byte UTF-8 (Japanese and an emoji); in Japanese
    every question and answer is, e.g. ``("この図形は何色ですか？", "赤です。")``.
    """
    _check_language(language)
    if language == "ja":
        return [
            ("これは何の形ですか？", f"{_JA_SHAPES[scene.shape]}です。"),
            ("この図形は何色ですか？", f"{_JA_COLOURS[scene.colour]}です。"),
            ("背景は何色ですか？", f"{_JA_COLOURS[scene.background]}です。"),
        ]
    return [
        ("What shape is it?", f"{_article(scene.shape)} {scene.shape}."),
        ("What colour is the shape?", f"{scene.colour.capitalize()}."),
        ("What colour is the background?", f"{scene.background.capitalize()}."),
        ("What colour is the shape? Answer in Japanese.", _JAPANESE[scene.colour]),
    ]


def examples(scene: Scene, language: str = "en") -> list[tuple[str, str]]:
    """Every (prompt, answer) pair for a scene in ``language``: each caption prompt, then the questions
    (captions only in the languages without questions)."""
    described = [(prompt, caption(scene, language)) for prompt in caption_prompts(language)]
    return described + (questions(scene, language) if language in LANGUAGES else [])


def _placement(size: int, rng: random.Random | None) -> Box:
    """Pixel box of the shape: centred and fixed without ``rng``, random with it."""
    if rng is None:
        side = size * _CANONICAL_FRACTION
        x0 = y0 = (size - side) / 2
    else:
        side = size * rng.uniform(*_RANDOM_FRACTION)
        x0 = rng.uniform(0, size - side)
        y0 = rng.uniform(0, size - side)
    return (x0, y0, x0 + side, y0 + side)


def _outline(shape: str, box: Box) -> list[tuple[float, float]]:
    """Polygon corners of the polygonal shapes inside ``box``."""
    x0, y0, x1, y1 = box
    xm, ym = (x0 + x1) / 2, (y0 + y1) / 2
    if shape == "square":
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    if shape == "triangle":
        return [(xm, y0), (x1, y1), (x0, y1)]
    if shape == "diamond":
        return [(xm, y0), (x1, ym), (xm, y1), (x0, ym)]
    raise ValueError(f"unknown shape: {shape!r}")


def _scaled(box: Box, factor: float) -> Box:
    x0, y0, x1, y1 = box
    return (x0 * factor, y0 * factor, x1 * factor, y1 * factor)


def _paint(image: Image.Image, shape: str, box: Box, colour: str) -> None:
    pen = ImageDraw.Draw(image)
    fill = _RGB[colour]
    if shape == "circle":
        pen.ellipse(box, fill=fill)
    else:
        pen.polygon(_outline(shape, box), fill=fill)


def draw(scene: Scene, size: int = 64, rng: random.Random | None = None) -> Drawing:
    """Render ``scene`` as a ``size`` x ``size`` RGB picture.

    Without ``rng`` the drawing is canonical: the shape is centred and half the side.
    With ``rng`` its position and size (35-70% of the side) are random.
    """
    if scene.colour not in _JAPANESE or scene.background not in BACKGROUNDS:
        raise ValueError(f"unknown colour or background in {scene!r}")
    box = _placement(size, rng)
    big = Image.new("RGB", (size * _SUPERSAMPLE, size * _SUPERSAMPLE), _RGB[scene.background])
    _paint(big, scene.shape, _scaled(box, _SUPERSAMPLE), scene.colour)
    image = big.resize((size, size), Image.Resampling.BOX)
    return Drawing(image=image, box=_scaled(box, 1 / size))


#: Moondream's caption lengths; ``caption_of_length(scene, "normal")`` is ``caption(scene)``.
CAPTION_LENGTHS: tuple[str, ...] = ("short", "normal", "long")


def caption_of_length(scene: Scene, length: str) -> str:
    """The exact English caption of a scene at one of Moondream's lengths.

    ``"short"``: ``"A red circle."``; ``"normal"``: :func:`caption`; ``"long"``: the normal
    caption followed by a sentence about the picture as a whole.
    """
    noun = f"{scene.colour} {scene.shape}"
    if length == "short":
        return f"{_article(noun)} {noun}."
    if length == "normal":
        return caption(scene)
    if length == "long":
        return f"{caption(scene)} The {noun} is the only shape in the picture; the rest is plain {scene.background}."
    raise ValueError(f"unknown caption length {length!r}; known: {', '.join(CAPTION_LENGTHS)}")


# -- pictures as users send them ----------------------------------------------------------


@dataclass(frozen=True)
class RandomSettings:
    """Ranges :func:`random_picture` draws from (the defaults are the evaluation's)."""

    aspect: tuple[float, float] = (1 / 3, 3.0)  # width / height, drawn log-uniformly
    short_side: tuple[int, int] = (48, 256)  # pixels
    shape_fraction: tuple[float, float] = (0.25, 0.60)  # of the short side
    formats: tuple[str, ...] = ("PNG", "JPEG", "RGBA")
    jpeg_quality: tuple[int, int] = (60, 60)
    noise: tuple[float, float] = (0.0, 0.0)  # standard deviation of Gaussian pixel noise, 0..255


#: The evaluation's settings: the pictures of issue #22.
RANDOM = RandomSettings()


@dataclass(frozen=True)
class RandomPicture:
    """An encoded picture of a scene: ``data`` is the file's bytes (what a user passes), ``box`` the
    shape's box (x0, y0, x1, y1) normalised to 0..1. An RGBA picture of a white-background scene has
    a transparent background (black underneath): shown on white, as viewers and ``load_image`` do."""

    scene: Scene
    data: bytes
    format: str
    size: tuple[int, int]  # (width, height)
    box: Box

    @property
    def image(self) -> Image.Image:
        """The decoded picture, as stored (RGB, or RGBA for the RGBA format)."""
        return Image.open(io.BytesIO(self.data))

    def contains(self, x: float, y: float) -> bool:
        """Whether the normalised point (x, y) lies inside the drawn shape."""
        width, height = self.size
        x0, y0, x1, y1 = self.box
        return inside(self.scene.shape, (x0 * width, y0 * height, x1 * width, y1 * height), x * width, y * height)


def inside(shape: str, box: Box, x: float, y: float) -> bool:
    """Whether (x, y) lies inside ``shape`` drawn in ``box`` (same units)."""
    x0, y0, x1, y1 = box
    if not (x0 <= x <= x1 and y0 <= y <= y1):
        return False
    u, v = (x - x0) / (x1 - x0), (y - y0) / (y1 - y0)  # 0..1 inside the box
    if shape == "circle":
        return (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    if shape == "triangle":
        return abs(u - 0.5) <= v / 2
    if shape == "diamond":
        return abs(u - 0.5) + abs(v - 0.5) <= 0.5
    return shape == "square"


def random_picture(rng: random.Random, scene: Scene | None = None, settings: RandomSettings = RANDOM) -> RandomPicture:
    """A picture drawn from ``settings`` (a random scene unless ``scene`` is given), encoded."""
    scene = scene or rng.choice(all_scenes())
    aspect = math.exp(rng.uniform(math.log(settings.aspect[0]), math.log(settings.aspect[1])))
    short = rng.randint(*settings.short_side)
    width, height = (round(short * aspect), short) if aspect >= 1 else (short, round(short / aspect))
    side = short * rng.uniform(*settings.shape_fraction)
    x0, y0 = rng.uniform(0, width - side), rng.uniform(0, height - side)
    box = (x0, y0, x0 + side, y0 + side)
    image, mask = _render(scene, width, height, box)
    picture_format = rng.choice(settings.formats)
    image = _noisy(image, rng.uniform(*settings.noise), rng)
    data = _encode(image, mask, scene, picture_format, rng.randint(*settings.jpeg_quality))
    normalised = (box[0] / width, box[1] / height, box[2] / width, box[3] / height)
    return RandomPicture(scene, data, picture_format, (width, height), normalised)


def _render(scene: Scene, width: int, height: int, box: Box) -> tuple[Image.Image, Image.Image]:
    """The RGB picture and the shape's coverage mask (L), drawn supersampled then downscaled."""
    factor = max(1, min(_SUPERSAMPLE, 1024 // max(width, height)))
    big = Image.new("RGB", (width * factor, height * factor), _RGB[scene.background])
    mask = Image.new("L", big.size, 0)
    _paint(big, scene.shape, _scaled(box, factor), scene.colour)
    ImageDraw.Draw(mask).polygon(_corners(scene.shape, _scaled(box, factor)), fill=255)
    return big.resize((width, height), Image.Resampling.BOX), mask.resize((width, height), Image.Resampling.BOX)


def _corners(shape: str, box: Box) -> list[tuple[float, float]]:
    """The shape's outline as a polygon (a circle as 64 points)."""
    if shape != "circle":
        return _outline(shape, box)
    x0, y0, x1, y1 = box
    xm, ym, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    return [(xm + r * math.cos(t * math.pi / 32), ym + r * math.sin(t * math.pi / 32)) for t in range(64)]


def _noisy(image: Image.Image, std: float, rng: random.Random) -> Image.Image:
    if std <= 0:
        return image
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0.0, std, (image.height, image.width, 3))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.float64) + noise, 0, 255).round().astype(np.uint8))


def _encode(image: Image.Image, mask: Image.Image, scene: Scene, picture_format: str, quality: int) -> bytes:
    out = io.BytesIO()
    if picture_format == "JPEG":
        image.save(out, format="JPEG", quality=quality)
    elif picture_format == "RGBA":
        _transparent(image, mask, scene).save(out, format="PNG", compress_level=1)
    elif picture_format == "PNG":
        image.save(out, format="PNG", compress_level=1)  # fast; PNG is lossless at any level
    else:
        raise ValueError(f"unknown picture format {picture_format!r}")
    return out.getvalue()


def _transparent(image: Image.Image, mask: Image.Image, scene: Scene) -> Image.Image:
    """RGBA: opaque, except that a white background becomes transparent (black underneath)."""
    if scene.background != "white":
        return image.convert("RGBA")
    shape = Image.new("RGBA", image.size, (*_RGB[scene.colour], 255))
    shape.putalpha(mask)
    return Image.alpha_composite(Image.new("RGBA", image.size, (0, 0, 0, 0)), shape)
