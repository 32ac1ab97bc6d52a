"""Errors split by blame (house style 3.6): Local = our bug, Remote = the machine sent garbage."""

from __future__ import annotations

__all__ = ["SasError", "SasLocalProtocolError", "SasRemoteProtocolError"]


class SasError(Exception):
    """Base of every SAS protocol error."""


class SasLocalProtocolError(SasError):
    """We tried to build or send something SAS does not allow: a bug in our code."""


class SasRemoteProtocolError(SasError):
    """The machine sent something we cannot decode; counted and retried by the host."""
