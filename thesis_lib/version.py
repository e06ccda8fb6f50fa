"""The installed thesis-lib's version, read from the package metadata (pyproject.toml is the one source)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:
    __version__ = version("thesis-lib")
except PackageNotFoundError:  # a checkout on PYTHONPATH without an install (the GPU image's runs)
    __version__ = "unknown"
