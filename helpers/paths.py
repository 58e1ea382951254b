"""Where the book keeps its committed tables and its generated data.

Book: {ref}`sec-data-live`

Generated surveys and caches live in a git-ignored folder, ``<repo>/.cache`` by
default; set the environment variable ``STARS_BOOK_CACHE`` to put them elsewhere
(a bigger disk, a shared scratch space).
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

__all__ = ["repo_root", "data_dir", "cache_dir"]


def repo_root() -> Path:
    """The repository's top folder (the one holding ``_config.yml``).

    Book: {ref}`sec-data-live`
    """
    return Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """The folder of small committed tables (``<repo>/data``).

    Book: {ref}`sec-data-live`
    """
    return repo_root() / "data"


def cache_dir(*parts: str, create: bool = True) -> Path:
    """A folder inside the git-ignored cache, created on demand.

    Book: {ref}`sec-data-live`

    Parameters
    ----------
    *parts : str
        Sub-folder names below the cache root.
    create : bool
        Create the folder if it does not exist.
    """
    root = Path(os.environ.get("STARS_BOOK_CACHE", repo_root() / ".cache"))
    path = root.joinpath(*parts)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def replace_atomically(tmp: Path, out: Path) -> None:
    """Rename the finished folder ``tmp`` to ``out``, replacing an older one there.

    Book: {ref}`sec-survey-files`

    The older folder is first renamed aside and removed only after ``tmp`` took its place,
    so a reader never sees a half-written folder under ``out``.
    """
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
