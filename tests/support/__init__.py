"""Helpers shared by tests: OTLP JSON loading and golden-file comparison. Tests import from here,
never from one another."""
