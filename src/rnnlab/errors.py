"""The one exception type that rnnlab shows to people.

Anything a user can cause (a missing file, a bad option, a corrupt checkpoint) raises
:class:`RnnlabError` with a one-line message that names the problem and what to do. The CLI
catches it, prints ``rnnlab: <message>`` and exits with status 2. Programming errors stay
ordinary Python exceptions.
"""


class RnnlabError(Exception):
    """A problem the user can act on; ``str(err)`` is a complete one-line message."""


class RnnlabWarning(UserWarning):
    """Something the user should know that does not stop the work (e.g. a slow fallback); the
    CLI prints it as one line, ``rnnlab: warning: <message>``."""
