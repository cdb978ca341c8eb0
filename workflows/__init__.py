"""Temporal workflows: thin and deterministic; they call activities by name."""
