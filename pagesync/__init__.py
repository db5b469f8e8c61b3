"""pagesync: self-hosted sync-and-process backend for browser-activity data."""

__version__ = "0.1.0"
