"""METRO TSV datasets: streaming fetch + safe extraction, records, deep verification.

Light on purpose: the heavy modules load inside the functions (no torch, ever).

- :func:`fetch_dataset`   download + extract one dataset tar (resumable), see stream.py
- :func:`verify_dataset`  record/stamp check, ``deep=True`` for TSV content (deep.py)
- :func:`reindex_dataset` regenerate missing ``.lineidx`` files
- :func:`dataset_disk_needed`, :func:`dataset_download_bytes` for dry runs and preflight
"""
from __future__ import annotations


def fetch_dataset(asset, candidates, store, settings, **kw):
    from metro_assets.datasets.api import fetch_dataset as f

    return f(asset, candidates, store, settings, **kw)


def verify_dataset(asset, store, **kw):
    from metro_assets.datasets.api import verify_dataset as f

    return f(asset, store, **kw)


def reindex_dataset(asset, store, **kw):
    from metro_assets.datasets.api import reindex_dataset as f

    return f(asset, store, **kw)


def dataset_disk_needed(asset, store, **kw):
    from metro_assets.datasets.api import dataset_disk_needed as f

    return f(asset, store, **kw)


def dataset_download_bytes(asset, store, **kw):
    from metro_assets.datasets.api import dataset_download_bytes as f

    return f(asset, store, **kw)
