"""rsvl_runtime: torch-free tiled GeoTIFF inference against a cached vocabulary.

    from rsvl_runtime import Segmenter
    seg = Segmenter.load("bundles/tsmnet-tiny-fp16")
    seg.set_vocabulary(["water, lake", "building", "vegetation"])
    seg.predict_raster("optical.tif", "sar.tif", out_dir="out")
"""

from .bundle import Bundle, BundleError
from .segmenter import Referrer, Segmenter
from .vocabulary import VocabularyError

__all__ = ["Bundle", "BundleError", "Referrer", "Segmenter", "VocabularyError"]
