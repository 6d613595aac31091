"""demo: a sample mirror of synthetic METRO assets, served on 127.0.0.1, and the real commands run against it.

* :mod:`metro_assets.demo.samples` builds the synthetic files (clearly marked synthetic);
* :mod:`metro_assets.demo.server` serves a folder with Range/ETag support;
* :mod:`metro_assets.demo.run` runs fetch, import, verify, doctor and run-check against it.
"""
