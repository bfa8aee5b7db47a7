"""The error a person sees as one line: `pond`'s command line catches `PondError` once (its command
group, `pond.cli`) and prints its message, never a traceback. Raise it (or a subclass) for what the user
can fix: a model that is not there, a teacher that cannot start, a setting that cannot train, a file
that cannot be read. Every error pond raises on purpose is one of these; anything else is a bug and
keeps its traceback. Each also derives from the built-in type callers already catch (`ModelNotFound`
is a `FileNotFoundError`, `ConfigError` a `ValueError`)."""
from __future__ import annotations


class PondError(Exception):
    """A problem the user can fix, with a message that says how."""


class ModelNotFound(PondError, FileNotFoundError):
    """A model named in a recipe is neither a folder nor in the cache."""


class ConfigError(PondError, ValueError):
    """A setting (recipe, training, experiment, evaluation) that cannot work as given; the message names
    the key."""


class InputError(PondError, ValueError):
    """A file or its rows that cannot be used; the message names the file (and the line where known)."""


class DataNotFound(PondError, FileNotFoundError):
    """A file a setting names (a held-out set, an arm's data) is not there."""
