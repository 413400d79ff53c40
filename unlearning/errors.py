"""Errors that name the problem for the person who caused it.

Everything here maps to a 4xx in the service and a one-line message in the CLI; any other
exception is a bug.
"""


class LetheError(Exception):
    """Base class: a problem with the user's input or stored state, explained in words."""


class SpecError(LetheError):
    """A forget specification is malformed or refers to something that does not exist."""


class InputDataError(LetheError):
    """Uploaded or loaded images are unreadable, the wrong shape, or too many."""


class NotFoundError(LetheError):
    """A version, classifier or job that does not exist."""


class ConflictError(LetheError):
    """A name that is taken (a model that already exists)."""


class IntegrityError(LetheError):
    """A stored file does not match the checksum in its manifest (tampering or corruption)."""


class CancelledError(LetheError):
    """A job was cancelled by its owner."""
