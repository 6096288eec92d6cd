"""prmforge data model: pyarrow schemas, records, problem loading, shards, catalog, exports.

This layer imports nothing from ``labelers`` or ``flows``.
"""
