"""Cross-cutting concerns every layer may use: error codes, metrics, logging.

Nothing in ``ops`` imports another fleetserve package.
"""
