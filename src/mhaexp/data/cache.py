"""Where built data lives, how it is named, and how it appears there: once, whole, under its final name.

Every cache entry (generated datasets, trained BPE tokenizers, tokenized text) is a directory named
``<kind>-<fingerprint>`` in the cache root, built in a private temporary directory beside it and renamed
into place last. A crash leaves no half-written entry under the final name, and two processes building
the same entry at once both end up reading the one that won the rename.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def default_cache_dir() -> Path:
    env = os.environ.get("MHAEXP_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mhaexp"


def cache_root(cache_dir: str | None) -> Path:
    """``cache_dir``, else ``$MHAEXP_CACHE``, else ``~/.cache/mhaexp``."""
    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir()


def fingerprint(settings: Any) -> str:
    """16 hex digits of the SHA-256 of ``settings`` as sorted JSON: what names a cache entry."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def build_once(final: Path, marker: str, build: Callable[[Path], None]) -> Path:
    """``final``, built by ``build(work_dir)`` unless ``final/marker`` exists already.

    ``build`` fills ``work_dir`` (a fresh directory); it is renamed to ``final`` only when complete.
    """
    if (final / marker).exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        out = work / "entry"
        out.mkdir()
        build(out)
        try:
            os.replace(out, final)
        except OSError:  # another process renamed its copy first: use that one
            if not (final / marker).exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final
