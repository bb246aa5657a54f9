"""JAX's persistent compilation cache: the second run of a command loads its programs instead of compiling them.

The command-line tools turn it on before anything compiles; from Python, call `enable()` first.
Where it lives: `--cache-dir DIR`, else `$JAXMNIST_CACHE_DIR`, else `$XDG_CACHE_HOME/jaxmnist/xla`
(`~/.cache/jaxmnist/xla` by default); `none` turns it off. JAX keys every entry by the program, the
jax and jaxlib versions, the devices and the compile options, so an entry made by another version
or for another device is never used. With a size limit set, JAX takes a file lock around each
read and write, so runs sharing the folder never read each other's half-written entries; an entry
it cannot read (a corrupt file) is a warning and a compilation, not a failure. A folder that
cannot be created or written turns the cache off with a one-line warning.
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path

import jax

CACHE_ENV = "JAXMNIST_CACHE_DIR"
MAX_BYTES = 1 << 30  # least recently used entries go beyond this; the recipes' programs take ~30 MB
# Every program, however small: the few that still run op by op (seeding, the first shuffle) compile in
# 20-60 ms each and load in ~2 ms; with JAX's default (1 s) they cost a warm `gap` start 0.15 s.
MIN_COMPILE_SECONDS = 0.0


def cache_dir(setting: str | None = None, environ: Mapping[str, str] = os.environ) -> Path | None:
    """The cache folder that `setting` (a --cache-dir value), the environment or the default names; None: off."""
    if setting is None:
        setting = environ.get(CACHE_ENV)
    if setting is not None:
        return None if setting.strip().lower() in ("", "none") else Path(setting).expanduser()
    return Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jaxmnist" / "xla"


def enable(setting: str | None = None, environ: Mapping[str, str] = os.environ) -> Path | None:
    """Turns the persistent compilation cache on in the folder `cache_dir` names; returns it (None: off)."""
    path = cache_dir(setting, environ)
    if path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        print(f"jaxmnist: warning: the compilation cache folder {path} cannot be used ({e.strerror or e}): "
              f"compiling from scratch. Set {CACHE_ENV} (or --cache-dir) to a writable folder, or to none.",
              file=sys.stderr)
        return None
    _summarise_unreadable_entries(path)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    return path


def _summarise_unreadable_entries(path: Path) -> None:
    """JAX warns about each cache entry it cannot read (and compiles the program anew) in a two-line
    traceback-like form; say it once, in one line that names the fix."""
    show, told = warnings.showwarning, []
    if getattr(show, "jaxmnist", False):  # installed by an earlier call in this process
        return

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if not str(message).startswith("Error reading persistent compilation cache entry"):
            return show(message, category, filename, lineno, file, line)
        if not told:
            told.append(True)
            print(f"jaxmnist: warning: the compilation cache {path} holds entries JAX cannot read (corrupt or "
                  f"half-written): those programs are compiled anew. Delete the folder to clear them.",
                  file=sys.stderr)

    showwarning.jaxmnist = True
    warnings.showwarning = showwarning
