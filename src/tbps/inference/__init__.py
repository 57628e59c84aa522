"""Search a gallery: the index of a folder of images (exact or FAISS), text and image queries
(:class:`Retriever`), and the HTTP service with its web page (:mod:`tbps.inference.service`)."""

from tbps.inference.builder import IndexReport, build_index
from tbps.inference.index import GalleryIndex, IndexFormatError
from tbps.inference.retriever import Hit, Retriever

__all__ = ["GalleryIndex", "Hit", "IndexFormatError", "IndexReport", "Retriever", "build_index"]
