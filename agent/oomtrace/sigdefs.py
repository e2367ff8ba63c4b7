"""Signal numbers, si_code names and signal_generate results, as the kernel defines them."""

from __future__ import annotations

import signal as _signal
from typing import Final

SIGKILL: Final = 9
SI_USER: Final = 0
SI_KERNEL: Final = 0x80

# include/uapi/asm-generic/siginfo.h
SI_CODES: Final[dict[int, str]] = {
    0: "SI_USER",
    0x80: "SI_KERNEL",
    -1: "SI_QUEUE",
    -2: "SI_TIMER",
    -3: "SI_MESGQ",
    -4: "SI_ASYNCIO",
    -5: "SI_SIGIO",
    -6: "SI_TKILL",
    -7: "SI_DETHREAD",
    -60: "SI_ASYNCNL",
}

# include/trace/events/signal.h, enum TRACE_SIGNAL_*
GENERATE_RESULTS: Final[dict[int, str]] = {
    0: "delivered",
    1: "ignored",
    2: "already_pending",
    3: "overflow_fail",
    4: "lose_info",
}


def signal_name(number: int) -> str:
    try:
        return _signal.Signals(number).name
    except ValueError:
        if _signal.SIGRTMIN <= number <= _signal.SIGRTMAX:
            return f"SIGRTMIN+{number - _signal.SIGRTMIN}"
        return f"SIG{number}"


# Positive si_codes mean "sent by the kernel" and are numbered per signal
# (include/uapi/asm-generic/siginfo.h).
_FAULT_CODES: Final[dict[int, tuple[str, ...]]] = {
    4: ("ILL_ILLOPC", "ILL_ILLOPN", "ILL_ILLADR", "ILL_ILLTRP", "ILL_PRVOPC", "ILL_PRVREG",
        "ILL_COPROC", "ILL_BADSTK", "ILL_BADIADDR"),
    5: ("TRAP_BRKPT", "TRAP_TRACE", "TRAP_BRANCH", "TRAP_HWBKPT", "TRAP_UNK", "TRAP_PERF"),
    7: ("BUS_ADRALN", "BUS_ADRERR", "BUS_OBJERR", "BUS_MCEERR_AR", "BUS_MCEERR_AO"),
    8: ("FPE_INTDIV", "FPE_INTOVF", "FPE_FLTDIV", "FPE_FLTOVF", "FPE_FLTUND", "FPE_FLTRES",
        "FPE_FLTINV", "FPE_FLTSUB", "FPE_FLTUNK", "FPE_CONDTRAP"),
    11: ("SEGV_MAPERR", "SEGV_ACCERR", "SEGV_BNDERR", "SEGV_PKUERR", "SEGV_ACCADI",
         "SEGV_ADIDERR", "SEGV_ADIPERR", "SEGV_MTEAERR", "SEGV_MTESERR", "SEGV_CPERR"),
}  # fmt: skip


def code_name(code: int, sig: int | None = None) -> str:
    names = _FAULT_CODES.get(sig or 0, ())
    if 0 < code <= len(names):
        return names[code - 1]
    return SI_CODES.get(code, str(code))


def kernel_generated(code: int) -> bool:
    """si_code > 0: the kernel sent it (SI_KERNEL or a fault); <= 0: a process did."""
    return code > 0


def parse_signal(text: str) -> int:
    """'KILL', 'SIGKILL', 'kill' or '9' -> 9. Raises ValueError naming the bad entry."""
    word = text.strip().upper()
    if not word:
        raise ValueError("empty signal name")
    if word.isdigit():
        number = int(word)
        if not 1 <= number <= 63:
            raise ValueError(f"signal number {number} is outside 1..63")
        return number
    if not word.startswith("SIG"):
        word = "SIG" + word
    try:
        return int(_signal.Signals[word])
    except KeyError:
        raise ValueError(f"unknown signal {text.strip()!r}") from None


def parse_signal_list(text: str) -> frozenset[int]:
    """'KILL,TERM' -> {9, 15}."""
    numbers = {parse_signal(part) for part in text.split(",") if part.strip()}
    if not numbers:
        raise ValueError("no signal given")
    return frozenset(numbers)


def signal_mask(numbers: frozenset[int]) -> int:
    mask = 0
    for n in numbers:
        mask |= 1 << n
    return mask


# Default actions that do not end the process (signal(7)): ignore, stop, continue.
_NOT_FATAL_BY_DEFAULT: Final = frozenset(
    {17, 18, 19, 20, 21, 22, 23, 28}
)  # CHLD CONT STOP TSTP TTIN TTOU URG WINCH


def fatal_by_default(sig: int) -> bool:
    return 0 < sig < 64 and sig not in _NOT_FATAL_BY_DEFAULT
