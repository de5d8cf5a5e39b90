"""Validation checks behind scripts/ (Phase 0, Plan A, Plan B): each returns a report and an exit code."""
