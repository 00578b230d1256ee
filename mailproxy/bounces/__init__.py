"""Bounces and suppressions (§12): parsing, correlation, the use cases and the poller."""
