"""Errors with a stable code, so that dead letters and messages can be grouped."""

from __future__ import annotations


class NewswatchError(Exception):
    """Base class: a stable ``code`` plus a human message and an optional hint."""

    code = "error"

    def __init__(self, message: str, *, hint: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if code:
            self.code = code

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


class RecordError(NewswatchError):
    """One record is bad (empty body, undecodable, too large...). It goes to the dead letter.

    ``code`` is a short reason such as ``empty_body``, ``too_large``, ``bad_json``,
    ``bad_encoding``, ``malformed_feed``.
    """

    code = "bad_record"


class ResourceError(NewswatchError):
    """A resource file (watchlist, concepts, topics, alert rules) is invalid.

    The message names the file, the entry and the field.
    """

    code = "bad_resource"


class ModelUnavailable(NewswatchError):
    """A configured NLP model is not installed."""

    code = "model_unavailable"
