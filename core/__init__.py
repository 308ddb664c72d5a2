"""Shared types for newswatch: records, settings, ids, errors and the retry helper.

Everything else imports from here; this package imports nothing from
``pipeline``, ``connectors`` or ``transforms``.
"""
