"""METRO inference networks (body and hand), written from the project's spec.

This package is import-light: nothing here imports torch until a submodule
that needs it is imported (``metro_assets.model.metro``, ``.checkpoint``...).
Configurations (:mod:`metro_assets.model.config`) are plain dataclasses.
"""
from __future__ import annotations

from metro_assets.model.config import VARIANTS, MetroConfig, get_config

__all__ = ["VARIANTS", "MetroConfig", "get_config"]
