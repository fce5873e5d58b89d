"""Placeholder until the bounded loader lands (hardening-inputs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class YamlFileError(ValueError):
    pass


def load_file(path: str | Path, *, max_bytes: int = 1 << 20) -> Any:
    p = Path(path)
    try:
        with open(p, "rb") as f:
            raw = f.read(max_bytes + 1)
    except OSError as e:
        raise YamlFileError(f"{p}: {e.strerror or e}") from None
    if len(raw) > max_bytes:
        raise YamlFileError(f"{p}: larger than {max_bytes} bytes")
    try:
        return yaml.safe_load(raw.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        raise YamlFileError(f"{p}: not valid YAML: {str(e).splitlines()[0]}") from None
