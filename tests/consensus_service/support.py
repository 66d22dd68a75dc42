"""What the consensus servicer's submit-path tests share."""

from __future__ import annotations

from cretoai.v1 import storage_pb2, vertex_pb2


class NothingStored:
    """Storage's answer to the servicer's status lookups when nothing is stored yet: a
    record without a status for each hash."""

    async def GetVertexStatuses(
        self, request: storage_pb2.GetVertexStatusesRequest, timeout: float
    ) -> storage_pb2.GetVertexStatusesResponse:
        return storage_pb2.GetVertexStatusesResponse(
            records=[vertex_pb2.VertexRecord(hash=h) for h in request.hashes]
        )
