"""The command line: one flag per `Config` field, applied over a named recipe."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from jaxmnist.cache import CACHE_ENV
from jaxmnist.checkpoint import METRICS_FILE, RunDir, differences, resume_config
from jaxmnist.config import OPTIMIZERS, SCHEDULES, Config
from jaxmnist.data import DATA_DIR_ENV, DATASETS
from jaxmnist.errors import ConfigError, JaxMnistError
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


class Parser(argparse.ArgumentParser):
    """Usage errors as one line naming the fix, not the whole usage block of ~20 flags."""

    def error(self, message: str):
        self.exit(2, f"jaxmnist: error: {message}. Run `{self.prog} --help` for every flag and its choices.\n")


def config_parser(prog: str, description: str) -> Parser:
    """A parser with --recipe and one flag per `Config` field, each naming its value in every recipe."""
    parser = Parser(prog=prog, description=description)
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
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The training command's flags: the run's (`config_parser`), then where its results go."""
    parser = config_parser(
        "python -m jaxmnist.train",
        "Train a tiny MNIST model for its recipe's epochs and report test accuracy. --arch picks the model and its "
        "recipe; every other flag overrides one field of it. "
        f"Data: --data-dir or ${DATA_DIR_ENV}, else a tensorflow-datasets download.")
    parser.add_argument("--json", metavar="PATH", help="also write the summary as one JSON object to PATH")
    parser.add_argument("--checkpoint-dir", metavar="DIR",
                        help="keep the run in DIR: its config, orbax checkpoints after every epoch (and when "
                             "stopped), the metrics log and the summary; jaxmnist.evaluate and jaxmnist.predict "
                             "read it")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --checkpoint-dir from its newest checkpoint, with its own "
                             "configuration")
    parser.add_argument("--keep", type=_positive, default=3, metavar="N",
                        help="checkpoints to keep in --checkpoint-dir, the newest ones (default 3)")
    parser.add_argument("--metrics", metavar="PATH",
                        help=f"write the metrics log (JSON lines: step, loss, accuracy, learning rate, seconds; "
                             f"val/test accuracy per epoch) to PATH (default: DIR/{METRICS_FILE} with "
                             "--checkpoint-dir)")
    parser.add_argument("--plot", metavar="PATH",
                        help="draw the learning curves into a PNG at PATH when the run ends (the plot extra: "
                             "matplotlib); the metrics log goes beside it unless --metrics or --checkpoint-dir "
                             "says where")
    parser.add_argument("--tensorboard", metavar="DIR",
                        help="also write the metrics log's scalars (loss, accuracy, learning rate; train loss and "
                             "accuracy, val/test accuracy per epoch) as TensorBoard event files into DIR, created if "
                             "missing (the tensorboard extra: tensorboardX); view them with `tensorboard --logdir DIR`")
    parser.add_argument("--cache-dir", metavar="DIR",
                        help=f"JAX's persistent compilation cache, so that later runs skip compiling (default: "
                             f"${CACHE_ENV}, else $XDG_CACHE_HOME/jaxmnist/xla); none turns it off")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive whole number")
    return value


def _show(value) -> str:
    return _NONE if value is None else str(value)


def _overrides(args: argparse.Namespace) -> dict:
    """The Config fields the command line sets explicitly."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)}
    return {name: None if value is _EXPLICIT_NONE else value for name, value in given.items() if value is not None}


def parse(argv: Sequence[str] | None = None,
          parser: argparse.ArgumentParser | None = None) -> tuple[argparse.Namespace, Config]:
    """Parses `argv` with `parser` (default: the training command's) into the namespace and the run's
    `Config` (recipe plus overrides)."""
    args = (parser or build_parser()).parse_args(argv)
    recipe = RECIPES[args.recipe or args.arch or "gap"]
    return args, dataclasses.replace(recipe, **_overrides(args))


def metrics_path(args: argparse.Namespace) -> Path | None:
    """Where the metrics log goes: --metrics, else the run folder, else beside --plot; None: nowhere."""
    if args.metrics:
        return Path(args.metrics)
    if args.checkpoint_dir:
        return Path(args.checkpoint_dir) / METRICS_FILE
    return Path(args.plot).with_suffix(".jsonl") if args.plot else None


def check_outputs(args: argparse.Namespace) -> None:
    """Every path the run will write is writable, checked before any work; ConfigError naming the fix."""
    if args.resume and not args.checkpoint_dir:
        raise ConfigError("Invalid configuration: --resume continues the run kept in a folder: give that folder "
                          "with --checkpoint-dir DIR.")
    if args.plot:
        require_matplotlib("--plot")
    if args.tensorboard:
        require_extra("--tensorboard", "writes TensorBoard event files", "tensorboardX", "tensorboard")
    for flag, folder in {"--checkpoint-dir": args.checkpoint_dir, "--tensorboard": args.tensorboard}.items():
        if folder:
            check_writable(flag, Path(folder), folder=True)
    # A metrics log the user did not name goes into the run folder or beside the plot, checked with them.
    # A file directly in the run folder is fine before the run creates that folder.
    run_folder = Path(args.checkpoint_dir).expanduser().absolute() if args.checkpoint_dir else None
    for flag, path in {"--json": args.json, "--plot": args.plot, "--metrics": args.metrics}.items():
        if path is not None and not (run_folder and Path(path).expanduser().absolute().parent == run_folder
                                     and not Path(path).is_dir()):
            check_writable(flag, Path(path))


def check_writable(flag: str, path: Path, folder: bool = False, outcome: str = "Nothing was trained.") -> None:
    """`path` (a file, or a `folder`) can be written: ConfigError naming the fix, ending in `outcome`."""
    path = path.expanduser()
    parent = path if folder and path.is_dir() else path.parent
    problem = None
    if folder and path.exists() and not path.is_dir():
        problem = f"{path} is a file, not a folder"
    elif not folder and path.is_dir():
        problem = f"{path} is a folder: name a file in it, e.g. {path / 'run.json'}"
    elif not parent.is_dir():
        problem = f"the folder {parent} does not exist: create it first, or choose a path in an existing folder"
    elif not os.access(parent, os.W_OK):
        problem = f"the folder {parent} is not writable: choose a path you can write to"
    if problem:
        raise ConfigError(f"Invalid configuration: {flag} {path}: {problem}. {outcome}")


def run_config(args: argparse.Namespace, config: Config, run_dir: RunDir) -> tuple[Config, bool]:
    """The run's Config with a run folder, and whether it continues the run kept there.

    A folder keeping a run (checkpoints, or the config.json of one stopped before its first)
    is continued by the same command: the requested configuration must be the kept one (only
    where the data lives and what runs it may change). With --resume the kept configuration is
    used as it is, and only those flags may be given. Another run's folder is refused.
    """
    kept = run_dir.kept_config()
    if kept is None:
        if args.resume:
            raise ConfigError(f"Invalid configuration: {run_dir.path} holds no run to resume: train with "
                              f"--checkpoint-dir {run_dir.path} first (without --resume), or point --checkpoint-dir "
                              "at the folder a run wrote.")
        return config, False
    if args.resume:
        # A named recipe (--arch or --recipe) asks for all of its fields; otherwise only the flags given.
        explicit = {f.name for f in dataclasses.fields(Config)} if args.arch or args.recipe else set(_overrides(args))
        return resume_config(kept, config, explicit, run_dir.path), True
    what = differences(config, kept, (f.name for f in dataclasses.fields(Config)))
    if what:
        raise ConfigError(f"Invalid configuration: {run_dir.path} keeps another run ({what}): continue that run with "
                          f"its own command (or --resume --checkpoint-dir {run_dir.path}), or give this run another "
                          "--checkpoint-dir.")
    return config, True


def require_extra(flag: str, does: str, module: str, extra: str) -> None:
    """ConfigError naming the fix when `module` (of jaxmnist's `extra`) is missing, before any work
    that `flag`, which `does` something with it, would end in."""
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"Invalid configuration: {flag} {does} with {module}, which is not installed: "
                          f"pip install 'jaxmnist[{extra}]' (or {module}), or leave {flag} out.")


def require_matplotlib(flag: str) -> None:
    require_extra(flag, "draws", "matplotlib", "plot")


def check_output(flag: str, path: str | Path | None, outcome: str = "Nothing was evaluated.") -> None:
    """`path` (when given) can be written; ConfigError naming the fix otherwise."""
    if path is None:
        return
    check_writable(flag, Path(path), outcome=outcome)


def run_cli(main, argv: Sequence[str] | None) -> int:
    """Runs `main(argv)`, printing a JaxMnistError as one paragraph with exit status 2."""
    try:
        return main(argv)
    except JaxMnistError as e:
        print(f"jaxmnist: error: {e}", file=sys.stderr)
        return 2
