"""A MongoDB-compatible replica set for the demo, rehearsals and tests (in progress)."""
