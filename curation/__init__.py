"""Curation: the record schema, ingest and the curation steps (bottom of the import graph)."""
