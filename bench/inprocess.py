"""The agent compiling in its own process, as it did before oomtrace.kernel.loader: bcc,
LLVM and clang stay mapped for its whole life. bench.footprint runs it next to the
agent as shipped to show what the loader child saves.

    sudo .venv/bin/python -m bench.inprocess --follow --format json
"""

from __future__ import annotations

import functools
import sys

from oomtrace import cli, startup
from oomtrace.kernel import probes


def main() -> int:
    # startup looks the name up when it loads: rebinding it there is enough.
    setattr(startup, "Probes", functools.partial(probes.Probes, in_process=True))  # noqa: B010
    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
