"""Data: built-in and user corpora, cleaning, source mixing, packing, MindRecord shards, and
the training input pipeline (`pangu_ms.data.dataset.build_dataset`)."""
