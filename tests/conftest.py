"""Suite-wide rules: kernel tests need root, and in CI nothing may be skipped."""

from __future__ import annotations

import os

import pytest

_NEEDS_ROOT = ("kernel", "containerd", "vm")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    for item in items:
        if any(item.get_closest_marker(m) for m in _NEEDS_ROOT):
            # Fail loudly rather than skip: a kernel test that does not run proves nothing.
            item.add_marker(pytest.mark.usefixtures("_require_root"))


@pytest.fixture
def _require_root() -> None:
    pytest.fail("this test drives the real kernel and must run as root (sudo scripts/test)")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if os.environ.get("CI") and skipped and exitstatus == 0:
        reporter.write_line(f"CI: {skipped} tests were skipped; every test must run here")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
