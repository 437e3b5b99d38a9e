"""Prometheus exporter for the Windsurf (formerly Codeium) enterprise analytics API."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("windsurf-exporter")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
