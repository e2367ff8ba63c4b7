"""Enrichment of raw BPF records with facts read from /proc and cgroupfs."""
