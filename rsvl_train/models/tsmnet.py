"""TSMNet (being written)."""
