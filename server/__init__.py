"""Transports (gRPC), wire codecs, status mapping, the dataplane, app wiring and lifecycle.

Nothing imports ``server``.
"""
