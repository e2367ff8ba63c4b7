"""The kernel side: feature probing, BTF, program planning and loading, the ring
buffer, and the decoding of its records. Nothing here knows about events."""
