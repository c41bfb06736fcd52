"""watcher: watch HTTP resources for changes with Redis job schedulers."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("watcher")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"
