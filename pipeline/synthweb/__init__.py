"""The loopback test web: a generated site of images, pages and faults, with ground truth.

``SynthWeb(SiteSpec(...))`` serves it on 127.0.0.1..N; ``Site.pair_rows`` lists every
image URL with its caption and the status the download engine must record for it (under
``REFERENCE_SETTINGS``, see ``pipeline.synthweb.site``). Importing this package starts
nothing and renders nothing.
"""

from pipeline.synthweb.images import caption_for, encode, render_image
from pipeline.synthweb.server import SynthWeb
from pipeline.synthweb.site import (
    EXPECTED_STATUS,
    FAULT_KINDS,
    REFERENCE_SETTINGS,
    ImageEntry,
    PageImage,
    Route,
    Site,
    SiteSpec,
    reference_config,
)

__all__ = [
    "EXPECTED_STATUS",
    "FAULT_KINDS",
    "REFERENCE_SETTINGS",
    "ImageEntry",
    "PageImage",
    "Route",
    "Site",
    "SiteSpec",
    "SynthWeb",
    "caption_for",
    "encode",
    "reference_config",
    "render_image",
]
