"""Counting errors per species preset with the self-checked adaptation (the device's default), the
adaptation unchecked, and no adaptation, on the same simulated samples (docs/accuracy.md).

    .venv/bin/python tools/adaptation_by_species.py [SPECIES,...] [SAMPLES] [--json OUT.json]
"""
import json
import sys
import time
import zlib

import numpy as np

from edgehema.counts.result import result_from_inference
from edgehema.model.classifier import Classifier
from edgehema.simulator import SampleSimulator

SPECIES = "goat,sheep,cattle,alpaca,ferret,rabbit,human,dog,cat,horse"
MODES = ("checked", "unchecked", "none")


def main(argv: list[str]) -> None:
    out = argv[argv.index("--json") + 1] if "--json" in argv else None
    args = [a for a in argv if a != "--json" and a != out]
    species = (args[0] if args else SPECIES).split(",")
    n = int(args[1]) if len(args) > 1 else 10
    clf = Classifier(None, adapt=True, threads=2)
    unchecked = Classifier(None, adapt=True, threads=2)
    unchecked.unadapted = lambda inf: None  # adaptation kept whatever it does (the old behaviour)
    rows = []
    for sp in species:
        for k in range(n):
            seed = 9000 + 37 * k + zlib.crc32(sp.encode()) % 1000
            sim = SampleSimulator(sp, seed=seed).generate(150_000)
            graph = clf.run_graph(sim.sample.events)
            t = sim.truth
            for mode in MODES:
                method = unchecked if mode == "unchecked" else clf
                inf = method.from_graph(graph, adapt=mode != "none")
                c = result_from_inference(sim.sample, inf, method, time.perf_counter()).counts
                rows.append(dict(species=sp, k=k, seed=seed, mode=mode, flags=c.flags,
                                 rbc=100 * (c.cells["rbc"] - t["cells"]["rbc"]) / t["cells"]["rbc"],
                                 plt=100 * (c.cells["plt"] - t["cells"]["plt"]) / t["cells"]["plt"],
                                 ret=(c.retic_percent or 0) - t["retic_percent"]))
    print(f"{'species':8s} {'adaptation':10s} {'RBC |err| % med / max':>22s} {'PLT |err| % med / max':>22s} "
          f"{'RET |err| pt med / max':>22s} {'flagged':>8s} {'rejected':>8s}")
    for sp in species:
        for mode in MODES:
            r = [x for x in rows if x["species"] == sp and x["mode"] == mode]

            def a(key):
                return np.abs([x[key] for x in r])
            flagged = sum(bool(set(x["flags"]) - {"species_not_validated"}) for x in r)
            rejected = sum("adaptation_rejected" in x["flags"] for x in r)
            print(f"{sp:8s} {mode:10s} {np.median(a('rbc')):10.2f} / {a('rbc').max():8.2f} "
                  f"{np.median(a('plt')):10.2f} / {a('plt').max():8.2f} {np.median(a('ret')):10.2f} / {a('ret').max():8.2f} "
                  f"{flagged:>5d}/{len(r):<2d} {rejected:>5d}")
    if out:
        with open(out, "w") as fh:
            json.dump(rows, fh)


if __name__ == "__main__":
    main(sys.argv[1:])
