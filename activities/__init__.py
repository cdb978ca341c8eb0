"""Temporal activities: the I/O workflows need (database, templates, channels)."""
