"""The load-testing harness, benchmark and capacity planner (``fleetserve loadtest|bench|plan``).

Talks to servers only over the wire (gRPC, through fleetserve's generated stubs in
``server.protos``, or HTTP/REST); never imports the serving core (batching, kernels, the model registry).
"""
