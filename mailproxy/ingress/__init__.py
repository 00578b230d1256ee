"""Protocol adapters that bring mail and commands in."""
