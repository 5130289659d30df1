"""Loading a run config: defaults, then the YAML file, then `--set` overrides; then validation.

The order is fixed. Errors are one line naming the file, the key and the fix; the YAML is checked for
size before it is expanded. Provenance records where each value came from.
"""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ValidationError

from paradl_tf.config.schema import Config
from paradl_tf.errors import ConfigError


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Defaults, then the YAML file at `path`, then `key.path=value` overrides; validated.

    Raises ConfigError with a one-line message naming the file and key at fault.
    """
    where = f"{path}: " if path else ""
    file_data = _read_yaml(path) if path else {}
    data = _deep_copy(file_data)
    override_keys = []
    for item in overrides:
        key, value = _parse_override(item, data)
        _set_path(data, key, value)
        override_keys.append(key)
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(where + _format_error(exc, data)) from None
    cfg._source = str(path) if path else None
    cfg._provenance = _provenance(cfg, file_data, override_keys)
    return cfg


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML, as a run writes it to <output_dir>/config.yaml."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


# Limits no honest config comes near (the shipped ones: under 3 KB, 200 nodes, depth 6). Configs come from
# users and every host of a cluster reads one: nested YAML aliases expand exponentially, so a few lines
# could otherwise keep validation busy for minutes.
MAX_CONFIG_BYTES = 256 * 1024
MAX_CONFIG_NODES = 10_000
MAX_CONFIG_DEPTH = 64
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser when PyYAML has it: 10x faster


def _read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    if p.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{p}: config file is larger than {MAX_CONFIG_BYTES // 1024} KiB; is it the right file?")
    text = p.read_text()
    if not text.strip():
        raise ConfigError(f"{p}: config file is empty; a truncated file or a wrong path? (for all defaults, "
                          "give no --config)")
    try:
        _check_size(p, text)
        data = yaml.load(text, Loader=_YAML_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{p}: invalid YAML{line}: {problem}") from None
    if data is None:
        raise ConfigError(f"{p}: config file holds no settings (only comments or null); give no --config "
                          "for all defaults")
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def _check_size(path: Path, text: str) -> None:
    """Refuse YAML that nests deeper than MAX_CONFIG_DEPTH or expands, aliases followed, to more than
    MAX_CONFIG_NODES nodes. Streams the parser's events and stops at the first excess, so the check takes
    time in proportion to the file, never to its expansion."""
    expanded: dict[str, int] = {}  # anchor -> nodes its alias stands for
    open_nodes: list[list] = []  # per open mapping or sequence: [nodes so far, its anchor]
    total = 0
    for event in yaml.parse(text, Loader=_YAML_LOADER):
        if isinstance(event, yaml.CollectionStartEvent):
            open_nodes.append([1, event.anchor])
            total += 1
            if len(open_nodes) > MAX_CONFIG_DEPTH:
                raise ConfigError(f"{path}: YAML nested deeper than {MAX_CONFIG_DEPTH} levels")
            continue
        if isinstance(event, yaml.CollectionEndEvent):
            nodes, anchor = open_nodes.pop()
        elif isinstance(event, yaml.ScalarEvent):
            nodes, anchor = 1, event.anchor
            total += 1
        elif isinstance(event, yaml.AliasEvent):
            nodes, anchor = expanded.get(event.anchor, 1), None
            total += nodes
        else:
            continue
        if anchor:
            expanded[anchor] = nodes
        if open_nodes:
            open_nodes[-1][0] += nodes
        if total > MAX_CONFIG_NODES:
            raise ConfigError(f"{path}: YAML expands to more than {MAX_CONFIG_NODES} nodes (aliases of aliases?); "
                              "a config needs a few hundred")


def _parse_override(item: str, data: dict) -> tuple[str, Any]:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set expects key.path=value. Received: --set {item!r}")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    # Typed by the schema: where a string is expected, keep the text as typed.
    if not isinstance(value, str) and not isinstance(value, (dict, list)) and _expects_string(key, data):
        value = text
    return key, value


def _set_path(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = _default_section(parts[: i + 1], data)
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def _default_section(parts: list[str], data: dict) -> dict:
    """A section that an override creates starts from the default's kind, so `--set model.hidden=[8]` keeps mlp
    (and `--set strategy.placement.devices=4` keeps the default placement kind, auto)."""
    cls, _ = _walk(parts, data)
    field = cls.model_fields.get(parts[-1]) if cls else None
    default = field.default if field else None
    if isinstance(default, BaseModel) and "kind" in type(default).model_fields:
        return {"kind": default.kind}
    return {}


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


# ---------------------------------------------------------------- schema walking
def _section_class(annotation: Any, tag: Any) -> type[BaseModel] | None:
    """The model class of a field's annotation; for a tagged union, the member whose kind is `tag`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for member in union_members(annotation):
        if isinstance(member, type) and issubclass(member, BaseModel):
            kind = member.model_fields.get("kind")
            if kind is not None and tag in typing.get_args(kind.annotation):
                return member
    return None


def union_members(annotation: Any) -> tuple:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is Annotated:
        return union_members(args[0])
    return args


def _kinds(annotation: Any) -> list[str]:
    out = []
    for member in union_members(annotation):
        kind = getattr(member, "model_fields", {}).get("kind")
        if kind is not None:
            out.extend(typing.get_args(kind.annotation))
    return out


def _walk(parts: list[str], data: dict) -> tuple[type[BaseModel] | None, Any]:
    """Follow a key path through the schema: (class holding the last key, annotation of the last key)."""
    cls: type[BaseModel] | None = Config
    node: Any = data
    annotation = None
    for i, part in enumerate(parts):
        if cls is None or part not in cls.model_fields:
            return None, None
        annotation = cls.model_fields[part].annotation
        if i == len(parts) - 1:
            return cls, annotation
        node = node.get(part, {}) if isinstance(node, dict) else {}
        tag = node.get("kind") if isinstance(node, dict) else None
        cls = _section_class(annotation, tag)
    return cls, annotation


def _expects_string(key: str, data: dict) -> bool:
    _, annotation = _walk(key.split("."), data)
    if annotation is None:
        return False
    members = union_members(annotation) or (annotation,)
    return all(
        m is str or (typing.get_origin(m) is Literal and all(isinstance(a, str) for a in typing.get_args(m)))
        for m in members
        if m is not type(None)
    )


# ---------------------------------------------------------------- error messages
_BOOL_HINT = "; YAML reads unquoted yes/no/on/off/true/false as booleans: quote the value, e.g. 'off'"


def _format_error(exc: ValidationError, data: dict) -> str:
    """One line for the first failing key: path, problem, received value, and a fix where one exists."""
    errors = exc.errors()
    first = errors[0]
    if first["type"] == "value_error" and not first["loc"]:
        return str(first["msg"]).removeprefix("Value error, ")
    path = _data_path(first["loc"], data, keep_last=first["type"] in ("missing", "extra_forbidden"))
    dotted = ".".join(str(p) for p in path)
    kind = first["type"]
    value = first.get("input")
    if kind == "extra_forbidden":
        return _unknown_key_message(first["loc"], path, data)
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        section = dotted
        _, annotation = _walk([str(p) for p in path], data)
        choices = ", ".join(_kinds(annotation))
        if kind == "union_tag_not_found":
            return f"{section}.kind is missing; choose one of: {choices}"
        tag = value.get("kind") if isinstance(value, dict) else value
        hint = _BOOL_HINT if isinstance(tag, bool) else ""
        return f"{section}.kind: unknown {section} kind {tag!r}; choose one of: {choices}{hint}"
    if kind == "missing":
        return f"{dotted}: required key is missing"
    messages = [e["msg"] for e in errors if _data_path(e["loc"], data, False) == path]
    problem = " or ".join(dict.fromkeys(_lower_first(m) for m in messages)).replace(" or input should be", " or")
    hint = _BOOL_HINT if isinstance(value, bool) and kind in ("string_type", "literal_error") else ""
    return f"{dotted}: {problem}. Received: {dotted}={value!r} ({type(value).__name__}){hint}"


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _data_path(loc: tuple, data: Any, keep_last: bool) -> list:
    """The part of a pydantic error location that names keys the user wrote (drops union branch tags)."""
    path, node = [], data
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            path.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            path.append(part)
            node = node[part]
        elif keep_last and i == len(loc) - 1:
            path.append(part)
    return path


def _unknown_key_message(loc: tuple, path: list, data: dict) -> str:
    key = str(path[-1])
    parent = [str(p) for p in path[:-1]]
    if parent:
        cls, annotation = _walk(parent, data)
        node = data
        for p in parent:
            node = node.get(p, {}) if isinstance(node, dict) else {}
        section = _section_class(annotation, node.get("kind") if isinstance(node, dict) else None)
        valid = list(section.model_fields) if section else []
    else:
        valid = list(Config.model_fields)
    dotted = ".".join(parent + [key])
    close = difflib.get_close_matches(key, valid, n=1) or [v for v in valid if key in v][:1]
    suggestion = f"; did you mean {close[0]!r}?" if close else "."
    where = ".".join(parent) or "the top level"
    return f"{dotted}: unknown key {key!r} in {where}{suggestion} Valid keys: {', '.join(valid)}"


def _provenance(cfg: Config, file_data: dict, override_keys: list[str]) -> dict[str, str]:
    out = {}
    for key in _leaf_keys(cfg.model_dump(mode="json")):
        if any(key == o or key.startswith(o + ".") for o in override_keys):
            out[key] = "--set"
        elif _has_path(file_data, key.split(".")):
            out[key] = "file"
        else:
            out[key] = "default"
    return out


def _leaf_keys(data: dict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in data.items():
        dotted = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            keys.extend(_leaf_keys(v, dotted + "."))
        else:
            keys.append(dotted)
    return keys


def _has_path(data: Any, parts: list[str]) -> bool:
    for p in parts:
        if not isinstance(data, dict) or p not in data:
            return False
        data = data[p]
    return True
