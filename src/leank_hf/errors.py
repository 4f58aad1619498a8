"""Exceptions raised for user mistakes. The CLI prints these as one line instead of a traceback."""


class LeanKError(Exception):
    """Base class of errors caused by input a user can fix."""


class MaskError(LeanKError, ValueError):
    """A mask that is malformed, corrupt, or does not fit the model it is used with."""


class LeanKUsageError(LeanKError, RuntimeError):
    """LeanK pieces combined in a way that cannot work (e.g. a `LeanKCache` without the LeanK attention)."""


class HubError(LeanKError, OSError):
    """The Hugging Face Hub could not be reached or refused a request (offline mode, no network, token, repo id)."""
