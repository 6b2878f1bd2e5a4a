"""rsvl_runtime: torch-free tiled GeoTIFF inference against a cached vocabulary."""
