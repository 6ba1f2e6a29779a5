"""Results to the laboratory information system (LIS): one module per protocol, chosen by URL
scheme (as pyserial's URL handlers): ``mllp://`` (HL7 v2.5.1 ORU^R01 over MLLP), ``astm+tcp://`` and
``astm+serial://`` (ASTM E1394 records in E1381 frames). A result goes into
the journal first, then into the outbox (:mod:`.outbox`), and the forwarder (:mod:`.forwarder`)
sends it until the LIS acknowledges it.
"""

from __future__ import annotations

from typing import Protocol

from edgehema.exceptions import EdgehemaError
from edgehema.lis import astm, mllp


class Destination(Protocol):
    """One LIS: renders a result as its protocol's message, sends it and waits for the answer."""

    url: str
    timeout: float

    def render(self, result: dict, control_id: str, status: str = "F") -> str: ...

    def send(self, message: str, control_id: str) -> str: ...


class LisProtocol(Protocol):
    """A protocol module: the URL schemes it serves and how it opens a destination from a URL."""

    SCHEMES: tuple[str, ...]

    def open_destination(self, url: str) -> Destination: ...


#: URL scheme -> protocol module (``open_destination(url)``).
PROTOCOLS: dict[str, LisProtocol] = {scheme: module for module in (mllp, astm) for scheme in module.SCHEMES}


def open_destination(url: str) -> Destination:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    module = PROTOCOLS.get(scheme)
    if module is None:
        raise EdgehemaError(f"--lis {url}: unknown LIS protocol {scheme or '(none)'!r} "
                            f"(known: {', '.join(f'{s}://' for s in PROTOCOLS)})")
    return module.open_destination(url)


__all__ = ["Destination", "LisProtocol", "PROTOCOLS", "open_destination"]
