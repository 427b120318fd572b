"""seqwin: fast sliding-window and routing attention for speech and long-sequence modeling."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("seqwin")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
