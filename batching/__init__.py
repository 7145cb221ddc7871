"""Per-model scheduling: queues and the dynamic batcher.

Generic over the items it schedules: knows no models, tensors or protocols.
Must not import server, kernels, model_store, grpc or protobuf.
"""
