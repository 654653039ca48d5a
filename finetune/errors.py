"""What a fine-tuning run refuses before it trains: bad data, bad options. The command line turns both into
exit status 2 and one line per problem."""

from __future__ import annotations

from collections.abc import Sequence

MAX_LISTED = 20  # problems listed in one error; the rest are counted


class FinetuneError(Exception):
    """The run cannot start as asked; the message says why."""


class OptionsError(FinetuneError, ValueError):
    """An option out of range or in conflict with the base checkpoint or the output folder."""


class DataError(FinetuneError, ValueError):
    """The data cannot be trained on; the message lists every problem as `file:line: what`."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        shown = self.problems[:MAX_LISTED]
        more = len(self.problems) - len(shown)
        super().__init__("\n".join([*shown, *([f"... and {more} more"] if more else [])]))
