"""Record reference figures for the shared FCS corpus with an independent reader (fcsparser).

fcsparser needs numpy < 2, so it is not a project dependency: run this once in a separate
environment (``pip install "numpy<2" "pandas<2.3" fcsparser``) and commit the JSON it writes.
The tests compare edgehema's FCS reader against these figures.

    python tools/record_fcs_fixture.py ../shared/data/fcs tests/fixtures/fcs_reference.json
"""

import json
import sys
from pathlib import Path

import fcsparser
import numpy as np


def _text(value) -> str:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)


def main(folder: str, out: str) -> None:
    records = {}
    root = Path(folder)
    # Keys are paths below the folder (file names for a flat folder such as ../shared/data/fcs).
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in (".fcs", ".lmd") and p.is_file()):
        key = str(path.relative_to(root))
        try:
            meta, data = fcsparser.parse(str(path), reformat_meta=True, channel_naming="$PnN")
        except Exception as exc:  # the broken files: record that the independent reader fails too
            records[key] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
            continue
        arr = data.to_numpy(dtype=np.float64)
        rows = sorted({0, 1, len(arr) // 2, len(arr) - 1})
        records[key] = {
            "version": _text(meta.get("__header__", {}).get("FCS format", b"")).replace("FCS", ""),
            "events": int(arr.shape[0]),
            "channels": [str(c) for c in data.columns],
            "rows": {str(r): [float(v) for v in arr[r]] for r in rows},
        }
    Path(out).write_text(json.dumps(records, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
