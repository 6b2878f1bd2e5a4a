"""CADFormer (being written)."""
