"""Header checks, decode, resize, encode and hashes of downloaded images."""

from pipeline.images.process import ImageResult, process_image

__all__ = ["ImageResult", "process_image"]
