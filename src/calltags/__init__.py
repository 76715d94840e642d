"""calltags: call data writing for pay-per-call."""

__version__ = "0.1.0"
