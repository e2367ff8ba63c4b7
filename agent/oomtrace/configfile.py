"""Where settings come from: defaults < the TOML file < OOMTRACE_* environment < flags.

Every setting has one name used three ways: ``ring_buffer_pages`` in the file,
``OOMTRACE_RING_BUFFER_PAGES`` in the environment, ``--ring-buffer-pages`` on the
command line. A value that is wrong stops start-up with one line that names the
setting and where the value came from.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final

from oomtrace.config import (
    METRICS_DEFAULT_HOST,
    ConfigError,
    Endpoint,
    Settings,
    check_resolvable,
    parse_endpoint,
)
from oomtrace.sigdefs import parse_signal, parse_signal_list
from oomtrace.sinks.kinds import BY_KEY, SINK_KINDS

ENV_PREFIX: Final = "OOMTRACE_"
CONFIG_ENV: Final = "OOMTRACE_CONFIG"
DEFAULT_PATH: Final = Path("/etc/oomtrace/oomtrace.toml")

Parser = Callable[[object], object]
EnvParser = Callable[[str], object]
# Key.field of a sink kind's key: its targets are in Settings.sinks, by key.
SINKS: Final = "sinks"


@dataclass(frozen=True, slots=True)
class Key:
    name: str
    field: str
    parse: Parser  # a TOML value (already typed by TOML) -> the Settings value
    parse_env: EnvParser  # an environment string -> the Settings value
    live: bool  # SIGHUP applies it; otherwise a change needs a restart
    show: Callable[[object], str] | None = None  # as TOML, when not a plain value

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def value(self, settings: Settings) -> object:
        if self.field == SINKS:
            return settings.targets(self.name)
        return getattr(settings, self.field)


# -- value parsers: each raises ValueError with a message that completes "KEY: " --


def _type_name(value: object) -> str:
    names = {str: "a string", bool: "a boolean", int: "an integer", float: "a number"}
    names |= {list: "a list", dict: "a table"}
    return names.get(type(value), type(value).__name__)


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {_type_name(value)}")
    return value


def _optional_string(value: object) -> str | None:
    return _string(value) or None


def _optional_path(value: object) -> Path | None:
    return file_path(value) if _string(value) else None


def file_path(value: object) -> Path:
    text = _string(value)
    if not text:
        raise ValueError("must be a file's path, not empty")
    if "\0" in text:
        raise ValueError("must be a file's path, without NUL")
    # The agent runs from / under systemd and from anywhere by hand: a relative
    # path would name a different file in each.
    if not text.startswith("/"):
        raise ValueError(f"{text} must be an absolute path")
    return Path(text)


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, not {_type_name(value)}")
    return value


def _integer(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be a whole number, not {_type_name(value)}")
    return value


def _seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a number of seconds, not {_type_name(value)}")
    return float(value)


def _list_of(item: Parser, example: str) -> Parser:
    def parse(value: object) -> tuple[object, ...]:
        if not isinstance(value, list):
            raise ValueError(f"must be a list, like {example}, not {_type_name(value)}")
        return tuple(item(v) for v in value)

    return parse


def _target(parse: Callable[[str], object]) -> Parser:
    return lambda value: parse(_string(value))


def _causes(value: object) -> tuple[tuple[str, object], ...]:
    """The table as (comm, cause) pairs; Settings.validate checks each pair."""
    if not isinstance(value, dict):
        raise ValueError(
            f'must be a table of sender comm = cause, like [causes] "my-guard" = '
            f'"userspace_oom_killer", not {_type_name(value)}'
        )
    return tuple(sorted(value.items()))


def _env_causes(_text: str) -> tuple[tuple[str, str], ...]:
    # No environment form: a comm may hold any byte but NUL, commas and "=" too,
    # so no one-line encoding of the table is unambiguous; and the table is a
    # site's policy that SIGHUP re-reads from the file, which a variable fixed
    # at start could never follow. Set, it is refused rather than ignored, since
    # whoever set it expects it to apply.
    raise ValueError("the [causes] table is set in the configuration file only")


def _show_causes(value: object) -> str:
    assert isinstance(value, tuple)
    return "{" + ", ".join(f"{_toml_value(c)} = {_toml_value(v)}" for c, v in value) + "}"


def _listen(value: object) -> Endpoint | None:
    text = _string(value)
    return parse_endpoint(text, default_host=METRICS_DEFAULT_HOST) if text else None


def _signals(value: object) -> frozenset[int]:
    if isinstance(value, str):
        return parse_signal_list(value)
    if isinstance(value, list):
        numbers = set()
        for v in value:
            if isinstance(v, bool) or not isinstance(v, str | int):
                raise ValueError(f"must list signal names or numbers, not {_type_name(v)}")
            numbers.add(parse_signal(str(v)))
        return frozenset(numbers)
    raise ValueError(f'must be a list like ["KILL", "TERM"], not {_type_name(value)}')


def _env_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean (true/false, 1/0, yes/no)")


def _env_number(kind: type[int] | type[float]) -> EnvParser:
    def parse(text: str) -> object:
        try:
            return kind(text.strip())
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise ValueError(f"{text!r} is not {what}") from None

    return parse


def _env_list(item: Callable[[str], object]) -> EnvParser:
    return lambda text: tuple(item(part.strip()) for part in text.split(",") if part.strip())


_CGROUPS = _list_of(_string, '["/kubepods"]')


def _pids(value: object) -> frozenset[int]:
    if not isinstance(value, list):
        raise ValueError(f"must be a list, like [4242], not {_type_name(value)}")
    return frozenset(_integer(v) for v in value)


def _env_pids(text: str) -> frozenset[int]:
    parse = _env_number(int)
    return frozenset(int(str(parse(part))) for part in text.split(",") if part.strip())


KEYS: Final[dict[str, Key]] = {
    k.name: k
    for k in (
        Key("signals", "signals", _signals, parse_signal_list, live=False),
        Key("format", "format", _string, str.strip, live=True),
        Key("stdout", "stdout", _boolean, _env_bool, live=True),
        *(
            # Sinks come and go on SIGHUP.
            Key(
                kind.key,
                SINKS,
                _list_of(_target(kind.parse), kind.example),
                _env_list(kind.parse),
                live=True,
            )
            for kind in SINK_KINDS
        ),
        Key("sink_queue_size", "sink_queue_size", _integer, _env_number(int), live=True),
        Key("sink_overflow", "sink_overflow", _string, str.strip, live=True),
        Key("metrics_listen", "metrics_listen", _listen, _listen, live=False),
        Key("pid", "pids", _pids, _env_pids, live=True),
        Key("cgroup", "cgroups", _CGROUPS, _env_list(_string), live=True),
        Key("tier", "tier", _string, str.strip, live=False),
        Key("exit_wait", "exit_wait", _seconds, _env_number(float), live=False),
        Key("ring_buffer_pages", "ringbuf_pages", _integer, _env_number(int), live=False),
        Key("record_queue_size", "queue_size", _integer, _env_number(int), live=False),
        Key("stats_interval", "stats_interval", _seconds, _env_number(float), live=False),
        Key(
            "keep_tracing_when_stopped",
            "keep_tracing_when_stopped",
            _boolean,
            _env_bool,
            live=False,
        ),
        Key("pin_dir", "pin_dir", _optional_path, _optional_path, live=False),
        Key("state_dir", "state_dir", file_path, file_path, live=False),
        Key("log_level", "log_level", _string, str.strip, live=False),
        Key("log_format", "log_format", _string, str.strip, live=False),
        Key("cri_endpoint", "cri_endpoint", _optional_string, _optional_string, live=False),
        Key("kubelet_config", "kubelet_config", file_path, file_path, live=False),
        Key("node_name", "node_name", _optional_string, _optional_string, live=False),
        Key("causes", "causes", _causes, _env_causes, live=True, show=_show_causes),
    )
}
_BY_FIELD: Final = {k.field: k for k in KEYS.values() if k.field != SINKS}
# Settings that only make sense on a command line, never in a service's file.
FLAG_ONLY: Final = ("duration", "count")


@dataclass(frozen=True, slots=True)
class Loaded:
    settings: Settings
    sources: dict[str, str]  # key -> "file", "environment" or "flag"
    warnings: list[str]  # things to log once logging is set up


def default_text() -> str:
    """The commented default configuration file that `scripts/install` puts in place."""
    return resources.files("oomtrace").joinpath("oomtrace.toml").read_text()


def config_path(flag: Path | None, environ: Mapping[str, str]) -> Path | None:
    """The file to read: --config, else $OOMTRACE_CONFIG, else none (a file is
    only read when named, so an interactive run never picks up the service's sinks)."""
    if flag is not None:
        return flag
    named = environ.get(CONFIG_ENV, "").strip()
    return Path(named) if named else None


# The commented default is about 4 KiB; a file of a megabyte is a mistake (a log
# or a binary named by --config), and is refused before it is parsed. TOML has no
# aliases or references, so what is read is all that is parsed.
CONFIG_MAX_BYTES: Final = 1 << 20


def read_file(path: Path) -> dict[str, object]:
    """The file's settings, typed; unknown keys and wrong types raise ConfigError."""
    try:
        with path.open("rb") as f:
            raw = f.read(CONFIG_MAX_BYTES + 1)
        if len(raw) > CONFIG_MAX_BYTES:
            raise ConfigError(
                f"{path}: larger than {CONFIG_MAX_BYTES // 1024} KiB; not a configuration file"
            )
        if b"\0" in raw:
            raise ConfigError(f"{path}: holds NUL bytes; not a text file")
        data = tomllib.loads(raw.decode("utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    values: dict[str, object] = {}
    for name, raw in data.items():
        key = KEYS.get(name)
        if key is None:
            raise ConfigError(f"{path}: {_unknown(name)}")
        try:
            values[name] = key.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{path}: {name}: {exc}") from None
    return values


def read_environment(environ: Mapping[str, str]) -> tuple[dict[str, object], list[str]]:
    values: dict[str, object] = {}
    unknown: list[str] = []
    by_env = {k.env: k for k in KEYS.values()}
    for var, text in environ.items():
        if not var.startswith(ENV_PREFIX) or var == CONFIG_ENV:
            continue
        key = by_env.get(var)
        if key is None:
            # Not fatal: the environment is shared with other tools and scripts.
            unknown.append(var)
            continue
        try:
            values[key.name] = key.parse_env(text)
        except ValueError as exc:
            raise ConfigError(f"{var}: {exc}") from None
    return values, sorted(unknown)


def load(
    flags: Mapping[str, object],
    *,
    config: Path | None = None,
    environ: Mapping[str, str] | None = None,
    use_environment: bool = True,
) -> Loaded:
    """Settings from every source. ``flags`` maps key names (and FLAG_ONLY names)
    to values the command line gave explicitly."""
    env = os.environ if environ is None else environ
    merged: dict[str, object] = {}
    sources: dict[str, str] = {}
    warnings: list[str] = []
    if config is not None:
        _merge(merged, sources, read_file(config), f"file {config}")
    if use_environment:
        values, unknown = read_environment(env)
        _merge(merged, sources, values, "environment")
        if unknown:
            warnings.append(f"ignored unknown environment variables: {', '.join(unknown)}")
    _merge(merged, sources, dict(flags), "flag")
    fields = {KEYS[n].field if n in KEYS else n: v for n, v in merged.items() if n not in BY_KEY}
    # In declaration order, and without kinds that have no target, so that
    # settings meaning the same sinks compare equal.
    sinks = ((kind.key, merged.get(kind.key)) for kind in SINK_KINDS)
    fields[SINKS] = tuple((key, targets) for key, targets in sinks if targets)
    try:
        settings = Settings(**fields, config_file=config).validate()  # type: ignore[arg-type]
        for kind in SINK_KINDS:
            for target in settings.targets(kind.key):
                _check(kind.key, kind.check, target)
        if settings.metrics_listen is not None:
            _check("metrics_listen", check_resolvable, settings.metrics_listen)
    except ConfigError as exc:
        raise ConfigError(_attributed(exc, sources)) from None
    return Loaded(settings, sources, warnings)


def _check(key: str, check: Callable[[Any], None], value: object) -> None:
    try:
        check(value)
    except ValueError as exc:
        raise ConfigError(str(exc), key=key) from None


def live_keys() -> frozenset[str]:
    return frozenset(k.name for k in KEYS.values() if k.live)


def changed_keys(old: Settings, new: Settings) -> list[str]:
    return [k.name for k in KEYS.values() if k.value(old) != k.value(new)]


def render(settings: Settings) -> str:
    """The effective settings as TOML (what `oomtrace config show` prints)."""
    lines = []
    for key in KEYS.values():
        show = key.show or _toml_value
        lines.append(f"{key.name} = {show(key.value(settings))}")
    return "\n".join(lines) + "\n"


# -- helpers --------------------------------------------------------------------


def _merge(
    merged: dict[str, object], sources: dict[str, str], values: dict[str, object], where: str
) -> None:
    for name, value in values.items():
        merged[name] = value
        sources[name] = where


def _attributed(exc: ConfigError, sources: dict[str, str]) -> str:
    """Prefixes a validation error with where the bad value came from."""
    name = exc.key
    if name is None:
        return str(exc)
    key = KEYS.get(name) or _BY_FIELD.get(name)
    if key is None:
        return f"--{name.replace('_', '-')}: {exc.detail}" if name in FLAG_ONLY else str(exc)
    where = sources.get(key.name, "default")
    if where == "flag":
        return f"{key.flag}: {exc.detail}"
    if where == "environment":
        return f"{key.env}: {exc.detail}"
    if where.startswith("file "):
        return f"{where[5:]}: {key.name}: {exc.detail}"
    return f"{key.name}: {exc.detail}"


def _unknown(name: str) -> str:
    close = difflib.get_close_matches(name, KEYS, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown key {name!r}{hint} (oomtrace config default lists every key)"


def _toml_value(value: object) -> str:
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Endpoint | Path):
        return _toml_value(str(value))
    if isinstance(value, frozenset | tuple | list):
        items = sorted(value) if isinstance(value, frozenset) else list(value)
        return "[" + ", ".join(_toml_value(v) for v in items) + "]"
    return '"' + "".join(_toml_char(c) for c in str(value)) + '"'


def _toml_char(c: str) -> str:
    # A comm or a path may hold any character; a TOML basic string takes the
    # quote, the backslash and the control characters only escaped.
    if c in '"\\':
        return "\\" + c
    if c < " " or c == "\x7f":
        return f"\\u{ord(c):04x}"
    return c
