"""The container runtimes' process names: who stops a container for the kubelet.

The kubelet never signals a container itself. StopContainer reaches the runtime
(containerd, CRI-O), whose shim runs the OCI runtime's `kill` command: that
process (`runc`, `crun`, ...) is the one that calls kill(2). Capture reads the
node's memory for its signals, the kernel follows its stop signals
(kernel/probes.py), and classify calls what it sends a runtime stop.
"""

from __future__ import annotations

from typing import Final

# comm is at most 15 characters: "containerd-shim-runc-v2" shows as "containerd-shim".
RUNTIMES: Final = frozenset(
    {"runc", "crun", "conmon", "containerd-shim", "containerd", "crio", "youki", "runsc", "kubelet"}
)
# The OCI runtimes and shims that send a container's signals with kill(2): the
# kernel follows a stop signal (SIGTERM, ...) only from these comms, so the
# filter costs one hash lookup on a signal that is a stop signal at all.
SIGNALLING_RUNTIMES: Final = ("runc", "crun", "youki", "runsc", "conmon", "containerd-shim")
# The stop signals images name (the OCI config's StopSignal, Dockerfile
# STOPSIGNAL): SIGTERM by default; SIGQUIT (nginx), SIGWINCH (httpd), SIGINT,
# SIGHUP, SIGPWR, and SIGRTMIN+3 (37 with glibc's SIGRTMIN of 34: systemd as a
# container's init). SIGURG stays out: Go programs, runc among them, send it to
# their own threads to preempt goroutines; SIGCHLD too: a runtime's child sends
# it as it exits.
STOP_SIGNALS: Final = frozenset({1, 2, 3, 15, 28, 30, 37})


def is_runtime(comm: str, runtimes: frozenset[str] = RUNTIMES) -> bool:
    """A container runtime's process, by the comm it showed (runc's own init
    stages show as `runc:[1:CHILD]` and the like)."""
    return comm in runtimes or comm.startswith(("runc:", "containerd-shim"))
