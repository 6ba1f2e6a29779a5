"""ASTM E1394 records over ASTM E1381 (CLSI LIS01-A2 / LIS2-A2) low-level framing, on a serial
line or TCP: ``astm+serial:///dev/ttyUSB1?baud=9600`` or ``astm+tcp://HOST:PORT``.

Records (E1394): H (header; H.3 carries the outbox's message control id, so a resend is recognisably
the same result), P (the sample), C (species), O (the order: the sample id and the tests), C (model,
then one per flag), R (one per observation: value, unit, abnormal flag ``A`` when the result is
flagged, status ``F``), L (terminator). The observations and their codes are those of the HL7 message
(:mod:`.hl7_message`); ASTM's universal test id carries the local code and the LOINC code.

Framing (E1381): establishment ENQ → ACK (NAK: the LIS is busy; tried again later), then each
record in frames ``STX FN text ETB|ETX C1 C2 CR LF``: FN counts 1..7, 0, 1... through the message; a
record longer than 240 characters continues in the next frame (ETB), the last frame of a record ends
with ETX; the checksum is the sum of the bytes from FN through ETB/ETX modulo 256, two upper-case hex
digits. Each frame waits 15 s for ACK; NAK sends the same frame again, 6 tries at most, then the
transfer is ended with EOT and the message stays queued. Termination: EOT. Both transports go through
pyserial's ``serial_for_url`` (TCP as ``socket://``), as the instrument link does.
"""

from __future__ import annotations

from datetime import datetime, timezone
from urllib.parse import parse_qs, urlsplit

from edgehema.exceptions import EdgehemaError
from edgehema.lis.hl7_message import observations as result_observations
from edgehema import __version__

SCHEMES = ("astm+tcp", "astm+serial")

ENQ, ACK, NAK, EOT = b"\x05", b"\x06", b"\x15", b"\x04"
STX, ETX, ETB, CR, LF = b"\x02", b"\x03", b"\x17", b"\x0d", b"\x0a"
#: Text characters per frame (LIS01-A2: a frame is at most 247 characters, 7 of them framing).
FRAME_TEXT = 240
#: Tries per frame before the transfer is given up (E1381: 6).
FRAME_TRIES = 6
#: Seconds the sender waits for the answer to ENQ or to a frame (E1381: 15).
REPLY_TIMEOUT = 15.0

SHORT = {"789-8": "RBC", "777-3": "PLT", "17849-1": "RET%", "60474-4": "RET#", "26511-6": "NEUT%",
         "26478-8": "LYMPH%", "26485-3": "MONO%", "26450-7": "EOS%", "30180-4": "BASO%",
         "38518-7": "IG%", "19048-8": "NRBC",
         # red-cell morphology grades (LOINC erythrocyte morphology panel 58408-6)
         "702-1": "ANISO", "738-5": "MACRO", "741-9": "MICRO", "728-6": "HYPO", "779-9": "POIK", "802-9": "SPHER",
         "10381-2": "TARGET", "774-0": "OVAL", "11274-8": "ELLIPT", "10380-4": "STOMAT", "7791-7": "DACRO",
         "7790-9": "BURR", "800-3": "SCHIST"}


def checksum(frame_body: bytes) -> bytes:
    """E1381 checksum of FN through ETB/ETX: the byte sum modulo 256 as two upper-case hex digits."""
    return f"{sum(frame_body) % 256:02X}".encode("ascii")


def frames(records: list[str], first_number: int = 1) -> list[bytes]:
    """The frames of a message: every record in frames of its own, split at FRAME_TEXT characters."""
    out = []
    number = first_number
    for record in records:
        text = (record + "\r").encode("latin-1", errors="replace")
        pieces = [text[i:i + FRAME_TEXT] for i in range(0, len(text), FRAME_TEXT)]
        for k, piece in enumerate(pieces):
            body = str(number % 8).encode() + piece + (ETX if k == len(pieces) - 1 else ETB)
            out.append(STX + body + checksum(body) + CR + LF)
            number += 1
    return out


def esc(value) -> str:
    """A value made safe for an ASTM field: the delimiters | \\ ^ & as escape sequences."""
    text = " ".join(str(value).split())
    return (text.replace("&", "&E&").replace("|", "&F&").replace("\\", "&R&").replace("^", "&S&"))


def _ts(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y%m%d%H%M%S")


def build_records(result: dict, control_id: str, *, receiver: str = "", now: datetime | None = None,
                  status: str = "F") -> list[str]:
    """The E1394 records (without their CR) of one sample's result. ``status``: ``F`` (final) or ``C``
    (a correction of results sent before: the order's report type, O-26, and each result's status, R-9)."""
    if status not in ("F", "C"):
        raise ValueError(f"result status {status!r}: F or C")

    now = now or datetime.now(timezone.utc)
    when = _ts(now)
    sample_id = esc(result.get("sample_id") or "unknown")
    instrument = esc(result.get("instrument_id") or "")
    flags = list(result.get("flags") or [])
    abnormal = "A" if flags else ""
    records = [f"H|\\^&|{esc(control_id)}||edgehema^{__version__}^{instrument}|||||{esc(receiver)}||P|1394-97|{when}",
               f"P|1||{sample_id}"]
    comments = 0

    def comment(text: str) -> str:
        nonlocal comments
        comments += 1
        return f"C|{comments}|I|{esc(text)}|G"

    if result.get("species"):
        records.append(comment(f"species: {result['species']}"))
    observations = [(f"^^^{SHORT[code]}^{code}" if system == "LN" else f"^^^{code}", value,
                     "" if unit in ("{cells}", "{events}") else unit)
                    for code, _name, system, value, unit in result_observations(result)]
    tests = "\\".join(t for t, _, _ in observations)
    order = ["O", "1", sample_id, "", tests, "R"] + [""] * 19 + [status]
    records.append("|".join(order))
    comments = 0
    model = result.get("model") or {}
    if result.get("kind") == "smear_slide":
        records.append(comment(f"smear slide {result.get('slide_id', '?')}: white-cell differential and red-cell "
                               f"morphology over {result.get('images', '?')} images"))
    if result.get("kind") == "smear":
        records.append(comment(f"smear image {result.get('source', '?')}, detector {result.get('engine', '?')}"))
    if model:
        records.append(comment(f"model {model.get('name', '?')} {model.get('version', '')} sha256 "
                               f"{model.get('sha256', '?')} on {model.get('backend', '?')}"))
    for flag in flags:
        detail = (result.get("flag_details") or {}).get(flag, "")
        records.append(comment(f"FLAG {flag}: {detail}" if detail else f"FLAG {flag}"))
    for k, (test, value, unit) in enumerate(observations, start=1):
        records.append("|".join(["R", str(k), test, value, unit, "", abnormal, "", status, "", "", when, when,
                                 instrument]))
    records.append("L|1|N")
    return records


class AstmDestination:
    def __init__(self, url: str):
        parts = urlsplit(url)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - {"timeout", "baud", "receiver"}
        if unknown:
            raise EdgehemaError(f"--lis {url}: unknown option(s) {', '.join(sorted(unknown))} (timeout, baud, receiver)")
        try:
            self.timeout = float(query.get("timeout", REPLY_TIMEOUT))
            baud = int(query.get("baud", 9600))
        except ValueError:
            raise EdgehemaError(f"--lis {url}: timeout and baud must be numbers") from None
        self.receiver = query.get("receiver", "")
        if parts.scheme == "astm+tcp":
            if not parts.hostname:
                raise EdgehemaError(f"--lis {url}: expected astm+tcp://HOST:PORT")
            try:
                port = parts.port
            except ValueError:
                raise EdgehemaError(f"--lis {url}: the port is not a number") from None
            if port is None:
                raise EdgehemaError(f"--lis {url}: expected astm+tcp://HOST:PORT (no port given)")
            self.port_url, self.baud = f"socket://{parts.hostname}:{port}", 9600
            self.url = f"astm+tcp://{parts.hostname}:{port}"
        else:
            if not parts.path:
                raise EdgehemaError(f"--lis {url}: expected astm+serial:///dev/ttyUSB0?baud=9600")
            self.port_url, self.baud = parts.path, baud
            self.url = f"astm+serial://{parts.path}"

    def render(self, result: dict, control_id: str, status: str = "F") -> str:
        return "\r".join(build_records(result, control_id, receiver=self.receiver, status=status)) + "\r"

    def send(self, message: str, control_id: str) -> str:
        """One E1381 transfer: establishment, every frame acknowledged, termination. Raises OSError
        (ConnectionError, TimeoutError) when the transfer does not complete; the message stays queued."""
        import serial

        records = [r for r in message.split("\r") if r]
        try:
            port = serial.serial_for_url(self.port_url, baudrate=self.baud, timeout=self.timeout)
        except (serial.SerialException, ValueError) as exc:
            raise ConnectionError(_port_problem(exc)) from None
        try:
            port.reset_input_buffer()
            port.write(ENQ)
            reply = _reply(port)
            if reply == NAK:
                raise ConnectionError("the LIS is busy (NAK to ENQ)")
            if reply == ENQ:
                raise ConnectionError("the LIS wants to send at the same time (ENQ to ENQ)")
            if reply != ACK:
                raise TimeoutError(f"no answer to ENQ within {self.timeout:g} s")
            for k, frame in enumerate(frames(records), start=1):
                for _ in range(FRAME_TRIES):
                    port.write(frame)
                    reply = _reply(port)
                    if reply in (ACK, EOT):  # EOT: the LIS asks to stop after this frame; it has it
                        break
                    if reply != NAK:
                        port.write(EOT)
                        raise TimeoutError(f"no answer to frame {k} within {self.timeout:g} s")
                else:
                    port.write(EOT)
                    raise ConnectionError(f"frame {k} refused {FRAME_TRIES} times (NAK); transfer ended")
            port.write(EOT)
            port.flush()
            return f"ACK x{len(frames(records))} frames"
        except serial.SerialException as exc:
            raise ConnectionError(_port_problem(exc)) from None
        finally:
            port.close()


def _reply(port) -> bytes:
    """The next control character from the LIS (ACK, NAK, ENQ, EOT), skipping anything else; b"" on timeout."""
    while True:
        byte = port.read(1)
        if not byte or byte in (ACK, NAK, ENQ, EOT):
            return byte


def _port_problem(exc: BaseException) -> str:
    text = str(exc)
    if "Connection refused" in text or "111" in text:
        return "connection refused (is the LIS listening?)"
    return text or type(exc).__name__


def open_destination(url: str) -> AstmDestination:
    return AstmDestination(url)


def receive(read, write, report) -> None:
    """The LIS side of E1381, for ``edgehema lis-listen --astm``: ACK to ENQ, every frame checked
    (checksum, frame number) and ACKed or NAKed, records reported at EOT as one message.
    ``read(n)`` returns b"" when the line closes."""
    while True:
        byte = read(1)
        if not byte:
            return
        if byte != ENQ:
            continue
        write(ACK)
        expected, records, partial, problems = 1, [], b"", []
        while True:
            byte = read(1)
            if not byte:
                return
            if byte == EOT:
                report(records, problems)
                break
            if byte != STX:
                continue
            frame = b""
            while not frame.endswith(CR + LF):
                chunk = read(1)
                if not chunk:
                    return
                frame += chunk
            body, received = frame[:-4], frame[-4:-2]
            if len(body) < 2 or checksum(body) != received:
                problems.append(f"frame {expected % 8}: bad checksum, NAK")
                write(NAK)
                continue
            if int(body[:1]) != expected % 8:
                problems.append(f"frame number {body[:1].decode()} where {expected % 8} was due")
            expected += 1
            partial += body[1:-1]
            if body[-1:] == ETX:
                records.append(partial.rstrip(CR).decode("latin-1"))
                partial = b""
            write(ACK)
