"""Generated protobuf and gRPC modules of the Open Inference Protocol.

Do not edit the ``*_pb2*.py`` files: ``python -m server.protos.generate``
writes them from the ``.proto`` files, and a test fails when they are stale.
"""
