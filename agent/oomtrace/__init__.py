"""oomtrace: who killed my container, and why."""

__version__ = "0.1.0"
