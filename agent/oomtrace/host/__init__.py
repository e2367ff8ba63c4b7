"""Readers of the host's state: /proc, cgroupfs and the memory cgroup files."""
