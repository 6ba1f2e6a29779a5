"""The link's one exception root: everything the wire code raises for bad bytes is a WireError
(a ValueError, so that a caller that catches ValueError for bad input keeps working)."""


class WireError(ValueError):
    """Bytes from the link that are not what the protocol says."""


class CobsError(WireError):
    """Bytes that are not a valid COBS encoding."""


class ProtocolError(WireError):
    """A payload that does not parse as its message type says."""
