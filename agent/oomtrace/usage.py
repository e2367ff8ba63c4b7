"""How oomtrace ends when it cannot start: one line on stderr and an exit status.

Status 2 means the command line or the configuration is wrong (systemd's unit
does not restart after it); 1 means the agent started and then failed.
"""

from __future__ import annotations

import sys
from typing import Final, NoReturn

EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    print(f"oomtrace: {message}", file=sys.stderr)
    raise SystemExit(code)
