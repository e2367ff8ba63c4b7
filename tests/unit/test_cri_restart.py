"""A container's restart count and start time, as read from the CRI's messages."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from oomtrace.cri import api_pb2
from oomtrace.cri.model import COUNT_MAX, container_from_list, container_from_status

RESTART_COUNT = "io.kubernetes.container.restartCount"


def listed(*, attempt: int | None = None, annotation: str | None = None) -> Any:
    container = api_pb2.Container(id="c" * 64, state=api_pb2.CONTAINER_RUNNING)
    if attempt is not None:
        container.metadata.CopyFrom(api_pb2.ContainerMetadata(name="app", attempt=attempt))
    if annotation is not None:
        container.annotations[RESTART_COUNT] = annotation
    return container


def status(*, started_at: int, state: api_pb2.ContainerState = api_pb2.CONTAINER_EXITED) -> Any:
    return api_pb2.ContainerStatusResponse(
        status=api_pb2.ContainerStatus(id="c" * 64, state=state, started_at=started_at)
    )


@pytest.mark.parametrize(
    ("attempt", "annotation", "restart_count", "attempt_seen"),
    [
        pytest.param(1, "1", 1, 1, id="kubelet-both"),
        pytest.param(3, "5", 5, 3, id="annotation-wins"),
        pytest.param(4, None, 4, 4, id="metadata-only"),
        pytest.param(0, None, 0, 0, id="first-run"),
        pytest.param(None, "2", 2, 2, id="annotation-only"),
        pytest.param(None, "007", 7, 7, id="leading-zeros"),
        pytest.param(None, str(COUNT_MAX), COUNT_MAX, COUNT_MAX, id="largest"),
        pytest.param(None, None, None, None, id="neither"),
    ],
)
def test_restart_count_sources(
    attempt: int | None,
    annotation: str | None,
    restart_count: int | None,
    attempt_seen: int | None,
) -> None:
    info = container_from_list(listed(attempt=attempt, annotation=annotation))
    assert (info.restart_count, info.attempt) == (restart_count, attempt_seen)


@pytest.mark.parametrize(
    "annotation",
    [
        "",
        "-1",
        "+1",
        " 1",
        "1 ",
        "1\n",
        "1.0",
        "1e3",
        "0x10",
        "1_000",
        "\u0661",  # an Arabic-Indic digit, which int() would take
        "\uff11",  # a fullwidth digit
        str(COUNT_MAX + 1),
        "9" * 11,
        "9" * 100_000,  # past int()'s digit limit
        "x" * (1 << 20),
    ],
)
def test_malformed_annotation_is_null_and_no_fallback(annotation: str) -> None:
    info = container_from_list(listed(attempt=3, annotation=annotation))
    assert info.restart_count is None
    assert info.attempt == 3  # the metadata's own field is untouched
    no_metadata = container_from_list(listed(annotation=annotation))
    assert (no_metadata.restart_count, no_metadata.attempt) == (None, None)


def test_the_count_is_always_serialisable() -> None:
    info = container_from_list(listed(attempt=2**32 - 1))
    assert orjson.loads(orjson.dumps(info.restart_count)) == 2**32 - 1


@pytest.mark.parametrize(
    ("started_at", "expected"),
    [
        pytest.param(1_764_000_000_123_456_789, 1_764_000_000_123_456_789, id="started"),
        pytest.param(0, None, id="never-started"),
        pytest.param(-5, None, id="negative"),
        pytest.param(2**63 - 1, 2**63 - 1, id="int64-max"),
    ],
)
def test_started_at_from_status(started_at: int, expected: int | None) -> None:
    assert container_from_status(status(started_at=started_at)).started_at == expected


def test_a_list_has_no_start_time() -> None:
    assert container_from_list(listed(attempt=0)).started_at is None


def test_a_created_container_has_no_start_time() -> None:
    info = container_from_status(status(started_at=0, state=api_pb2.CONTAINER_CREATED))
    assert (info.state, info.started_at) == ("created", None)
