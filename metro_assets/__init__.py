"""metro-assets: fetch, checksum, lay out, verify and load-check METRO's assets."""

__version__ = "0.1.0"
