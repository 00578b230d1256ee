"""The mail-proxy operations commands: instances, and REST calls to a running one."""
