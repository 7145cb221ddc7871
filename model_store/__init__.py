"""The model store: repository layout on disk, model configs, versions, and the registry of
what is loaded.

Must not import server, batching or grpc.
"""
