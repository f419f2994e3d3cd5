"""Provenance a manifest or label row records: the code version, config digests, the models' identity."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from importlib.metadata import version
from pathlib import Path


def code_version() -> str:
    """Package version plus the git commit of the source tree when there is one."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(Path(__file__).parent), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return version("skel-pgt") + (f"+g{sha}" if sha else "")


def digest_of(obj) -> str:
    """Short sha256 of a JSON-serialisable object (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def models_identity(models_dir: str | os.PathLike | None) -> str | None:
    """What a manifest records about the models: the stand-ins' 'synthetic-…' tag or the folder's name (None: unknown)."""
    if models_dir is None:
        return None
    complete = Path(models_dir) / ".complete"
    return complete.read_text().strip() if complete.is_file() else os.path.basename(os.path.normpath(models_dir))
