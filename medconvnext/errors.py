"""Errors the user can fix (bad path, bad file, bad config value).

The CLI turns a :class:`UserError` into one line on stderr and exit code 2;
anything else is an unexpected failure (exit code 1).
"""


class UserError(Exception):
    """A problem with the user's input: names the file or field and what is wrong."""
