"""The storage service: the node's RocksDB behind the ``cretoai.v1.Storage`` contract.

See docs/storage.md: column families and key encodings, the write path (one
writer thread, group commit), guarantees, errors, backup and restore.
"""
