"""The errors model_core raises when a checkpoint cannot be used."""


class CheckpointError(Exception):
    """A checkpoint exists but cannot be used (bad config, wrong or missing tensors)."""


class CheckpointNotFoundError(CheckpointError):
    """The folder or hub repository cannot be read (missing, offline and not cached)."""


class StateDictMismatchError(CheckpointError):
    """Missing, unexpected or mis-shaped tensors; the message lists every one of them."""

    def __init__(self, *, missing: list[str], unexpected: list[str], mismatched: list[str]) -> None:
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        lines = ["checkpoint does not match the architecture:"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if keys:
                lines.append(f"  {title} ({len(keys)}):")
                lines += [f"    {k}" for k in keys]
        super().__init__("\n".join(lines))
