"""The one error type of weight conversion."""
from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint cannot be fetched, read, recognised or mapped onto a model.

    The message is one line and names the file, key or setting at fault, so a
    CLI can print it as it is.
    """
