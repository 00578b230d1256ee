"""mailproxy: an async email dispatch proxy.

A `§N.M` in a docstring or comment is a section of the wire contract, docs/contract.md.
"""

__version__ = "1.0.0"
