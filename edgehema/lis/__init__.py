"""Results to the laboratory information system (LIS): one module per protocol, chosen by URL
scheme (as pyserial's URL handlers): ``mllp://`` (HL7 v2.5.1 ORU^R01 over MLLP), ``astm+tcp://`` and
``astm+serial://`` (ASTM E1394 records in E1381 frames). A result goes into
the journal first, then into the outbox (:mod:`.outbox`), and the forwarder (:mod:`.forwarder`)
sends it until the LIS acknowledges it.
"""

from __future__ import annotations

from types import ModuleType

from ..exceptions import EdgehemaError
from . import astm, mllp

#: URL scheme -> protocol module (``open_destination(url)``).
PROTOCOLS: dict[str, ModuleType] = {scheme: module for module in (mllp, astm) for scheme in module.SCHEMES}


def open_destination(url: str):
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    module = PROTOCOLS.get(scheme)
    if module is None:
        raise EdgehemaError(f"--lis {url}: unknown LIS protocol {scheme or '(none)'!r} "
                            f"(known: {', '.join(f'{s}://' for s in PROTOCOLS)})")
    return module.open_destination(url)


__all__ = ["PROTOCOLS", "open_destination"]
