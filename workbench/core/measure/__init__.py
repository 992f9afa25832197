"""Measurement: statistics, timing, memory, the background monitor, the environment record."""
