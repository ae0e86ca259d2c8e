"""Train the shipped tiny checkpoints: ``python -m vlm_notebook.training FAMILY [options]``.

``--help`` lists the options (``--init-from DIR`` starts from a saved checkpoint's weights instead of
random ones). With no options a family trains from scratch; each shipped checkpoint's card (its
README.md) gives the command that made it.

``smolvlm`` trains the tiny SmolVLM (English), ``qwen2vl`` the tiny Qwen2-VL (captions in seven
languages, questions in English and Japanese), ``gemma4`` the tiny Gemma 4 (English), ``moondream``
the tiny Moondream 2 (English, with boxes and points); each saves its weights, reloads the saved
directory to evaluate it, and writes ``training.json`` and ``README.md`` next to the weights.
``assets`` writes a few canonical example pictures for demos.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import torch

from vlm_notebook import shapes
from vlm_notebook.models.generic import load_image_only_processor
from vlm_notebook.training import card, evaluate, gemma4, moondream, qwen2vl, robustness, smolvlm
from vlm_notebook.training.loop import Trained, save

PACKAGE_DIR = Path(__file__).resolve().parents[1]
ASSETS_DIR = PACKAGE_DIR / "assets"
DEFAULT_SEED = 0
QWEN2VL_PER_SCENE = 1  # random-position pictures per scene in the evaluation


@dataclass(frozen=True)
class FamilyDefaults:
    """What ``python -m vlm_notebook.training FAMILY`` does with no options: train from scratch (the settings
    that made the first shipped checkpoints; the current ones were trained further, see their cards)."""

    help: str
    out: Path
    steps: int
    vision_steps: int
    threads: int


#: family -> the settings that rebuilt its shipped checkpoint
FAMILY_DEFAULTS: dict[str, FamilyDefaults] = {
    "smolvlm": FamilyDefaults(
        "train and save the tiny shapes-smolvlm", PACKAGE_DIR / "checkpoints" / "shapes-smolvlm", 2500, 2000, 2
    ),
    # on a shared 2-core machine one thread was 7x faster than two
    "qwen2vl": FamilyDefaults(
        "train and save the tiny shapes-qwen2vl (captions in 7 languages, questions in 2)",
        PACKAGE_DIR / "checkpoints" / "shapes-qwen2vl", 2000, 2000, 1,
    ),
    "gemma4": FamilyDefaults(
        "train and save the tiny shapes-gemma4 (a current architecture, through the generic family)",
        PACKAGE_DIR / "checkpoints" / "shapes-gemma4", 1500, 1500, 2,
    ),
    "moondream": FamilyDefaults(
        "train and save the tiny shapes-moondream (captions, detect, point)",
        PACKAGE_DIR / "checkpoints" / "shapes-moondream", 4800, 1000, 2,
    ),
}
EVAL_SEED_OFFSET = 10_000  # random-position evaluation pictures use seed + this
RANDOM_PICTURES = 200  # pictures as users send them (issue #22), seed robustness.DEFAULT_SEED
ASSET_SCENES = (
    shapes.Scene("circle", "red", "white"),
    shapes.Scene("square", "blue", "black"),
    shapes.Scene("triangle", "green", "gray"),
    shapes.Scene("diamond", "yellow", "black"),
)


def _log(message: str) -> None:
    print(message, flush=True)


def _machine() -> str:
    return f"{os.cpu_count()} CPU cores ({platform.machine()}), fp32, no GPU"


def _shown(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _command(args: argparse.Namespace) -> str:
    """The command line that repeats this run: every option that has a value, ``--out`` last."""
    command = f"python -m vlm_notebook.training {args.family}"
    for name, value in vars(args).items():
        if name not in ("family", "out") and value is not None:
            shown = " ".join(map(_shown, value)) if isinstance(value, list) else _shown(value)
            command += f" --{name.replace('_', '-')} {shown}"
    default_out = FAMILY_DEFAULTS[args.family].out
    return command if Path(args.out).resolve() == default_out else f"{command} --out {args.out}"


R = TypeVar("R")  # a recipe, or a dataclass inside one


def _given(recipe: R, args: argparse.Namespace) -> R:
    """The recipe with every field an option was given for (``--lr``, ``--small-shapes``, ...: each
    option is named after the recipe field it sets; ``--vision-layers`` sets a field of its ``sizes``)."""
    given: dict[str, Any] = {}
    for field in fields(recipe):  # type: ignore[arg-type]  # R is always a dataclass
        value = getattr(recipe, field.name)
        if is_dataclass(value) and not isinstance(value, type):
            given[field.name] = _given(value, args)
        elif (option := getattr(args, field.name, None)) is not None:
            given[field.name] = tuple(option) if isinstance(option, list) else option
    return replace(recipe, **given)  # type: ignore[type-var]  # R is always a dataclass


def _init(args: argparse.Namespace) -> Path | None:
    return Path(args.init_from) if args.init_from else None


def _mean_tail(losses: list[float], n: int = 100) -> float:
    tail = losses[-n:]
    return round(sum(tail) / max(1, len(tail)), 5)


def _record(
    args: argparse.Namespace, trained: Trained, recipe: smolvlm.Recipe | qwen2vl.Recipe | gemma4.Recipe
) -> dict[str, Any]:
    return {
        "name": Path(args.out).name,
        "family": args.family,
        "command": _command(args),
        "seed": args.seed,
        "steps": args.steps,
        "vision_steps": args.vision_steps,
        "threads": args.threads,
        "init_from": args.init_from,
        "train_seconds": round(trained.vision.seconds + trained.text.seconds, 1),
        "vision_seconds": round(trained.vision.seconds, 1),
        "text_seconds": round(trained.text.seconds, 1),
        "final_vision_loss": _mean_tail(trained.vision.losses),
        "final_text_loss": _mean_tail(trained.text.losses),
        "parameters": sum(p.numel() for p in trained.model.parameters()),
        "recipe": recipe.as_dict(),
        "machine": _machine(),
        "versions": card.versions(),
    }


def run_smolvlm(args: argparse.Namespace) -> dict[str, Any]:
    """Train, save, reload and evaluate; write the record and the model card."""
    return _run_chat_template_family(args, smolvlm)


def _pictures(out: Path) -> dict[str, Any]:
    """The saved checkpoint, loaded as users load it but in fp32 (the format it was trained and saved in;
    bf16, the CPU default where the CPU has bf16 instructions, is measured apart), on random pictures
    as users send them."""
    from vlm_notebook.registry import get_model

    _log(f"evaluating on {RANDOM_PICTURES} random pictures")
    return robustness.figures(get_model(str(out), dtype="float32"), RANDOM_PICTURES)


def run_qwen2vl(args: argparse.Namespace) -> dict[str, Any]:
    """Train, save, reload and evaluate (every caption language); write the record and the card."""
    return _run_chat_template_family(
        args, qwen2vl, languages=shapes.CAPTION_LANGUAGES, per_scene=QWEN2VL_PER_SCENE,
        load_processor=qwen2vl.load_processor,
    )


def run_gemma4(args: argparse.Namespace) -> dict[str, Any]:
    """Train, save, reload and evaluate (English); write the record and the card."""
    return _run_chat_template_family(args, gemma4, load_processor=load_image_only_processor)


def _run_chat_template_family(args: argparse.Namespace, recipes: Any, **evaluation: Any) -> dict[str, Any]:
    """Train with ``recipes`` (the family's training module), save, reload, evaluate (``evaluation``:
    ``evaluate.evaluate_dir``'s options); write the record and the card."""
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    recipe = _given(recipes.Recipe(), args)
    trained = recipes.train_model(args.steps, args.vision_steps, args.seed, recipe, _log, _init(args))
    save(trained.processor, trained.model, out)
    _log(f"saved to {out}; evaluating the saved directory")
    started = time.perf_counter()
    record = _record(args, trained, recipe)
    record["evaluation"] = evaluate.evaluate_dir(out, random_seed=args.seed + EVAL_SEED_OFFSET, **evaluation)
    record["evaluation"]["pictures"] = _pictures(out)
    record["eval_seconds"] = round(time.perf_counter() - started, 1)
    card.write_record(out, record)
    card.write_card(out, record)
    return record


def run_moondream(args: argparse.Namespace) -> dict[str, Any]:
    """Train the tiny Moondream, save it, reload and evaluate every task; write the record and the card."""
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    recipe = _given(moondream.Recipe(), args)
    trained = moondream.train_model(args.steps, args.vision_steps, args.seed, recipe, _log, _init(args))
    moondream.save(trained.tokenizer, trained.net, out)
    _log(f"saved to {out}; evaluating the saved directory")
    started = time.perf_counter()
    record: dict[str, Any] = {
        "name": out.name, "family": args.family, "command": _command(args), "seed": args.seed,
        "steps": args.steps, "vision_steps": args.vision_steps, "threads": args.threads, "init_from": args.init_from,
        "train_seconds": round(trained.vision.seconds + trained.text.seconds, 1),
        "vision_seconds": round(trained.vision.seconds, 1), "text_seconds": round(trained.text.seconds, 1),
        "final_vision_loss": _mean_tail(trained.vision.losses), "final_text_loss": _mean_tail(trained.text.losses),
        "parameters": sum(p.numel() for p in trained.net.parameters()), "recipe": recipe.as_dict(),
        "machine": _machine(), "versions": card.versions(), "resizer": moondream.resizer(),
    }
    if trained.hard is not None:
        record["hard_mining"] = {"lowest_loss": round(trained.hard.lowest_loss, 4), "seconds": trained.hard.seconds}
    record["evaluation"] = moondream.evaluate_dir(out, random_seed=args.seed + EVAL_SEED_OFFSET)
    record["eval_seconds"] = round(time.perf_counter() - started, 1)
    card.write_record(out, record)
    (out / "README.md").write_text(moondream.model_card(record), encoding="utf-8")
    return record


def write_assets(directory: Path = ASSETS_DIR) -> list[Path]:
    """Save canonical drawings of a few scenes as small PNGs, e.g. ``red-circle-on-white.png``."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for scene in ASSET_SCENES:
        path = directory / f"{scene.colour}-{scene.shape}-on-{scene.background}.png"
        shapes.draw(scene).image.save(path, optimize=True)
        paths.append(path)
    return paths


def _add_family(parser: argparse.ArgumentParser, defaults: FamilyDefaults) -> None:
    parser.add_argument("--out", default=str(defaults.out), help="output directory")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="training steps")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed")
    parser.add_argument(
        "--vision-steps",
        type=int,
        default=defaults.vision_steps,
        help="vision pretraining steps; its heads start at random in every run, so after --init-from they can "
        "first pull the encoder away from what the text model reads (0 skips the stage)",
    )
    parser.add_argument(
        "--threads", type=int, default=defaults.threads, help="torch CPU threads (fixed for repeatability)"
    )
    parser.add_argument("--init-from", default=None, help="start from this checkpoint's weights, not at random")
    parser.add_argument("--batch-size", type=int, default=None, help="examples a step (default: the recipe's)")
    parser.add_argument(
        "--lr", type=float, default=None, help="peak learning rate of the whole-model stage (default: the recipe's)"
    )
    parser.add_argument(
        "--vision-lr", type=float, default=None, help="peak learning rate of vision pretraining (default: the recipe's)"
    )
    parser.add_argument(
        "--canonical-fraction", type=float, default=None,
        help="fraction of canonical drawings among the training pictures (default: the recipe's)",
    )
    parser.add_argument(
        "--varied-per-scene", type=int, default=None,
        help="distinct varied pictures drawn for each scene, then reused (default: the recipe's)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vlm_notebook.training")
    commands = parser.add_subparsers(dest="family", required=True)
    for family, defaults in FAMILY_DEFAULTS.items():
        _add_family(commands.add_parser(family, help=defaults.help), defaults)
    commands.choices["moondream"].add_argument(
        "--region-weight", type=float, default=None,
        help="weight of the box and point losses against the tokens' (default: the recipe's)",
    )
    commands.choices["moondream"].add_argument(
        "--small-shapes", type=float, default=None,
        help="fraction of the varied pictures drawn with a small shape (default: the recipe's)",
    )
    commands.choices["moondream"].add_argument(
        "--vision-layers", type=int, default=None,
        help="vision encoder depth; layers beyond the --init-from checkpoint's start as identities "
        "(default: the recipe's)",
    )
    for option, what in (("--vision-ff", "vision blocks' MLPs"), ("--proj-inner", "projection's MLP"),
                         ("--text-ff", "text blocks' MLPs")):
        commands.choices["moondream"].add_argument(
            option, type=int, default=None,
            help=f"hidden units of the {what}; units beyond the --init-from checkpoint's start with zero "
            "output weights (default: the recipe's)",
        )
    commands.choices["moondream"].add_argument(
        "--crop-size", type=int, default=None,
        help="side of the crops in px (default: the recipe's)",
    )
    commands.choices["moondream"].add_argument(
        "--max-context", type=int, default=None,
        help=f"tokens the text model holds: the image tokens of a crop and {moondream.TEXT_TOKENS} for the prompt"
        f" and answer (default: the recipe's, {moondream.TinySizes.max_context})",
    )
    commands.choices["moondream"].add_argument(
        "--max-crops", type=int, default=None,
        help="most local crops a picture is tiled into; an --init-from checkpoint's weights carry over "
        "unchanged (default: the recipe's)",
    )
    commands.choices["moondream"].add_argument(
        "--patch", type=int, default=None,
        help="side of the vision patches in px; from an --init-from checkpoint, finer patches are "
        "refined from its kernel, and larger ones on larger crops with its grid spread it over them "
        "(default: the recipe's)",
    )
    commands.choices["moondream"].add_argument(
        "--background-weights", type=float, nargs=3, default=None, metavar=("WHITE", "BLACK", "GRAY"),
        help="how often each background is drawn, in proportion (default: the recipe's)",
    )
    commands.choices["moondream"].add_argument(
        "--shape-weights", type=float, nargs=4, default=None, metavar=("CIRCLE", "SQUARE", "TRIANGLE", "DIAMOND"),
        help="how often each shape is drawn, in proportion; with --background-weights a scene is drawn "
        "in proportion to the product (default: the recipe's)",
    )
    commands.choices["moondream"].add_argument(
        "--task-weights", type=float, nargs=4, default=None, metavar=("CAPTION", "QUERY", "DETECT", "POINT"),
        help="how often each task is drawn, in proportion (default: the recipe's)",
    )
    commands.choices["moondream"].add_argument(
        "--tasks-per-picture", type=int, default=None,
        help="examples drawn for each picture of a step, which share its pass through the encoder; "
        "--batch-size then counts pictures (default: the recipe's, 1)",
    )
    commands.choices["moondream"].add_argument(
        "--hard-pictures", type=int, nargs=2, default=None, metavar=("SCORED", "KEPT"),
        help="before the whole-model stage, score SCORED new varied pictures with the network as it starts "
        "and keep the KEPT hardest (default: none)",
    )
    commands.choices["moondream"].add_argument(
        "--hard-fraction", type=float, default=None,
        help="share of the examples drawn from the --hard-pictures (default: the recipe's)",
    )
    commands.choices["moondream"].add_argument(
        "--shape-map-weight", type=float, default=None,
        help="weight of a loss, from a head not saved, that names the shape from each image token over it "
        "(default: the recipe's, none)",
    )
    assets = commands.add_parser("assets", help="write example pictures")
    assets.add_argument("--out", default=str(ASSETS_DIR), help="output directory")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = _parser().parse_args(argv)
    if args.family == "assets":
        for path in write_assets(Path(args.out)):
            _log(str(path))
        return 0
    runs = {"qwen2vl": run_qwen2vl, "gemma4": run_gemma4, "moondream": run_moondream}
    record = runs.get(args.family, run_smolvlm)(args)
    for name in ("canonical", "random"):
        score = record["evaluation"][name]
        _log(f"{name}: {score['exact']}/{score['total']} exact")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
