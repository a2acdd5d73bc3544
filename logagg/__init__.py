"""logagg: at-least-once event streams in, every event exactly once in a local SQLite store."""

__version__ = "0.1.0"
