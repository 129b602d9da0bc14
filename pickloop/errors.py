"""The exception types that mean "the user did something we can explain in one line"."""


class UserError(Exception):
    """A mistake or bad input the user can fix; the CLI prints it as one line and exits 2."""


def one_line(text: object) -> str:
    """``text`` (or an exception's message) with its line breaks folded: an error never spans lines."""
    return " ".join(str(text).split())


class DamagedFileError(UserError):
    """A file that is not what was recorded when it was written (sha256 mismatch, truncated, non-finite
    weights, a decompression bomb...). Never skipped over: a run that meets one stops with its line."""
