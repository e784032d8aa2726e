"""Shipped transcoder configs (package data): one ``<name>.yaml`` per config.

Read them with :func:`sae_circuits.transcoders.configs.list_configs` /
``get_config(name)``; the schema is documented in ``docs/configs.md``.

Example:
    >>> from sae_circuits.transcoders.configs import get_config
    >>> get_config("gemma-2-2b-gemmascope").model
    'gemma-2-2b'
"""
