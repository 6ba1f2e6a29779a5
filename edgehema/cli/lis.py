"""``outbox`` and ``lis-listen``: the results queued for the laboratory information system, and a
small LIS to commission the link with. ``lis_sinks`` gives ``classify``, ``stream`` and ``replay``
their ``--lis`` sinks."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from edgehema.exceptions import EdgehemaError
from edgehema.cli._app import app

DEFAULT_OUTBOX = Path("edgehema-outbox.sqlite")


def lis_sinks(urls: List[str], outbox: Path, wait_s: float, policy: str = "new", resend: bool = False) -> list:
    """One LIS sink per ``--lis`` URL, all queueing in ``outbox``; each checks its URL before anything runs.
    ``policy``/``resend``: what a result the LIS was given before becomes (``edgehema.lis.outbox``)."""
    if not urls:  # nothing of the LIS code (hl7) is loaded when no LIS is asked for
        return []
    from edgehema.sinks.lis_sink import LisSink

    def log(line: str) -> None:
        sys.stderr.write(f"edgehema: {line}\n")

    return [LisSink(url, outbox, log=log, wait_s=wait_s, policy=policy, resend=resend) for url in urls]


@app.command()
def outbox(
    db: Path = typer.Option(DEFAULT_OUTBOX, "--db", help="The outbox: the stream's journal (edgehema-journal.sqlite) or classify's --outbox file."),
    status: Optional[str] = typer.Option(None, "--status", help="Only messages of this status: pending, sent or failed."),
    resend: Optional[List[int]] = typer.Option(None, "--resend", help="Queue this message again (its id; repeatable)."),
    resend_failed: bool = typer.Option(False, "--resend-failed", help="Queue every failed message again."),
    send: Optional[str] = typer.Option(None, "--send", metavar="URL", help="Send what is pending to this LIS now (mllp://HOST:PORT) and wait for it."),
    wait: float = typer.Option(60.0, "--wait", min=0.0, help="With --send: seconds to wait for the LIS."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per message."),
    show: Optional[int] = typer.Option(None, "--show", help="Print one message's text (its id)."),
    held: bool = typer.Option(False, "--held", help="List the results held for review (no sample id from the instrument) instead."),
    release: Optional[int] = typer.Option(None, "--release", metavar="HELD_ID", help="Queue a held result for its LIS under --sample-id (after review)."),
    sample_id: Optional[str] = typer.Option(None, "--sample-id", help="With --release: the sample id the held result belongs to."),
) -> None:
    """List the results queued for the LIS (pending, sent, failed), queue failed ones again, or send now.

    Every message keeps its control id for ever: a resend is recognisably the same result at the LIS."""
    from edgehema.lis.outbox import STATUSES, Outbox

    if not db.is_file():
        raise EdgehemaError(f"{db}: no such outbox (the stream queues in its journal; classify in --outbox)")
    if status is not None and status not in STATUSES:
        raise typer.BadParameter(f"--status must be one of {', '.join(STATUSES)}")
    if (release is None) != (sample_id is None):
        raise typer.BadParameter("--release HELD_ID and --sample-id ID go together")
    box = Outbox(db)
    try:
        if release is not None:
            return _release(box, db, release, sample_id)
        if held:
            return _list_held(box, as_json)
        if resend or resend_failed:
            n = box.resend(None if resend_failed else list(resend or []))
            typer.echo(f"{n} message(s) queued again")
        if send:
            from edgehema.sinks.lis_sink import LisSink

            box.close()
            sink = LisSink(send, db, log=lambda line: sys.stderr.write(f"edgehema: {line}\n"), wait_s=wait)
            elsewhere = sink.outbox.count("pending") - sink.pending()
            sink.close()
            box = Outbox(db)
            if elsewhere:
                sys.stderr.write(f"edgehema: {elsewhere} pending message(s) are queued for another LIS address "
                                 f"(the destination column); --send sends those of {sink.destination.url} only\n")
        if show is not None:
            found = [m for m in box.messages() if m.id == show]
            if not found:
                raise EdgehemaError(f"{db}: no message {show}")
            typer.echo(found[0].message.replace("\r", "\n"), nl=False)
            return
        rows = box.messages(status)
        for m in rows:
            if as_json:
                typer.echo(json.dumps({k: v for k, v in m.__dict__.items() if k != "message"}))
            else:
                typer.echo(f"{m.id:>6}  {m.status:<7}  {m.control_id}  {m.sample_id:<24}  {m.destination}  "
                           f"tries {m.attempts}  queued {m.queued_at}  "
                           + (f"sent {m.sent_at} ({m.ack})" if m.sent_at else (m.last_error or "")))
        if not as_json:
            typer.echo(f"{len(rows)} message(s): " + ", ".join(f"{box.count(s)} {s}" for s in STATUSES))
    finally:
        box.close()


def _release(box, db: Path, release: int, sample_id: str) -> None:
    """Queue a held result, after review, under the sample id a person gave it."""
    from edgehema.lis import open_destination

    dest = next((h["destination"] for h in box.held() if h["id"] == release), None)
    if dest is None:
        raise EdgehemaError(f"{db}: no held result {release} (edgehema outbox --held lists them)")
    done = box.release(release, sample_id, open_destination(dest).render)
    if done.action == "held":
        raise EdgehemaError(f"{db}: sample {sample_id} was given to {dest} before (message "
                            f"{done.control_id}): held result {release} not queued")
    typer.echo(f"held result {release} queued for {dest} as sample {sample_id} (message {done.row}, "
               f"control id {done.control_id}); edgehema outbox --send {dest} sends it now")


def _list_held(box, as_json: bool) -> None:
    rows = box.held()
    for h in rows:
        if as_json:
            typer.echo(json.dumps(h))
        else:
            typer.echo(f"{h['id']:>6}  {h['sample_id']:<24}  {h['destination']}  held {h['held_at']}  "
                       + (f"released as message {h['released_as']}" if h["released_as"] else h["reason"]))
    if not as_json:
        typer.echo(f"{len(rows)} result(s) held for review")


@app.command("lis-listen")
def lis_listen(
    port: int = typer.Option(2575, "--port", help="TCP port to listen on (MLLP)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    ack: str = typer.Option("AA", "--ack", help="Acknowledgement to answer with: AA, AE or AR (AE/AR to rehearse a refusing LIS)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per message received."),
    count: Optional[int] = typer.Option(None, "--count", min=1, help="Stop after this many distinct messages."),
    astm: bool = typer.Option(False, "--astm", help="Receive ASTM E1394 records in E1381 frames over TCP instead of HL7 over MLLP."),
) -> None:
    """A small LIS for commissioning: receive HL7 results over MLLP (or ASTM with --astm),
    acknowledge them, print what came.

    A message whose control id was received before is reported as a resend, not as a new result."""
    import asyncio

    from edgehema.lis.listener import serve

    if ack not in ("AA", "AE", "AR"):
        raise typer.BadParameter("--ack must be AA, AE or AR")
    if astm:
        return _listen_astm(host, port, as_json, count)

    def show(record: dict) -> None:
        if as_json:
            typer.echo(json.dumps(record))
            return
        tag = ("RESEND of " if record["resend"] else "") + ("CORRECTION " if record.get("status") == "C" else "")
        obs = ", ".join(f"{o['name']} {o['value']} {o['unit']}{' ' + o['flag'] if o['flag'] else ''}"
                        for o in record["observations"][:4])
        typer.echo(f"{tag}{record['control_id']} sample {record['sample_id']} ({record['species'] or '-'}): {obs}"
                   + (f"; flags: {', '.join(record['flags'])}" if record["flags"] else "") + f" -> {record['ack']}")

    try:
        asyncio.run(serve(host, port, ack, show, count))
    except OSError as exc:
        raise EdgehemaError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    except KeyboardInterrupt:
        pass


def _listen_astm(host: str, port: int, as_json: bool, count: Optional[int]) -> None:
    import socket

    from edgehema.lis.astm import receive

    seen: set[str] = set()
    server = socket.create_server((host, port), reuse_port=False)

    def report(records: list[str], problems: list[str]) -> None:
        header = next((r for r in records if r.startswith("H|")), "")
        control = header.split("|")[2] if header.count("|") >= 2 else ""
        order = next((r for r in records if r.startswith("O|")), "")
        sample = order.split("|")[2] if order.count("|") >= 2 else ""
        results = [r.split("|") for r in records if r.startswith("R|")]
        flags = [r.split("|")[3][5:].split(":")[0] for r in records if r.startswith("C|") and "|FLAG " in r]
        fields = order.split("|")
        status = fields[25] if len(fields) > 25 and fields[25] else "F"  # O-26: F final, C a correction
        record = {"control_id": control, "sample_id": sample, "resend": control in seen, "records": len(records),
                  "status": status,
                  "results": {r[2].split("^")[3] if r[2].count("^") >= 3 else r[2]: f"{r[3]} {r[4]}".strip()
                              for r in results if len(r) > 4},
                  "flags": flags, "problems": problems}
        seen.add(control)
        if as_json:
            typer.echo(json.dumps(record))
        else:
            shown = ", ".join(f"{k} {v}" for k, v in list(record["results"].items())[:4])
            typer.echo(f"{'RESEND of ' if record['resend'] else ''}{'CORRECTION ' if status == 'C' else ''}"
                       f"{control} sample {sample}: {shown}"
                       + (f"; flags: {', '.join(flags)}" if flags else "")
                       + (f"; PROBLEMS: {'; '.join(problems)}" if problems else ""))

    with server:
        while count is None or len(seen) < count:
            conn, _ = server.accept()
            with conn:
                receive(lambda n: conn.recv(n), conn.sendall, report)
