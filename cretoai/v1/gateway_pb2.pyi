from cretoai.v1 import consensus_pb2 as _consensus_pb2
from cretoai.v1 import storage_pb2 as _storage_pb2
from cretoai.v1 import vertex_pb2 as _vertex_pb2
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor
