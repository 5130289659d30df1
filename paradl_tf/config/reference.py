"""The config reference (every key, type, default, meaning), made from the schema itself.

    python -m paradl_tf.config.reference             # print the markdown table
    python -m paradl_tf.config.reference --update docs/configs.md

The table in docs/configs.md is this output; a test fails when they differ.
"""

from __future__ import annotations

import re
import sys
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from paradl_tf.config.loading import union_members
from paradl_tf.config.schema import Config

BEGIN, END = "<!-- config-reference:begin -->", "<!-- config-reference:end -->"


def config_reference() -> str:
    """A markdown table with one row per config key (per kind for tagged sections)."""
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    rows += [f"| `{key}` | {kind} | {default} | {doc} |" for key, kind, default, doc in _rows(Config, "")]
    return "\n".join(rows)


def _rows(cls: type[BaseModel], prefix: str, tag: str = ""):
    for name, field in cls.model_fields.items():
        key = f"{prefix}{name}"
        annotation = field.annotation
        members = [m for m in union_members(annotation) if _is_section(m)]
        if _is_section(annotation) or (len(members) == 1 and "kind" not in members[0].model_fields):
            inner = typing.get_args(annotation)[0] if typing.get_origin(annotation) is typing.Annotated else annotation
            items = "[]" if typing.get_origin(inner) is list else ""  # a list of sections
            yield from _rows(members[0] if members else annotation, f"{key}{items}.", tag)
        elif members:  # a tagged union: kind first, then each kind's own keys
            kinds = [typing.get_args(m.model_fields["kind"].annotation)[0] for m in members]
            default = getattr(field.default, "kind", None)
            yield key + ".kind", " \\| ".join(f"`{k}`" for k in kinds), _fmt(default), _doc(field) or ""
            for member, kind in zip(members, kinds):
                yield key + ".kind", f"`{kind}`", "", _doc_text(member.__doc__)
                yield from _rows(member, key + ".", tag=kind)
        elif name == "kind" and tag:
            continue
        else:
            doc = _doc(field)
            yield (f"{key}" + (f" ({tag})" if tag else "")), _type(annotation), _fmt(field.default), doc


def _is_section(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, BaseModel)


def _doc(field) -> str:
    return _doc_text(field.description)


def _doc_text(text: str | None) -> str:
    return re.sub(r"\s+", " ", text or "").strip().replace("|", "\\|")


def _type(annotation: Any) -> str:
    return _type_name(annotation).replace("|", "\\|")


def _type_name(annotation: Any) -> str:
    """int, str, list of int, int or list of str or null, one of 'a', 'b' ... for the table."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is list:
        return "list of " + _type_name(args[0])
    if origin is dict:
        return "mapping"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _fmt(value: Any) -> str:
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, BaseModel):
        return ""
    return f"`{value!r}`" if value is not None else "`null`"


def update(path: str) -> bool:
    """Rewrite the table between the markers in `path`; True if it changed."""
    text = open(path).read()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    new = text[:start] + "\n" + config_reference() + "\n" + text[end:]
    if new != text:
        open(path, "w").write(new)
    return new != text


if __name__ == "__main__":
    if sys.argv[1:2] == ["--update"]:
        print("updated" if update(sys.argv[2]) else "up to date")
    else:
        print(config_reference())
