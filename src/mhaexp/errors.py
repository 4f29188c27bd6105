"""One error type for bad input, and the one-line way it is shown to a user."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value, override, file or checkpoint that cannot be used.

    The message always names the field, the bad value and what would be valid,
    so that a sweep of many runs fails with a line a person can act on.
    """

    def __init__(self, field: str, value: object, valid: str) -> None:
        self.field = field
        self.value = value
        self.valid = valid
        super().__init__(f"{field}={value!r} is invalid: {valid}")
