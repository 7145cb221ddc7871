"""Generated protobuf modules for the model configuration schema.

The generated modules register their descriptors in ``POOL``, a descriptor pool
private to fleetserve, instead of protobuf's process-wide default pool. The
protocol's messages are named ``inference.*`` as in the public protocol, and so
are tritonclient's; sharing the default pool would make ``import fleetserve``
and ``import tritonclient.grpc`` in one process fail with "duplicate symbol".
The wire format does not depend on the pool. Regenerate with
``python -m server.protos.generate`` (see README).
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
