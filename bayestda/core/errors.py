"""The one exception type that scripts turn into a one-line message for the user."""


class UserError(Exception):
    """Bad input or missing prerequisite: the message says what is wrong and what to run."""
