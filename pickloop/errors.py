"""The one exception type that means "the user did something we can explain in one line"."""


class UserError(Exception):
    """A mistake or bad input the user can fix; the CLI prints it as one line and exits 2."""
