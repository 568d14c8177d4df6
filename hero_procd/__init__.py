"""hero-procd: a process supervisor and job queue daemon for one Linux host."""

__version__ = "0.1.0"
