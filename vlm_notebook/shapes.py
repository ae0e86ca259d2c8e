"""Synthetic "shapes" pictures with exact captions and question/answer pairs.

Every picture shows one coloured shape on a plain background: 4 shapes x 6 colours x
3 backgrounds = 72 scenes. The text for a scene is fully determined by the scene, so a
model trained on it can be checked for exact answers. Captions, prompts and questions
exist in English (``"en"``, the default) and Japanese (``"ja"``). Only PIL and the
standard library are used here.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
BACKGROUNDS: tuple[str, ...] = ("white", "black", "gray")

LANGUAGES: tuple[str, ...] = ("en", "ja")

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


def _check_language(language: str) -> None:
    if language not in LANGUAGES:
        raise ValueError(f"unknown language {language!r}; known: {', '.join(LANGUAGES)}")


def caption_prompts(language: str = "en") -> tuple[str, ...]:
    """The prompts that ask for a caption in ``language``."""
    _check_language(language)
    return CAPTION_PROMPTS if language == "en" else CAPTION_PROMPTS_JA


def caption(scene: Scene, language: str = "en") -> str:
    """The exact caption, e.g. ``"A red circle on a white background."`` or ``"白い背景に赤い円。"``."""
    _check_language(language)
    if language == "ja":
        return f"{_JA_ADJECTIVES[scene.background]}背景に{_JA_ADJECTIVES[scene.colour]}{_JA_SHAPES[scene.shape]}。"
    noun = f"{scene.colour} {scene.shape}"
    return f"{_article(noun)} {noun} on a {scene.background} background."


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
    """Every (prompt, answer) pair for a scene in ``language``: each caption prompt, then the questions."""
    described = [(prompt, caption(scene, language)) for prompt in caption_prompts(language)]
    return described + questions(scene, language)


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
