"""Configuration: where each setting comes from, what a bad one says, `oomtrace config`."""

from __future__ import annotations

import os
import signal
import socket
import tomllib
from pathlib import Path

import pytest

from oomtrace import cli, configfile
from oomtrace.config import ConfigError, Endpoint, Settings
from oomtrace.sigdefs import SIGKILL

SIGTERM = signal.SIGTERM.value


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def load(
    flags: dict[str, object] | None = None,
    config: Path | None = None,
    environ: dict[str, str] | None = None,
) -> configfile.Loaded:
    return configfile.load(flags or {}, config=config, environ=environ or {})


def error_of(
    flags: dict[str, object] | None = None,
    config: Path | None = None,
    environ: dict[str, str] | None = None,
) -> str:
    with pytest.raises(ConfigError) as info:
        load(flags, config, environ)
    return str(info.value)


# -- precedence: defaults < file < environment < flags --------------------------------


def test_each_source_overrides_the_one_before(tmp_path: Path) -> None:
    config = write(tmp_path / "oomtrace.toml", "sink_queue_size = 10\nstats_interval = 5\n")
    env = {"OOMTRACE_SINK_QUEUE_SIZE": "20"}
    flags: dict[str, object] = {"sink_queue_size": 30}

    assert load().settings.sink_queue_size == Settings().sink_queue_size == 4096
    assert load(config=config).settings.sink_queue_size == 10
    assert load(config=config, environ=env).settings.sink_queue_size == 20
    loaded = load(flags, config, env)
    assert loaded.settings.sink_queue_size == 30
    # What no later source names keeps the earlier source's value.
    assert loaded.settings.stats_interval == 5.0
    assert loaded.sources == {
        "sink_queue_size": "flag",
        "stats_interval": f"file {config}",
    }
    assert loaded.settings.config_file == config


def test_lists_from_each_source(tmp_path: Path) -> None:
    config = write(
        tmp_path / "oomtrace.toml",
        'tcp = ["127.0.0.1:5140"]\nsignals = ["KILL", 15]\ncgroup = ["/kubepods"]\n'
        f'output = ["{tmp_path}/events.jsonl"]\npid = [42]\n',
    )
    settings = load(config=config).settings
    assert settings.targets("output") == (tmp_path / "events.jsonl",)
    assert settings.targets("tcp") == (Endpoint("127.0.0.1", 5140),)
    assert settings.signals == {SIGKILL, SIGTERM}
    assert settings.cgroups == ("/kubepods",)
    assert settings.pids == {42}

    env = {
        "OOMTRACE_TCP": "127.0.0.1:1, [::1]:2",
        "OOMTRACE_SIGNALS": "KILL,TERM",
        "OOMTRACE_PID": "7,8",
        "OOMTRACE_STDOUT": "off",
        "OOMTRACE_METRICS_LISTEN": "9808",
    }
    settings = load(environ=env).settings
    assert settings.targets("tcp") == (Endpoint("127.0.0.1", 1), Endpoint("::1", 2))
    assert settings.signals == {SIGKILL, SIGTERM}
    assert settings.pids == {7, 8}
    assert settings.stdout is False
    assert settings.metrics_listen == Endpoint("127.0.0.1", 9808)


def test_flags_parse_into_the_same_names() -> None:
    args = cli.build_parser().parse_args(
        [
            *("--follow", "--tcp", "127.0.0.1:5140", "--tcp", "127.0.0.1:5141", "--pid", "3"),
            *("--no-stdout", "--metrics-listen", "off", "--sink-queue-size", "7"),
            *("--duration", "2"),
        ]
    )
    assert cli.flag_values(args) == {
        "stdout": False,
        "tcp": (Endpoint("127.0.0.1", 5140), Endpoint("127.0.0.1", 5141)),
        "sink_queue_size": 7,
        "metrics_listen": None,
        "pid": frozenset({3}),
        "duration": 2.0,
    }


def test_metrics_off_on_the_command_line_beats_the_file(tmp_path: Path) -> None:
    config = write(tmp_path / "oomtrace.toml", 'metrics_listen = "127.0.0.1:9808"\n')
    assert load(config=config).settings.metrics_listen == Endpoint("127.0.0.1", 9808)
    args = cli.build_parser().parse_args(["--follow", "--metrics-listen", "off"])
    assert load(cli.flag_values(args), config).settings.metrics_listen is None


def test_the_file_is_read_only_when_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(tmp_path / "oomtrace.toml", "")
    assert configfile.config_path(None, {}) is None
    assert configfile.config_path(None, {"OOMTRACE_CONFIG": str(config)}) == config
    assert configfile.config_path(Path("/x.toml"), {"OOMTRACE_CONFIG": str(config)}) == Path(
        "/x.toml"
    )
    # The variable naming the file is not a setting.
    monkeypatch.setenv("OOMTRACE_CONFIG", str(config))
    assert configfile.load({}).warnings == []


def test_unknown_environment_variables_only_warn() -> None:
    loaded = load(environ={"OOMTRACE_TYPO": "1", "OOMTRACE_TEST_READY_TIMEOUT": "600"})
    assert loaded.warnings == [
        "ignored unknown environment variables: OOMTRACE_TEST_READY_TIMEOUT, OOMTRACE_TYPO"
    ]


# -- bad configurations: one line that names the key and where it came from ----------


def test_unknown_key_in_the_file(tmp_path: Path) -> None:
    config = write(tmp_path / "oomtrace.toml", "sink_queue_sz = 5\n")
    assert error_of(config=config) == (
        f"{config}: unknown key 'sink_queue_sz'; did you mean 'sink_queue_size'? "
        "(oomtrace config default lists every key)"
    )


def test_a_table_is_an_unknown_key(tmp_path: Path) -> None:
    config = write(tmp_path / "oomtrace.toml", "[sinks]\ntcp = []\n")
    assert "unknown key 'sinks'" in error_of(config=config)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('sink_queue_size = "5"', "sink_queue_size: must be a whole number, not a string"),
        ("sink_queue_size = 5.5", "sink_queue_size: must be a whole number, not a number"),
        ("stdout = 1", "stdout: must be true or false, not an integer"),
        ('tcp = "127.0.0.1:5140"', 'tcp: must be a list, like ["127.0.0.1:5140"], not a string'),
        ('tcp = ["localhost"]', "tcp: 'localhost' is not HOST:PORT"),
        ("exit_wait = true", "exit_wait: must be a number of seconds, not a boolean"),
        ('signals = ["KILLL"]', "signals: "),
        ("ring_buffer_pages = 1000", "ring_buffer_pages: must be a power of two, not 1000"),
        ('format = "yaml"', "format: 'yaml' is not one of auto, json, text"),
        ("sink_queue_size = 0", "sink_queue_size: must be positive, not 0"),
        ('cgroup = ["kubepods"]', "cgroup: 'kubepods' must be an absolute cgroup path"),
        ('output = ["events.jsonl"]', "output: events.jsonl must be an absolute path"),
    ],
)
def test_wrong_type_or_value_in_the_file(tmp_path: Path, text: str, message: str) -> None:
    config = write(tmp_path / "oomtrace.toml", text + "\n")
    error = error_of(config=config)
    assert error.startswith(f"{config}: {message}"), error
    assert "\n" not in error


def test_not_toml(tmp_path: Path) -> None:
    config = write(tmp_path / "oomtrace.toml", "tcp = [\n")
    assert error_of(config=config).startswith(f"{config}: not valid TOML: ")
    assert error_of(config=tmp_path / "missing.toml") == (
        f"{tmp_path / 'missing.toml'}: cannot read: No such file or directory"
    )


def test_bad_values_name_their_source(tmp_path: Path) -> None:
    assert error_of(environ={"OOMTRACE_SINK_QUEUE_SIZE": "x"}) == (
        "OOMTRACE_SINK_QUEUE_SIZE: 'x' is not a whole number"
    )
    assert error_of(environ={"OOMTRACE_SINK_QUEUE_SIZE": "0"}) == (
        "OOMTRACE_SINK_QUEUE_SIZE: must be positive, not 0"
    )
    assert error_of({"sink_overflow": "drop_all"}).startswith(
        "--sink-overflow: 'drop_all' is not one of"
    )
    config = write(tmp_path / "oomtrace.toml", "exit_wait = 600\n")
    assert error_of(config=config) == (
        f"{config}: exit_wait: must be in (0, 300] seconds, not 600.0"
    )


def test_unreachable_socket_path(tmp_path: Path) -> None:
    config = write(tmp_path / "oomtrace.toml", 'unix_socket = ["/nonexistent/shipper.sock"]\n')
    assert error_of(config=config) == (
        f"{config}: unix_socket: /nonexistent/shipper.sock is unreachable: "
        "directory /nonexistent does not exist"
    )
    not_a_socket = write(tmp_path / "plain", "")
    assert error_of({"unix_socket": (not_a_socket,)}) == (
        f"--unix-socket: {not_a_socket} exists and is not a socket"
    )
    long = tmp_path / ("s" * 120)
    assert "longer than the 107 bytes" in error_of({"unix_socket": (long,)})


def test_a_socket_that_is_not_there_yet_is_fine(tmp_path: Path) -> None:
    # The shipper may start after oomtrace: the sink retries.
    assert load({"unix_socket": (tmp_path / "later.sock",)}).settings.targets("unix_socket")


def test_output_that_cannot_be_a_file(tmp_path: Path) -> None:
    assert error_of({"output": (tmp_path,)}) == f"--output: {tmp_path} is a directory"
    assert error_of({"output": (tmp_path / "no" / "events.jsonl",)}) == (
        f"--output: directory {tmp_path / 'no'} does not exist"
    )


def test_unresolvable_tcp_host() -> None:
    try:
        socket.getaddrinfo("no-such-host.invalid", 1)
    except socket.gaierror:
        pass
    else:  # pragma: no cover - a resolver that answers for .invalid
        pytest.fail("the resolver answers for .invalid names")
    error = error_of({"tcp": (Endpoint("no-such-host.invalid", 5140),)})
    assert error.startswith("--tcp: cannot resolve 'no-such-host.invalid'")


# -- the default file and `oomtrace config` ---------------------------------------------


def test_default_file_changes_nothing_and_names_every_key() -> None:
    text = configfile.default_text()
    assert tomllib.loads(text) == {}
    for name in configfile.KEYS:
        assert f"# {name} = " in text, name
    # Each commented line is valid TOML once uncommented, with the default value
    # (where a key is shown twice, the second line is the default).
    shown: dict[str, object] = {}
    for line in text.splitlines():
        body = line.removeprefix("# ")
        if line.startswith("# ") and body.split(" ", 1)[0] in configfile.KEYS:
            shown |= tomllib.loads(body)
    values = {name: configfile.KEYS[name].parse(raw) for name, raw in shown.items()}
    defaults = Settings()
    for name, value in values.items():
        default = configfile.KEYS[name].value(defaults)
        # pin_dir unset: the service pins in the path shown, a run by hand nowhere.
        assert (
            value == default
            or (name == "cri_endpoint" and value is None)
            or (name == "pin_dir" and default is None)
        ), name


def test_render_reads_back_as_the_same_settings(tmp_path: Path) -> None:
    settings = load(
        {
            "tcp": (Endpoint("127.0.0.1", 5140),),
            "signals": frozenset({SIGKILL, SIGTERM}),
            "metrics_listen": Endpoint("127.0.0.1", 9808),
            "cgroup": ("/kubepods",),
            "sink_overflow": "drop_newest",
        }
    ).settings
    config = write(tmp_path / "oomtrace.toml", configfile.render(settings))
    assert load(config=config).settings == Settings(**{**_fields(settings), "config_file": config})


def _fields(settings: Settings) -> dict[str, object]:
    return {name: getattr(settings, name) for name in Settings.__slots__}


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in list(os.environ):
        if var.startswith("OOMTRACE_"):
            monkeypatch.delenv(var)


@pytest.mark.usefixtures("clean_environment")
def test_config_check_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    default = write(tmp_path / "default.toml", configfile.default_text())
    assert cli.main(["config", "check", str(default)]) == 0
    assert capsys.readouterr().out == f"{default}: valid (sinks: stdout; metrics: off)\n"

    config = write(
        tmp_path / "oomtrace.toml",
        f'stdout = false\noutput = ["{tmp_path}/events.jsonl"]\ntcp = ["127.0.0.1:5140"]\n'
        'metrics_listen = "9808"\n',
    )
    assert cli.main(["config", "check", str(config)]) == 0
    assert capsys.readouterr().out == (
        f"{config}: valid (sinks: file:{tmp_path}/events.jsonl, tcp:127.0.0.1:5140; "
        "metrics: 127.0.0.1:9808)\n"
    )
    # Checking creates nothing.
    assert not (tmp_path / "events.jsonl").exists()


@pytest.mark.usefixtures("clean_environment")
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("bogus = 1", "unknown key 'bogus'"),
        ('sink_queue_size = "big"', "sink_queue_size: must be a whole number, not a string"),
        (
            'unix_socket = ["/nonexistent/s.sock"]',
            "unix_socket: /nonexistent/s.sock is unreachable",
        ),
    ],
)
def test_config_check_invalid_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    config = write(tmp_path / "oomtrace.toml", text + "\n")
    with pytest.raises(SystemExit) as info:
        cli.main(["config", "check", str(config)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"oomtrace: {config}: ") and message in err
    assert err.count("\n") == 1


@pytest.mark.usefixtures("clean_environment")
def test_config_check_ignores_the_environment_and_show_uses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path / "oomtrace.toml", "sink_queue_size = 10\n")
    monkeypatch.setenv("OOMTRACE_SINK_QUEUE_SIZE", "oops")
    # check says what the file says on any machine...
    assert cli.main(["config", "check", str(config)]) == 0
    capsys.readouterr()
    # ...show is what the agent would run with, here.
    with pytest.raises(SystemExit):
        cli.main(["config", "show", str(config)])
    assert (
        capsys.readouterr().err
        == "oomtrace: OOMTRACE_SINK_QUEUE_SIZE: 'oops' is not a whole number\n"
    )
    monkeypatch.setenv("OOMTRACE_SINK_QUEUE_SIZE", "20")
    assert cli.main(["config", "show", str(config)]) == 0
    assert "sink_queue_size = 20\n" in capsys.readouterr().out


@pytest.mark.usefixtures("clean_environment")
def test_config_default_prints_the_shipped_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["config", "default"]) == 0
    assert capsys.readouterr().out == configfile.default_text()


@pytest.mark.usefixtures("clean_environment")
def test_agent_start_with_a_bad_file_exits_2_before_anything_else(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path / "oomtrace.toml", "tier = 3\n")
    with pytest.raises(SystemExit) as info:
        cli.main(["--follow", "--config", str(config)])
    assert info.value.code == 2
    assert (
        capsys.readouterr().err == f"oomtrace: {config}: tier: must be a string, not an integer\n"
    )


def test_live_and_restart_keys() -> None:
    live = configfile.live_keys()
    assert {"output", "tcp", "unix_socket", "stdout", "cgroup", "pid", "sink_queue_size"} <= live
    assert not {"signals", "tier", "metrics_listen", "ring_buffer_pages"} & live
    old = Settings()
    new = Settings(sinks=(("tcp", (Endpoint("127.0.0.1", 1),)),), tier="tracepoint")
    assert configfile.changed_keys(old, new) == ["tcp", "tier"]


# -- [causes] ---------------------------------------------------------------------------


def test_causes_table(tmp_path: Path) -> None:
    config = write(
        tmp_path / "oomtrace.toml",
        '[causes]\n"my-oom-guard" = "userspace_oom_killer"\n"deployer" = "runtime_stop"\n',
    )
    settings = load(config=config).settings
    assert settings.causes == (
        ("deployer", "runtime_stop"),
        ("my-oom-guard", "userspace_oom_killer"),
    )
    again = write(tmp_path / "shown.toml", configfile.render(settings))
    assert load(config=again).settings.causes == settings.causes


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[causes]\n"guard" = "oom"', "causes: 'guard': 'oom' is not a cause (one of: oom_kill, "),
        ('[causes]\n"guard" = 3', "causes: 'guard': 3 is not a cause"),
        (
            '[causes]\n"a-very-long-guard" = "manual"',
            "causes: 'a-very-long-guard' is longer than 15 bytes: the kernel cuts every comm",
        ),
        ('[causes]\n"" = "manual"', "causes: a sender's comm cannot be empty"),
        ('[causes]\n"a\\u0000b" = "manual"', "causes: "),
        ('causes = "manual"', "causes: must be a table of sender comm = cause"),
    ],
)
def test_bad_causes_stop_start_up(tmp_path: Path, text: str, message: str) -> None:
    config = write(tmp_path / "oomtrace.toml", text + "\n")
    error = error_of(config=config)
    assert error.startswith(f"{config}: {message}"), error
    assert "\n" not in error


def test_causes_are_not_read_from_the_environment() -> None:
    error = error_of(environ={"OOMTRACE_CAUSES": "x=manual"})
    assert "the [causes] table is set in the configuration file only" in error


def test_huge_or_binary_files_are_refused_before_parsing(tmp_path: Path) -> None:
    huge = tmp_path / "huge.toml"
    huge.write_text("# " + "x" * (configfile.CONFIG_MAX_BYTES + 10) + "\n")
    assert error_of(config=huge) == f"{huge}: larger than 1024 KiB; not a configuration file"
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\x7fELF\x02\x01\x01\0\0\0")
    assert error_of(config=binary) == f"{binary}: holds NUL bytes; not a text file"
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'cri_endpoint = "caf\xe9"\n')
    assert error_of(config=latin) == f"{latin}: not a UTF-8 text file"


# -- kubelet_config -----------------------------------------------------------------------


def test_kubelet_config_from_each_source(tmp_path: Path) -> None:
    assert load().settings.kubelet_config == Path("/var/lib/kubelet/config.yaml")
    config = write(tmp_path / "oomtrace.toml", 'kubelet_config = "/etc/kubernetes/kubelet.yaml"\n')
    assert load(config=config).settings.kubelet_config == Path("/etc/kubernetes/kubelet.yaml")
    env = {"OOMTRACE_KUBELET_CONFIG": "/srv/kubelet.yaml"}
    assert load(config=config, environ=env).settings.kubelet_config == Path("/srv/kubelet.yaml")
    args = cli.build_parser().parse_args(["--follow", "--kubelet-config", "/x/config.yaml"])
    assert cli.flag_values(args) == {"kubelet_config": Path("/x/config.yaml")}
    loaded = load(cli.flag_values(args), config, env)
    assert loaded.settings.kubelet_config == Path("/x/config.yaml")
    assert loaded.sources["kubelet_config"] == "flag"
    # A file that is not there yet is a start-up fact, not a settings error: the
    # agent says so in its log and writes node.memory without thresholds.
    assert load({"kubelet_config": tmp_path / "absent.yaml"}).settings.kubelet_config


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('kubelet_config = ""', "kubelet_config: must be a file's path, not empty"),
        ("kubelet_config = 1", "kubelet_config: must be a string, not an integer"),
        ('kubelet_config = "config.yaml"', "kubelet_config: config.yaml must be an absolute path"),
    ],
)
def test_bad_kubelet_config_in_the_file(tmp_path: Path, text: str, message: str) -> None:
    config = write(tmp_path / "oomtrace.toml", text + "\n")
    assert error_of(config=config) == f"{config}: {message}"


def test_bad_kubelet_config_in_the_environment() -> None:
    assert error_of(environ={"OOMTRACE_KUBELET_CONFIG": ""}) == (
        "OOMTRACE_KUBELET_CONFIG: must be a file's path, not empty"
    )
    assert error_of(environ={"OOMTRACE_KUBELET_CONFIG": "kubelet/config.yaml"}) == (
        "OOMTRACE_KUBELET_CONFIG: kubelet/config.yaml must be an absolute path"
    )


@pytest.mark.usefixtures("clean_environment")
@pytest.mark.parametrize(
    ("value", "message"),
    [("", "must be a file's path, not empty"), ("kc.yaml", "kc.yaml must be an absolute path")],
)
def test_bad_kubelet_config_flag_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], value: str, message: str
) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--follow", "--kubelet-config", value])
    assert info.value.code == 2
    # After argparse's usage, as every flag's error.
    last = capsys.readouterr().err.splitlines()[-1]
    assert last == f"oomtrace: error: argument --kubelet-config: {message}"
