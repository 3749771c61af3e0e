"""scencode: benchmark gene and expression encodings for single-cell foundation models."""

__version__ = "0.1.0"
