"""The HDF5 feature cache: the contract between stage one and stage two (see docs/cache.md)."""
