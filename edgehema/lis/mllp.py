"""HL7 v2.5.1 over MLLP (TCP): ``mllp://HOST:PORT[?timeout=S&application=APP&facility=FAC&sender=ID&images=1]``
(``images=1``: each sample's scattergram PNG goes along as an OBX of type ED, where there is one).

One connection per message, through python-hl7's asyncio MLLP client: connect, send the
ORU^R01, wait for the ACK (``timeout`` seconds each, default 10). An ACK whose MSA-2 names another
message is not taken as this one's acknowledgement.
"""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs, urlsplit

from edgehema.exceptions import EdgehemaError, LisRejected
from edgehema.lis.hl7_message import build_oru, read_ack

SCHEMES = ("mllp",)
DEFAULT_PORT = 2575




class MllpDestination:
    def __init__(self, url: str):
        parts = urlsplit(url)
        if parts.scheme != "mllp" or not parts.hostname:
            raise EdgehemaError(f"--lis {url}: expected mllp://HOST:PORT")
        try:
            self.port = parts.port or DEFAULT_PORT
        except ValueError:
            raise EdgehemaError(f"--lis {url}: the port is not a number") from None
        self.host = parts.hostname
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - {"timeout", "application", "facility", "sender", "images"}
        if unknown:
            raise EdgehemaError(f"--lis {url}: unknown option(s) {', '.join(sorted(unknown))} "
                                "(timeout, application, facility, sender, images)")
        if query.get("images", "0") not in ("0", "1", "true", "false", "yes", "no"):
            raise EdgehemaError(f"--lis {url}: images must be 1 or 0")
        self.images = query.get("images", "0") in ("1", "true", "yes")
        try:
            self.timeout = float(query.get("timeout", 10))
        except ValueError:
            raise EdgehemaError(f"--lis {url}: timeout must be a number of seconds") from None
        self.application = query.get("application", "")
        self.facility = query.get("facility", "")
        self.sender = query.get("sender", "")
        self.url = f"mllp://{self.host}:{self.port}"

    def render(self, result: dict, control_id: str, status: str = "F") -> str:
        return build_oru(result, control_id, sending_facility=self.sender, receiving_application=self.application,
                         receiving_facility=self.facility, images=self.images, status=status)

    def send(self, message: str, control_id: str) -> str:
        """Send and wait for the acknowledgement; returns its text. Raises OSError/TimeoutError when
        the LIS cannot be reached or does not answer, LisRejected when it refuses the message."""
        ack = asyncio.run(self._send(message))
        try:
            code, acked, note = read_ack(ack)
        except ValueError as exc:
            raise ConnectionError(f"the answer is {exc}") from None
        if acked and acked != control_id:
            raise ConnectionError(f"the ACK names message {acked}, not {control_id}")
        if code in ("AA", "CA"):
            return f"{code} {note}".strip()
        if code in ("AE", "AR", "CE", "CR"):
            raise LisRejected(f"{code} {note}".strip())
        raise ConnectionError(f"unknown acknowledgement code {code!r}")

    async def _send(self, message: str) -> str:
        import hl7.mllp

        reader, writer = await asyncio.wait_for(hl7.mllp.open_hl7_connection(self.host, self.port, encoding="utf-8"),
                                                self.timeout)
        try:
            writer.writemessage(message)
            await asyncio.wait_for(writer.drain(), self.timeout)
            answer = await asyncio.wait_for(reader.readmessage(), self.timeout)
            return str(answer)
        except asyncio.IncompleteReadError:
            raise ConnectionError("the LIS closed the connection before acknowledging") from None
        except hl7.mllp.InvalidBlockError:
            raise ConnectionError("the LIS answered with something that is not an MLLP block") from None
        finally:
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 2)
            except (OSError, asyncio.TimeoutError):
                pass


def open_destination(url: str) -> MllpDestination:
    return MllpDestination(url)
