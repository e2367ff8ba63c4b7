"""oomtrace.kubeletconfig: memory eviction thresholds from KubeletConfiguration files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from oomtrace.host.nodememory import NodeMemory, read
from oomtrace.kubeletconfig import (
    ALLOCATABLE_MEMORY_AVAILABLE,
    MEMORY_AVAILABLE,
    EvictionThresholds,
    Threshold,
    crossed,
    load,
    parse,
    parse_duration,
    parse_quantity,
)

Mi = 1024**2
Gi = 1024**3
V2 = Path(__file__).resolve().parents[1] / "data" / "nodememory" / "v2"

HEADER = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n"

# What kubeadm writes, trimmed of the settings that play no part here: no eviction settings.
KUBEADM = (
    HEADER
    + """\
authentication:
  anonymous:
    enabled: false
  webhook:
    cacheTTL: 0s
    enabled: true
  x509:
    clientCAFile: /etc/kubernetes/pki/ca.crt
cgroupDriver: systemd
clusterDNS:
- 10.96.0.10
clusterDomain: cluster.local
containerRuntimeEndpoint: ""
cpuManagerReconcilePeriod: 0s
evictionPressureTransitionPeriod: 0s
fileCheckFrequency: 0s
healthzBindAddress: 127.0.0.1
healthzPort: 10248
rotateCertificates: true
staticPodPath: /etc/kubernetes/manifests
"""
)


def hard(signal: str, quantity: int | None = None, percentage: float | None = None) -> Threshold:
    return Threshold(signal, "hard", quantity, percentage, None)


def soft(
    signal: str, grace: float, quantity: int | None = None, percentage: float | None = None
) -> Threshold:
    return Threshold(signal, "soft", quantity, percentage, grace)


def thresholds(text: str) -> list[Threshold]:
    result = parse(text)
    assert result.warnings == []
    assert result.thresholds is not None
    return result.thresholds


def warning(text: str) -> str:
    result = parse(text, source="config.yaml")
    assert result.thresholds is None
    assert len(result.warnings) == 1
    return result.warnings[0]


# -- quantities and durations --


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100Mi", 100 * Mi),
        ("1Gi", Gi),
        ("1.5Gi", 1536 * Mi),
        ("1Ki", 1024),
        ("2Ti", 2 * 1024**4),
        ("1Ei", 1024**6),
        ("500M", 500_000_000),
        ("1k", 1000),
        ("1G", 10**9),
        ("1e9", 10**9),
        ("1E3", 1000),
        ("12e+2", 1200),
        ("1E", 10**18),  # a bare E is exa, not an exponent
        ("104857600", 100 * Mi),
        ("+1Mi", Mi),
        ("0.5", 1),  # Quantity.Value() rounds up to a whole byte
        (".5Ki", 512),
        ("0", 0),
    ],
)
def test_parse_quantity(text: str, expected: int) -> None:
    assert parse_quantity(text) == expected


@pytest.mark.parametrize(
    "text",
    ["100MB", "1K", "1mi", "ten", "", " 100Mi", "100Mi ", "Mi", "1.2.3", "1e", "1e999", "8Ei"],
)
def test_parse_quantity_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not a quantity|out of range"):
        parse_quantity(text)


def test_parse_quantity_rejects_negative_and_milli() -> None:
    with pytest.raises(ValueError, match="negative"):
        parse_quantity("-1Mi")
    with pytest.raises(ValueError, match="thousandths"):
        parse_quantity("100m")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", 90.0),
        ("1m30s", 90.0),
        ("1.5h", 5400.0),
        ("300ms", 0.3),
        ("2h45m", 9900.0),
        ("0", 0.0),
        ("0s", 0.0),
        ("-1m", -60.0),
    ],
)
def test_parse_duration(text: str, expected: float) -> None:
    assert parse_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["90", "", "s", "1d", "-", "1m30", ".s", "1 m"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


# -- the file --


def test_no_eviction_hard_takes_the_kubelet_default() -> None:
    result = parse(KUBEADM)
    assert result == EvictionThresholds(
        thresholds=[hard(MEMORY_AVAILABLE, 100 * Mi), hard(ALLOCATABLE_MEMORY_AVAILABLE, 100 * Mi)],
        warnings=[],
        max_pod_grace_period_s=0,
        pressure_transition_period_s=300.0,  # "0s" is unset: the 5m default
    )


def test_hard_quantity_is_copied_to_allocatable() -> None:
    text = HEADER + "evictionHard:\n  memory.available: 1Gi\n  nodefs.available: 10%\n"
    assert thresholds(text) == [hard(MEMORY_AVAILABLE, Gi), hard(ALLOCATABLE_MEMORY_AVAILABLE, Gi)]


def test_hard_percentage() -> None:
    text = HEADER + "evictionHard:\n  memory.available: 10%\nenforceNodeAllocatable: []\n"
    assert thresholds(text) == [hard(MEMORY_AVAILABLE, percentage=10.0)]


def test_eviction_hard_without_memory_has_no_memory_threshold() -> None:
    # Naming any signal replaces the defaults: memory.available is then not watched.
    text = HEADER + "evictionHard:\n  nodefs.available: 5%\n"
    assert thresholds(text) == []
    assert thresholds(HEADER + "evictionHard: {}\n") == []


def test_merge_default_eviction_settings() -> None:
    text = HEADER + "mergeDefaultEvictionSettings: true\nevictionHard:\n  nodefs.available: 5%\n"
    assert thresholds(text) == [
        hard(MEMORY_AVAILABLE, 100 * Mi),
        hard(ALLOCATABLE_MEMORY_AVAILABLE, 100 * Mi),
    ]
    text = HEADER + "mergeDefaultEvictionSettings: true\nevictionHard:\n  memory.available: 1Gi\n"
    assert thresholds(text)[0] == hard(MEMORY_AVAILABLE, Gi)


def test_null_eviction_hard_is_unset() -> None:
    assert thresholds(HEADER + "evictionHard:\n")[0] == hard(MEMORY_AVAILABLE, 100 * Mi)


def test_no_allocatable_copy_without_pods_enforcement() -> None:
    text = HEADER + "enforceNodeAllocatable: [system-reserved]\n"
    assert thresholds(text) == [hard(MEMORY_AVAILABLE, 100 * Mi)]


def test_explicit_allocatable_threshold() -> None:
    text = HEADER + (
        "evictionHard:\n  memory.available: 200Mi\n  allocatableMemory.available: 500Mi\n"
    )
    assert thresholds(text) == [
        hard(MEMORY_AVAILABLE, 200 * Mi),
        hard(ALLOCATABLE_MEMORY_AVAILABLE, 500 * Mi),
        hard(ALLOCATABLE_MEMORY_AVAILABLE, 200 * Mi),
    ]


def test_zero_and_hundred_percent_are_ignored() -> None:
    text = (
        HEADER + "evictionHard:\n  memory.available: 0%\nevictionSoft:\n  memory.available: 100%\n"
    )
    assert thresholds(text) == []


def test_soft_thresholds_with_grace_periods() -> None:
    text = (
        HEADER
        + """\
evictionHard:
  memory.available: 100Mi
evictionSoft:
  memory.available: 1.5Gi
  allocatableMemory.available: 10%
  nodefs.available: 15%
evictionSoftGracePeriod:
  memory.available: 1m30s
  allocatableMemory.available: 2m
  nodefs.available: 1m
evictionMaxPodGracePeriod: 60
evictionPressureTransitionPeriod: 30s
"""
    )
    result = parse(text)
    assert result == EvictionThresholds(
        thresholds=[
            hard(MEMORY_AVAILABLE, 100 * Mi),
            hard(ALLOCATABLE_MEMORY_AVAILABLE, 100 * Mi),
            soft(MEMORY_AVAILABLE, 90.0, quantity=1536 * Mi),
            soft(ALLOCATABLE_MEMORY_AVAILABLE, 120.0, percentage=10.0),
        ],
        warnings=[],
        max_pod_grace_period_s=60,
        pressure_transition_period_s=30.0,
    )


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ("evictionSoft:\n  memory.available: 1Gi\n", "has no grace period"),
        (
            "evictionSoft:\n  memory.available: 1Gi\n"
            "evictionSoftGracePeriod:\n  nodefs.available: 1m\n",
            "has no grace period",
        ),
        (
            "evictionSoft:\n  memory.available: 1Gi\n"
            "evictionSoftGracePeriod:\n  memory.available: 90\n",
            "must be a duration",
        ),
        (
            "evictionSoft:\n  memory.available: 1Gi\n"
            "evictionSoftGracePeriod:\n  memory.available: 1d\n",
            "is not a duration",
        ),
        (
            "evictionSoft:\n  memory.available: 1Gi\n"
            "evictionSoftGracePeriod:\n  memory.available: -1m\n",
            "is negative",
        ),
        ("evictionHard:\n  memory.available: 100MB\n", r"evictionHard\[memory.available\]"),
        ("evictionHard:\n  memory.available: 104857600\n", "must be a string"),
        ("evictionHard:\n  memory.available: -1Gi\n", "negative"),
        ("evictionHard:\n  memory.available: '0'\n", "must be positive"),
        ("evictionHard:\n  memory.available: 100m\n", "thousandths"),
        ("evictionHard:\n  memory.available: 150%\n", "between 0% and 100%"),
        ("evictionHard:\n  memory.available: -5%\n", "between 0% and 100%"),
        ("evictionHard:\n  memory.available: abc%\n", "not a percentage"),
        ("evictionSoft:\n  allocatableMemory.available: 1Gb\n", r"evictionSoft\[allocatable"),
        # The command-line flag's syntax is not the file's.
        ("evictionHard: memory.available<100Mi\n", "must be a mapping"),
        ("evictionHard: [memory.available]\n", "must be a mapping"),
        ("mergeDefaultEvictionSettings: 'yes'\n", "true or false"),
        ("enforceNodeAllocatable: pods\n", "list of strings"),
        ("evictionMaxPodGracePeriod: '60'\n", "number of seconds"),
        ("evictionMaxPodGracePeriod: 99999999999\n", "number of seconds"),
        ("evictionPressureTransitionPeriod: 300\n", "must be a duration"),
        ("evictionPressureTransitionPeriod: 5 minutes\n", "is not a duration"),
        ("evictionPressureTransitionPeriod: -5m\n", "is negative"),
    ],
)
def test_odd_values(body: str, says: str) -> None:
    message = warning(HEADER + body)
    assert message.startswith("config.yaml: ")
    assert re.search(says, message), message


def test_another_kind_is_odd() -> None:
    text = "apiVersion: kubeadm.k8s.io/v1beta3\nkind: ClusterConfiguration\n"
    assert "not KubeletConfiguration" in warning(text)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    result = load(path)
    assert result.thresholds is None
    assert result.warnings == [f"{path} is missing"]


@pytest.mark.parametrize("text", ["", "\n  \n", "# nothing but a comment\n", "---\n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    assert load(path) == EvictionThresholds(thresholds=None, warnings=[f"{path} is empty"])


def test_malformed_yaml(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(HEADER + "evictionHard: {memory.available: 100Mi\n")
    result = load(path)
    assert result.thresholds is None
    assert result.warnings[0].startswith(f"{path} is not valid YAML at line 4")


@pytest.mark.parametrize(
    "text",
    [
        HEADER + "---\nkind: KubeletConfiguration\n",  # two documents
        "evictionHard:\n  memory.available: 1Gi\n   nodefs.available: 1Gi\n",
        "when: 2024-13-01\n",  # a timestamp PyYAML cannot construct
        "[unclosed\n",
    ],
)
def test_other_malformed_yaml(text: str) -> None:
    assert "is not valid YAML" in warning(text)


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "a list"), ("hello\n", "a string")])
def test_not_a_mapping(text: str, kind: str) -> None:
    assert warning(text) == f"config.yaml is not a mapping of settings but {kind}"


def test_unreadable_file(tmp_path: Path) -> None:
    result = load(tmp_path)  # a directory
    assert result.thresholds is None
    assert result.warnings[0].startswith(f"{tmp_path} cannot be read")
    path = tmp_path / "config.yaml"
    path.write_bytes(b"kind: KubeletConfiguration\nevictionHard: \xff\n")
    assert load(path).warnings == [f"{path} is not UTF-8 text"]


def test_real_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(KUBEADM)
    assert load(path) == parse(KUBEADM)


# -- crossed --


def node(
    available: int | None,
    working_set: int | None = 4 * Gi,
    pods_available: int | None = None,
    pods_capacity: int | None = None,
) -> NodeMemory:
    return NodeMemory(
        capacity_bytes=None
        if available is None or working_set is None
        else available + working_set,
        working_set_bytes=working_set,
        available_bytes=available,
        allocatable_available_bytes=pods_available,
        allocatable_capacity_bytes=pods_capacity,
        psi_some_avg10=None,
        psi_full_avg10=None,
        formula="cgroup v2",
    )


DEFAULTS = parse(KUBEADM)


def test_crossed_memory_available() -> None:
    assert crossed(DEFAULTS, node(50 * Mi)) == hard(MEMORY_AVAILABLE, 100 * Mi)
    assert crossed(DEFAULTS, node(100 * Mi - 1)) == hard(MEMORY_AVAILABLE, 100 * Mi)
    # thresholdsMet: met only when the threshold is greater than what is available.
    assert crossed(DEFAULTS, node(100 * Mi)) is None
    assert crossed(DEFAULTS, node(2 * Gi)) is None


def test_crossed_allocatable() -> None:
    memory = node(2 * Gi, pods_available=80 * Mi, pods_capacity=6 * Gi)
    assert crossed(DEFAULTS, memory) == hard(ALLOCATABLE_MEMORY_AVAILABLE, 100 * Mi)
    assert crossed(DEFAULTS, node(2 * Gi, pods_available=Gi, pods_capacity=6 * Gi)) is None


def test_crossed_percentage_as_the_kubelet_rounds() -> None:
    # 10% of 8 GiB: 8589934592 * float32(0.1) = 858993472.0, 13 bytes above a tenth
    # (858993459.2), as GetThresholdQuantity computes it.
    ten = [hard(MEMORY_AVAILABLE, percentage=10.0)]
    assert ten[0].bytes_for(8 * Gi) == 858_993_472
    assert crossed(ten, node(858_993_471, working_set=8 * Gi - 858_993_471)) == ten[0]
    assert crossed(ten, node(858_993_472, working_set=8 * Gi - 858_993_472)) is None
    assert ten[0].bytes_for(None) is None


def test_crossed_allocatable_percentage_uses_the_kubepods_limit() -> None:
    ten = [hard(ALLOCATABLE_MEMORY_AVAILABLE, percentage=10.0)]
    # 10% of the 8 GiB kubepods limit, not of the node's 16 GiB.
    memory = node(12 * Gi, pods_available=858_993_471, pods_capacity=8 * Gi)
    assert crossed(ten, memory) == ten[0]
    assert crossed(ten, node(12 * Gi, pods_available=858_993_471)) is None


def test_crossed_soft_and_order() -> None:
    result = parse(
        HEADER
        + "evictionHard:\n  memory.available: 100Mi\n"
        + "evictionSoft:\n  memory.available: 1Gi\n"
        + "evictionSoftGracePeriod:\n  memory.available: 1m\n"
    )
    assert crossed(result, node(512 * Mi)) == soft(MEMORY_AVAILABLE, 60.0, quantity=Gi)
    assert crossed(result, node(64 * Mi)) == hard(MEMORY_AVAILABLE, 100 * Mi)


def test_crossed_unknown_signals_and_no_thresholds() -> None:
    assert crossed(DEFAULTS, node(None)) is None
    assert crossed(parse(""), node(0)) is None
    assert crossed([], node(0)) is None
    assert crossed([Threshold("nodefs.available", "hard", Gi, None, None)], node(0)) is None


def test_crossed_on_the_v2_tree() -> None:
    memory = read(V2)  # memory.available 5153685504, allocatableMemory.available 5355831296
    assert crossed(DEFAULTS, memory) is None
    between = [
        hard(ALLOCATABLE_MEMORY_AVAILABLE, 5_200_000_000),
        hard(MEMORY_AVAILABLE, 5_200_000_000),
    ]
    assert crossed(between, memory) == between[1]
    above = [
        hard(MEMORY_AVAILABLE, 5_100_000_000),
        hard(ALLOCATABLE_MEMORY_AVAILABLE, 5_400_000_000),
    ]
    assert crossed(above, memory) == above[1]
