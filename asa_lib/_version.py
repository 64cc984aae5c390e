"""The package version (one place; the public face and the recorded versions read it)."""

__version__ = "0.1.0"
