"""Attachment content from the four sources of contract §10, behind one small port.

`fetch.Fetcher` turns an Attachment into bytes (base64, sandboxed filesystem, the tenant's
endpoint, a guarded http_url), streaming and bounded, through the two-tier `cache.Cache`.
Failures carry their retry decision: `FetchError.temporary`.
"""
