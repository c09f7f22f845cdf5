"""End-to-end jobs on top of the library (they call typed APIs, never argv or exit codes)."""
