"""A small LIS for commissioning (``edgehema lis-listen``): python-hl7's asyncio MLLP server,
acknowledging every message and reporting what it holds. Resends (a control id seen before) are
acknowledged again and reported as resends, as a LIS that deduplicates would."""

from __future__ import annotations

import asyncio
from typing import Callable

import hl7


#: Short names of the LOINC codes edgehema sends, for a person reading the listener.
SHORT = {"789-8": "RBC", "777-3": "PLT", "17849-1": "RET%", "60474-4": "RET#"}


def summarize(message: hl7.Message) -> dict:
    """Control id, sample, species, observations and flags of an ORU^R01."""
    msh = message.segment("MSH")
    out = {"control_id": str(msh[10]), "sample_id": "", "species": "", "observations": [], "flags": [],
           "status": "F"}
    for seg in message:
        kind = str(seg[0])
        if kind == "OBR" and len(seg) > 3:
            out["sample_id"] = message.unescape(str(seg[3]))
            if len(seg) > 25 and str(seg[25]):
                out["status"] = str(seg[25])  # F final, C a correction of a result sent before
        elif kind == "PID" and len(seg) > 35:
            out["species"] = message.unescape(str(seg[35][0][0]))
        elif kind == "OBX" and len(seg) > 6:
            ident = seg[3][0]
            out["observations"].append({
                "code": str(ident[0]),
                "name": SHORT.get(str(ident[0])) or (message.unescape(str(ident[1])) if len(ident) > 1 else ""),
                "value": str(seg[5]), "unit": str(seg[6][0][0]) if str(seg[6]) else "",
                "flag": str(seg[8]) if len(seg) > 8 else "",
            })
        elif kind == "NTE" and len(seg) > 3 and str(seg[3]).startswith("FLAG "):
            out["flags"].append(message.unescape(str(seg[3]))[5:].split(":")[0])
    return out


async def serve(host: str, port: int, ack_code: str, report: Callable[[dict], None], count: int | None = None) -> None:
    import hl7.mllp

    seen: set[str] = set()
    done = asyncio.Event()

    async def on_client(reader, writer):
        try:
            while not reader.at_eof():
                message = await reader.readmessage()
                record = summarize(message)
                record["resend"] = record["control_id"] in seen
                seen.add(record["control_id"])
                record["ack"] = ack_code
                writer.writemessage(message.create_ack(ack_code, application="edgehema-lis-listen"))
                await writer.drain()
                report(record)
                if count is not None and len(seen) >= count:
                    done.set()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await hl7.mllp.start_hl7_server(on_client, host, port, encoding="utf-8")
    async with server:
        await done.wait()
