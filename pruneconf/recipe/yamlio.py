"""Reading and writing recipe files: round-trip YAML, atomic writes, located errors."""
from __future__ import annotations

import io
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError

from ..errors import ConfigError


def round_trip_yaml() -> YAML:
    """A YAML instance that keeps comments and key order, and refuses duplicate keys."""
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 100
    return yaml


def template_path() -> Path:
    """``templates/recipe.yaml`` from a source checkout, else from the installed data files."""
    for base in (Path(__file__).resolve().parents[2], Path(sys.prefix) / "share" / "pruneconf"):
        candidate = base / "templates" / "recipe.yaml"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("templates/recipe.yaml not found: is pruneconf installed?")


MAX_RECIPE_BYTES = 16 << 20  # a 70B LLM's applied recipe is well under 1 MiB


def load_document(path: str | os.PathLike) -> Any:
    """Parse ``path`` keeping comments; YAML errors become a located :class:`ConfigError`.

    At most :data:`MAX_RECIPE_BYTES` are read, so a huge file or a device such as
    ``/dev/zero`` is refused in bounded time and memory.
    """
    path = str(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_RECIPE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror or exc}", path=path) from None
    if len(raw) > MAX_RECIPE_BYTES:
        raise ConfigError(f"larger than {MAX_RECIPE_BYTES >> 20} MiB: not a recipe", path=path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", path=path) from None
    if "\x00" in text:
        raise ConfigError("binary data (a NUL byte): not a recipe", path=path)
    return parse_document(text, path)


def _refuse_object_syntax(yaml: YAML, text: str, path: str) -> None:
    """Anchors, aliases and tags can build objects or blow up in size: recipes are plain data."""
    from ruamel.yaml.events import AliasEvent

    for event in yaml.parse(text):
        anchor, tag = getattr(event, "anchor", None), getattr(event, "tag", None)
        if anchor is not None or tag is not None or isinstance(event, AliasEvent):
            what = f"tag '{tag}'" if tag is not None else f"anchor or alias '{anchor}'"
            raise ConfigError(f"YAML {what} is not allowed in a recipe: write plain values",
                              path=path, line=event.start_mark.line + 1, column=event.start_mark.column + 1)


def parse_document(text: str, path: str = "<recipe>") -> Any:
    """Parse recipe text keeping comments; anything but plain YAML data is a located error."""
    yaml = round_trip_yaml()
    try:
        _refuse_object_syntax(yaml, text, path)
        return yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        column = mark.column + 1 if mark else None
        problem = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        raise ConfigError(f"invalid YAML: {problem}", path=path, line=line, column=column) from None
    except ConfigError:
        raise
    except Exception as exc:  # ruamel raises a few non-marked errors (e.g. bad tags)
        raise ConfigError(f"invalid YAML: {exc}", path=path) from None


def dump_document(doc: Any) -> str:
    buf = io.StringIO()
    round_trip_yaml().dump(doc, buf)
    return buf.getvalue()


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it into place.

    A crash or error mid-write never leaves a truncated recipe behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
