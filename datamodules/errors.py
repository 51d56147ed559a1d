"""The one error type the data layer raises for bad options or bad data, so the CLI can print one line."""

from __future__ import annotations


class DataConfigError(ValueError):
    """A data option or a data row is wrong; the message names the field, the value and the fix."""
