"""What can go wrong when asking the CRI, each rendered as the error entry the agent reports."""

from __future__ import annotations


class CriError(Exception):
    """Base class; ``describe()`` is the entry for an event's errors list."""

    def describe(self) -> str:
        return f"cri: {self}"


class CriUnavailable(CriError):
    """No runtime answers at the endpoint (no socket, refused, closed, not CRI v1)."""

    def describe(self) -> str:
        return f"cri: unavailable: {self}"


class CriTimeout(CriError):
    """The runtime did not answer within the allowed wait."""

    def describe(self) -> str:
        return "cri: timeout"


class CriBadAnswer(CriError):
    """The runtime answered something that cannot be used."""

    def describe(self) -> str:
        return f"cri: bad answer: {self}"


class CriNotFound(CriError):
    """The runtime does not know the id (never existed, or already removed)."""

    def describe(self) -> str:
        return f"cri: not found: {self}"
