"""Read a corpus of FCS files with edgehema and say, per file, read or refused and why.

    python tools/fcs_corpus.py DIR_OR_FILE... [--reference ref.json ...] [--markdown]

Every ``*.fcs`` / ``*.lmd`` below the given folders is described (HEADER, TEXT and the whole DATA
segment decoded, every data set of a multi-data-set file listed). With ``--reference`` (JSON written
by tools/record_fcs_fixture.py with fcsparser, an independent reader) the event count, channel
names and recorded rows of raw values are compared too. ``--markdown`` prints the table that
docs/formats.md carries. The corpus used there comes from registry packages of FCS readers
(fcsparser, FlowCytometryTools, cytoflow) and ../shared/data/fcs; nothing of it is committed.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

from edgehema.exceptions import EdgehemaError
from edgehema.formats import describe_file
from edgehema.formats import fcs_format


def corpus_files(roots: list[str]) -> list[tuple[Path, Path]]:
    """(root, file) pairs, sorted, for every FCS-like file below the roots."""
    out = []
    for root in map(Path, roots):
        if root.is_file():
            out.append((root.parent, root))
            continue
        out += [(root, p) for p in sorted(root.rglob("*")) if p.suffix.lower() in (".fcs", ".lmd") and p.is_file()]
    return out


def check(root: Path, path: Path, references: dict) -> dict:
    key = str(path.relative_to(root))
    row = {"file": key, "bytes": path.stat().st_size}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            desc = describe_file(path)
        except EdgehemaError as exc:
            row.update(status="refused", why=str(exc).replace(str(path), path.name))
            desc = None
        if desc is not None:
            row.update(status="read", version=desc["version"], events=desc["events"], channels=len(desc["channels"]),
                       data_sets=desc["data_sets"], quirks=desc["quirks"], profile=desc["profile"])
            ref = references.get(key) or references.get(path.name)
            if ref is not None:
                row["independent"] = _compare(path, desc, ref)
        elif (ref := references.get(key) or references.get(path.name)) is not None:
            row["independent"] = "also refuses" if "error" in ref else f"reads {ref['events']} events"
    row["raw_warnings"] = len(caught)
    return row


def _compare(path: Path, desc: dict, ref: dict) -> str:
    if "error" in ref:
        return f"refuses ({ref['error'][:60]})"
    if desc["events"] != ref["events"] or desc["channels"] != ref["channels"]:
        return f"differs: {ref['events']} events, channels {ref['channels'][:3]}..."
    parsed = fcs_format.parse(path)
    raw = fcs_format._event_array(parsed.flow, path, preprocess=False, base=parsed.base).astype(np.float64)
    for r, values in ref["rows"].items():
        if not np.allclose(raw[int(r)], values, rtol=1e-6, atol=1e-9):
            return f"differs at event {r}"
    return f"agrees ({len(ref['rows'])} rows compared)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--reference", action="append", default=[], help="fcsparser figures (JSON), repeatable")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    references: dict = {}
    for ref in args.reference:
        references.update(json.loads(Path(ref).read_text()))
    rows = [check(root, path, references) for root, path in corpus_files(args.paths)]
    if not args.markdown:
        for row in rows:
            print(json.dumps(row))
        return 0
    print("| file | bytes | edgehema | events × channels | data sets | quirks reported | fcsparser |")
    print("|---|---:|---|---|---:|---|---|")
    for row in rows:
        if row["status"] == "read":
            what = f"read (FCS {row['version']})"
            shape = f"{row['events']:,} × {row['channels']}"
            quirks = "; ".join(row["quirks"]) or "none"
            sets = str(row["data_sets"])
        else:
            what, shape, sets = f"refused: {row['why']}", "", ""
            quirks = ""
        print(f"| {row['file']} | {row['bytes']:,} | {what} | {shape} | {sets} | {quirks} | {row.get('independent', '')} |")
    read = sum(r["status"] == "read" for r in rows)
    warned = sum(r["raw_warnings"] > 0 for r in rows)
    print(f"\n{len(rows)} files: {read} read, {len(rows) - read} refused; raw library warnings on {warned} files.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
