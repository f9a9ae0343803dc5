"""The project's one error class, at the bottom of the layers so every package can raise it."""


class UserError(Exception):
    """A problem the user can fix: its message says what is wrong and what to do."""
