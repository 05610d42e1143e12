"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""


class InputError(Exception):
    """Bad input: a missing file or column, a wrong value, an unknown model. The message names it."""
