"""mailproxy: an async email dispatch proxy."""

__version__ = "1.0.0"
