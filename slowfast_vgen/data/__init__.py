"""Data: the on-disk dataset format, video readers, validation, generation and the chunk dataset.

Modules (imported explicitly; this package imports nothing heavy on its own):

* :mod:`.manifest` — ``Segment``, ``read_manifest``/``write_manifest``, path-safety checks.
* :mod:`.readers` — ``VideoReaderBackend`` protocol with decord and imageio implementations.
* :mod:`.validate` — decode-everything dataset checks (``data_tools/validate.py``).
* :mod:`.world_dataset` — render procedural worlds to a dataset (``data_tools/make_world.py``).
* :mod:`.ingest` — convert annotated real videos (``data_tools/ingest_videos.py``).
* :mod:`.dataset` — ``ChunkDataset`` / ``collate_chunks`` / ``ChunkBatch`` for training.
* :mod:`.live_worlds` — ``LiveWorldChunks`` / ``live_chunk_loader``: the same chunks rendered on the fly.

The format itself is described in ``README.md`` beside this file.
"""
