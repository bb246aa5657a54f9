"""The command line: one flag per `Config` field, applied over a named recipe."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence

from jaxmnist.config import OPTIMIZERS, SCHEDULES, Config
from jaxmnist.data import DATA_DIR_ENV, DATASETS
from jaxmnist.models import MODELS
from jaxmnist.recipes import RECIPES

_NONE = "none"  # spelling of None on the command line, for fields such as --clip-norm
# argparse's None means "flag not given"; an explicit "none" parses to this marker instead.
_EXPLICIT_NONE = object()
_CHOICES = {"arch": tuple(MODELS), "dataset": DATASETS, "optimizer": OPTIMIZERS, "schedule": SCHEDULES}


def _optional(parse):
    def parse_optional(text: str):
        return _EXPLICIT_NONE if text.lower() == _NONE else parse(text)

    parse_optional.__name__ = parse.__name__  # argparse names the type in its error messages
    return parse_optional


_TYPES = {"int": int, "float": float, "str": str, "float | None": _optional(float), "int | None": _optional(int),
          "str | None": str}


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line naming the fix, not the whole usage block of ~20 flags."""

    def error(self, message: str):
        self.exit(2, f"jaxmnist: error: {message}. Run `{self.prog} --help` for every flag and its choices.\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m jaxmnist.train",
        description="Train a tiny MNIST model for its recipe's epochs and report test accuracy. "
                    "--arch picks the model and its recipe; every other flag overrides one field of it. "
                    f"Data: --data-dir or ${DATA_DIR_ENV}, else a tensorflow-datasets download.",
    )
    parser.add_argument("--recipe", choices=tuple(RECIPES), default=None,
                        help="start from this recipe instead of the one named like --arch")
    for field in dataclasses.fields(Config):
        flag = "--" + field.name.replace("_", "-")
        in_recipes = ", ".join(f"{name}: {_show(getattr(recipe, field.name))}" for name, recipe in RECIPES.items())
        help_text = f"{field.metadata['help']} (recipes: {in_recipes})"
        if field.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(flag, type=_TYPES[field.type], choices=_CHOICES.get(field.name), default=None,
                                metavar=None if field.name in _CHOICES else field.name.upper(), help=help_text)
    parser.add_argument("--json", metavar="PATH", help="also write the summary as one JSON object to PATH")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return parser


def _show(value) -> str:
    return _NONE if value is None else str(value)


def parse(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, Config]:
    """Parses `argv` into the namespace and the run's `Config` (recipe plus overrides)."""
    args = build_parser().parse_args(argv)
    recipe = RECIPES[args.recipe or args.arch or "gap"]
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)}
    overrides = {name: None if value is _EXPLICIT_NONE else value
                 for name, value in given.items() if value is not None}
    return args, dataclasses.replace(recipe, **overrides)

