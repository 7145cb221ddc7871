"""Execution backends: tensors in, tensors out.

A kernel knows numpy arrays and its runtime (onnxruntime); it knows nothing of
transports, protocols, requests or scheduling. Must not import server,
batching, grpc or protobuf.
"""
