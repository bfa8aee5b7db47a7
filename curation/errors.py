"""The error a person sees as one line: `pond`'s command line catches `PondError` once (`pond.cli.entry`)
and prints its message, never a traceback. Raise it (or a subclass) for what the user can fix: a model
that is not there, a teacher that cannot start. Subclasses may also derive from the built-in type
callers already catch (`ModelNotFound` is a `FileNotFoundError`)."""
from __future__ import annotations


class PondError(Exception):
    """A problem the user can fix, with a message that says how."""


class ModelNotFound(PondError, FileNotFoundError):
    """A model named in a recipe is neither a folder nor in the cache."""
