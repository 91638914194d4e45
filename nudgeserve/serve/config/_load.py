"""Reading a config file (a Ray Serve config or our settings alone) and rewording msgspec's
validation errors as ``setting = value: what is allowed``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect as mi
import yaml

from nudgeserve.serve.config._base import PATH_RE, Port
from nudgeserve.serve.config._serving import ServeConfig
from nudgeserve.serve.errors import ConfigError

# The Serve application whose ``args`` are our settings in a Ray Serve config file.
APP_IMPORT_PATH = "nudgeserve.serve.ray.app:app_builder"


class HttpOptions(msgspec.Struct, frozen=True, kw_only=True):
    """The parts of Ray Serve's ``http_options`` that ``nudgeserve run`` uses."""

    host: str = "127.0.0.1"
    port: Port = 8000


class LoadedConfig(msgspec.Struct, frozen=True, kw_only=True):
    """A config file: our settings plus Ray Serve's HTTP options."""

    app: ServeConfig
    http: HttpOptions
    source: str


def _walk(raw: Any, path: str) -> tuple[bool, Any]:
    """The value at a msgspec error path (``.a[0].b``) inside ``raw``."""
    value = raw
    for name, index in re.findall(r"\.([A-Za-z0-9_]+)|\[(\d+)\]", path):
        try:
            value = value[name] if name else value[int(index)]
        except (KeyError, IndexError, TypeError):
            return False, None
    return True, value


def _type_at(root: type, raw: Any, path: str) -> Any:
    """msgspec's type info of the setting at error ``path`` (a tagged union resolved by
    the tag found in ``raw``), ``("tag", union)`` for a union's tag field, or None."""
    info: Any = mi.type_info(root)
    value = raw
    steps = re.findall(r"\.([A-Za-z0-9_]+)|\[(\d+)\]", path)
    for i, (name, index) in enumerate(steps):
        if isinstance(info, mi.UnionType):
            structs = [t for t in info.types if isinstance(t, mi.StructType)]
            if name and structs and name == structs[0].tag_field:
                return ("tag", structs)
            tag = value.get(structs[0].tag_field) if structs and isinstance(value, dict) else None
            info = next((t for t in structs if t.tag == tag), None)
            if info is None:
                return None
        if index:
            if not isinstance(info, mi.VarTupleType | mi.ListType):
                return None
            info = info.item_type
        elif isinstance(info, mi.StructType):
            info = next((f.type for f in info.fields if f.name == name), None)
        else:
            return None
        found, value = _walk(raw, "".join(f".{n}" if n else f"[{x}]" for n, x in steps[: i + 1]))
        if not found:
            value = None
    if isinstance(info, mi.UnionType) and isinstance(value, dict):
        structs = [t for t in info.types if isinstance(t, mi.StructType)]
        info = next((t for t in structs if t.tag == value.get(t.tag_field)), info)
    return info


def _allowed(root: type, raw: Any, path: str) -> str:
    """What the setting at ``path`` may be, when it is a fixed set of choices, else ``""``."""
    info = _type_at(root, raw, path)
    if isinstance(info, tuple):
        return ", ".join(str(t.tag) for t in info[1])
    extra = ""
    if isinstance(info, mi.UnionType):
        if any(isinstance(t, mi.FloatType | mi.IntType) for t in info.types):
            extra = " or a number"
        info = next((t for t in info.types if isinstance(t, mi.LiteralType)), None)
    if isinstance(info, mi.LiteralType):
        return ", ".join(str(v) for v in info.values) + extra
    return ""


def _known_fields(root: type, raw: Any, path: str) -> str:
    info = _type_at(root, raw, path)
    if isinstance(info, mi.StructType):
        return ", ".join(f.name for f in info.fields)
    return ""


def _config_error(exc: msgspec.ValidationError, raw: Any, prefix: str, root: type) -> ConfigError:
    """Reword msgspec's error as ``setting = value: what is allowed``."""
    text = str(exc)
    match = PATH_RE.search(text)
    reason = text[: match.start()] if match else text
    path = match.group("path") if match else ""
    setting = (prefix + path).lstrip(".")
    found, value = _walk(raw, path)
    unknown = re.match(r"Object contains unknown field `(?P<f>[^`]+)`", reason)
    if unknown:
        setting = f"{setting}.{unknown.group('f')}".lstrip(".")
        known = _known_fields(root, raw, path)
        hint = f"; known settings here: {known}" if known else ""
        return ConfigError(f"config setting {setting!r} is not a known setting{hint}", setting)
    choices = _allowed(root, raw, path)
    if choices:
        reason = f"{reason}; allowed: {choices}"
    shown = f" = {value!r}" if found and not isinstance(value, dict | list) else ""
    where = f"config {setting}" if setting else "config"
    return ConfigError(f"{where}{shown} is invalid: {reason}", setting)


def parse_config(raw: Any, *, prefix: str = "") -> ServeConfig:
    """Validate our settings (a mapping, e.g. the Serve application's ``args``).

    Raises ConfigError naming the setting, the bad value and what is allowed.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"config must be a mapping of settings, got {type(raw).__name__}")
    try:
        return msgspec.convert(raw, ServeConfig)
    except msgspec.ValidationError as exc:
        raise _config_error(exc, raw, prefix, ServeConfig) from None


def load_config(path: str | Path) -> LoadedConfig:
    """Read and validate a config file (a Ray Serve config or our settings alone)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping, got {type(raw).__name__}")
    if "applications" not in raw:
        return LoadedConfig(app=parse_config(raw), http=HttpOptions(), source=str(path))
    apps = raw["applications"]
    if not isinstance(apps, list):
        raise ConfigError("config applications must be a list", "applications")
    for i, app in enumerate(apps):
        if isinstance(app, dict) and app.get("import_path") == APP_IMPORT_PATH:
            args = app.get("args") or {}
            settings = parse_config(args, prefix=f"applications[{i}].args")
            break
    else:
        raise ConfigError(
            f"config file {path} has no application with import_path {APP_IMPORT_PATH!r}",
            "applications",
        )
    http_raw = raw.get("http_options") or {}
    try:
        http = msgspec.convert(
            {k: v for k, v in http_raw.items() if k in ("host", "port")}, HttpOptions
        )
    except (msgspec.ValidationError, AttributeError) as exc:
        if isinstance(exc, AttributeError):
            raise ConfigError("config http_options must be a mapping", "http_options") from None
        raise _config_error(exc, http_raw, "http_options", HttpOptions) from None
    return LoadedConfig(app=settings, http=http, source=str(path))
