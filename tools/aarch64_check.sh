#!/usr/bin/env bash
# The device runtime on linux/aarch64 (Raspberry Pi 4/5 class), proven without ARM hardware:
# an arm64 Debian bookworm root (Python 3.11) made with mmdebstrap, run under qemu user-mode
# emulation (qemu-user-static + binfmt_misc), with Debian packages and the package registry only.
#
#   sudo tools/aarch64_check.sh            # from the project's root; run as root (chroot, mount)
#
# In the arm64 root it installs the device runtime as a device would (`pip install .`, no
# extras), then runs --version, simulate, classify (default model, and --backend onnx), the demo
# (an emulated instrument streaming over a pseudo-terminal to `edgehema stream`) and replay of the
# demo's archive. The same files are classified on this (x86_64) machine with the same commit, and
# the counts must be identical. It prints which dependencies came as aarch64 wheels, the installed
# footprint, and peak RSS (GNU time) of classify and of the demo on a 150,000-event sample.
# Figures of the last run: docs/device.md. Not in CI: the emulated run takes longer than CI's budget
# leaves (see docs/device.md for its time).
#
# A second phase runs on an emulated CPU whose int8 TFLite engine is wrong (QEMU_CPU=max: SME, whose
# emulation LiteRT's kernels trip over), with /sys mounted so that LiteRT's CPU probe sees SME and a
# Raspberry Pi 5's /proc/cpuinfo bound in so that onnxruntime's cpuinfo reads an arm64 CPU (with the
# x86_64 host's it crashes). There the check expects the start-up self-test to catch the engine:
# `selftest` fails tflite, `classify` and `demo` fall back to onnxruntime with one warning and the
# same counts, and `--backend tflite` is refused. EDGEHEMA_ARM64_SME=0 skips that phase.
#
#   EDGEHEMA_ARM64_COMPILER=1 sudo -E tools/aarch64_check.sh
#
# puts gcc and the Python headers in the root first, so that `pip install .` builds the two
# optional C extensions (the CSV tokenizer, the latent-space kernels) on aarch64, as on a device
# image that has a compiler; the check then says whether they were built and holds the tokenizer
# to numpy's loadtxt bit for bit on the big sample (counts are compared with x86_64 as always).
set -euo pipefail

PROJECT=$(cd "$(dirname "$0")/.." && pwd)
ROOT=${EDGEHEMA_ARM64_ROOT:-/var/tmp/edgehema-arm64-root}
OUT=${EDGEHEMA_ARM64_OUT:-$PROJECT/aarch64-check}
HOST_PY=${HOST_PY:-$PROJECT/.venv/bin/python}
EVENTS=150000
mkdir -p "$OUT"

need() { command -v "$1" >/dev/null 2>&1; }
if ! need qemu-aarch64-static || ! need mmdebstrap || ! need update-binfmts; then
    apt-get install -y -q qemu-user-static binfmt-support mmdebstrap
fi
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || { echo "aarch64_check: qemu-aarch64 is not registered with binfmt_misc" >&2; exit 1; }

if [ ! -x "$ROOT/usr/bin/python3" ]; then
    mmdebstrap --arch=arm64 --variant=apt \
        --include=python3,python3-venv,python3-pip,ca-certificates,procps,time \
        bookworm "$ROOT" http://deb.debian.org/debian
fi

# The project as committed (what a device would install), not the work tree.
rm -rf "$ROOT/opt/edgehema" && mkdir -p "$ROOT/opt/edgehema"
git -C "$PROJECT" archive HEAD | tar -x -C "$ROOT/opt/edgehema"
COMMIT=$(git -C "$PROJECT" rev-parse --short HEAD)
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
# Behind a TLS-intercepting proxy (as on the machines here) pip in the root needs the host's CAs:
# the host's bundle is Debian's plus those.
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
# A clean environment in the root: none of this machine's pip settings (local wheel folders).
inroot() { chroot "$ROOT" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 "$@"; }

mounts=()
cleanup() { for m in "${mounts[@]}"; do umount -l "$m" 2>/dev/null || true; done; }
trap cleanup EXIT
# /sys is not mounted on purpose: under qemu it describes the x86_64 host's CPUs, and onnxruntime's
# cpuinfo then crashes (segmentation fault, seen here); without it cpuinfo only complains on stderr.
for m in proc dev dev/pts; do
    mkdir -p "$ROOT/$m"
    case $m in
        proc) mount -t proc proc "$ROOT/proc" ;;
        dev) mount --bind /dev "$ROOT/dev" ;;
        dev/pts) mount --bind /dev/pts "$ROOT/dev/pts" ;;
    esac
    mounts=("$ROOT/$m" "${mounts[@]}")
done

[ -x "$ROOT/usr/bin/time" ] || inroot sh -c 'apt-get update -q && apt-get install -y -q time' >/dev/null
if [ "${EDGEHEMA_ARM64_COMPILER:-0}" = 1 ]; then
    [ -x "$ROOT/usr/bin/gcc" ] && [ -e "$ROOT/usr/include/python3.11/Python.h" ] || \
        inroot sh -c 'apt-get update -q && apt-get install -y -q gcc python3-dev' >/dev/null
else
    # Without a compiler, as a minimal device image: no leftover from a run with one.
    [ -x "$ROOT/usr/bin/gcc" ] && inroot sh -c 'apt-get remove -y -q gcc python3-dev' >/dev/null || true
fi

cat > "$ROOT/opt/check.sh" <<'INNER'
set -euo pipefail
cd /opt
export PIP_DISABLE_PIP_VERSION_CHECK=1
uname -m
python3 --version
rm -rf /opt/venv /opt/work && mkdir -p /opt/work
t0=$(date +%s)
python3 -m venv /opt/venv
/opt/venv/bin/pip install --progress-bar off /opt/edgehema > /opt/work/pip-install.log 2>&1 \
    || { tail -20 /opt/work/pip-install.log; exit 1; }
grep -Eo '[A-Za-z0-9_.+-]+-(cp3[0-9]+|py3|py2\.py3)-[A-Za-z0-9_.]+-[A-Za-z0-9_.]+\.whl' /opt/work/pip-install.log | sort -u > /opt/work/wheels.txt || true
echo "install_s $(( $(date +%s) - t0 ))"
echo "footprint_mb $(du -sm /opt/venv | cut -f1)"
/opt/venv/bin/pip list --format=freeze > /opt/work/pip-freeze.txt
E=/opt/venv/bin/edgehema
$E --version
/opt/venv/bin/python - <<'PY'
import importlib.util
for name in ("edgehema.formats._fastcsv", "edgehema.model._fastassign"):
    print(f"extension {name}: {'built' if importlib.util.find_spec(name) else 'not built (no compiler)'}")
from edgehema.formats._table import csv_reader_state
print("csv reader:", csv_reader_state())
from edgehema.model.classifier import Classifier
from edgehema.model.clustering import kernels_state
Classifier(None, threads=1)  # loading runs the known answer through the kernels and numpy
print("assignment:", kernels_state())
PY
t0=$(date +%s)
$E simulate --species dog --samples 3 --seed 11 -n 20000 -o /opt/work/samples > /dev/null
$E simulate --species cat --seed 12 -n __EVENTS__ -o /opt/work/big.csv > /dev/null
echo "simulate_s $(( $(date +%s) - t0 ))"
t0=$(date +%s)
/usr/bin/time -f "classify_rss_kb %M" -o /opt/work/rss_classify.txt \
    $E classify --json --jobs 1 /opt/work/big.csv /opt/work/samples/*.csv > /opt/work/classify.jsonl
echo "classify_s $(( $(date +%s) - t0 ))"
$E classify --json --jobs 1 --backend onnx /opt/work/big.csv /opt/work/samples/*.csv > /opt/work/classify_onnx.jsonl
/opt/venv/bin/python - <<'PY'
# The tokenizer (where built) against numpy's loadtxt on the big sample, bit for bit.
import numpy as np
from pathlib import Path
from edgehema.formats import _table
if _table.native_available():
    path = Path("/opt/work/big.csv")
    names, delimiter = _table.read_header(path)
    got = _table._parse_native(path, delimiter, len(names), np.dtype(np.float32), "utf-8-sig")
    ref = np.loadtxt(path, delimiter=delimiter, skiprows=1, dtype=np.float32, ndmin=2)
    same = got is not None and got.tobytes() == ref.tobytes()
    print(f"tokenizer vs numpy.loadtxt on {ref.shape[0]:,} events: {'identical' if same else 'DIFFER'}")
    if not same:
        raise SystemExit(1)
PY
t0=$(date +%s)
/usr/bin/time -f "demo_rss_kb %M" -o /opt/work/rss_demo.txt \
    $E demo --samples 1 -n __EVENTS__ --rate 0 --seed 5 --workdir /opt/work/demo > /opt/work/demo.txt
echo "demo_s $(( $(date +%s) - t0 ))"
archives=$(find /opt/work/demo -name '*.ehw' | sort)
$E replay $archives > /opt/work/replay.jsonl
cat /opt/work/rss_classify.txt /opt/work/rss_demo.txt
INNER
sed -i "s/__EVENTS__/$EVENTS/g" "$ROOT/opt/check.sh"

echo "== aarch64 (qemu user-mode), commit $COMMIT"
inroot /bin/bash /opt/check.sh | tee "$OUT/arm64.txt"
cp "$ROOT"/opt/work/{wheels.txt,pip-freeze.txt,classify.jsonl,classify_onnx.jsonl,replay.jsonl,demo.txt} "$OUT/"

if [ "${EDGEHEMA_ARM64_SME:-1}" = 1 ]; then
    echo "== aarch64 with SME (QEMU_CPU=max, /sys mounted, a Raspberry Pi 5 /proc/cpuinfo)"
    {
        for n in 0 1 2 3; do  # a Raspberry Pi 5: four Cortex-A76 cores
            printf 'processor\t: %s\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\n' "$n"
            printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\nCPU part\t: 0xd0b\nCPU revision\t: 1\n\n'
        done
        printf 'Hardware\t: BCM2712\nModel\t\t: Raspberry Pi 5 Model B Rev 1.0\n'
    } > "$OUT/rpi5-cpuinfo"
    mkdir -p "$ROOT/sys"
    mount -t sysfs sysfs "$ROOT/sys" && mounts=("$ROOT/sys" "${mounts[@]}")
    mount --bind "$OUT/rpi5-cpuinfo" "$ROOT/proc/cpuinfo" && mounts=("$ROOT/proc/cpuinfo" "${mounts[@]}")
    cat > "$ROOT/opt/check_sme.sh" <<'INNER'
set -uo pipefail
E=/opt/venv/bin/edgehema
W=/opt/work/sme && rm -rf $W && mkdir -p $W
$E selftest > $W/selftest.txt 2>&1; echo "selftest_exit $?"
grep -E "engine (tflite|onnx)" $W/selftest.txt | cut -c1-160
$E classify --json --jobs 1 /opt/work/samples/*.csv > $W/classify.jsonl 2> $W/classify.err; echo "classify_exit $?"
echo "classify_warnings $(grep -c 'edgehema: warning:' $W/classify.err)"; cut -c1-200 $W/classify.err
$E classify --jobs 1 --backend tflite /opt/work/samples/*.csv > /dev/null 2> $W/forced.err; echo "forced_tflite_exit $?"
cut -c1-200 $W/forced.err
$E demo --samples 1 -n 20000 --seed 5 > $W/demo.txt 2> $W/demo.err; echo "demo_exit $?"
echo "demo_warnings $(grep -c 'edgehema: warning:' $W/demo.err)"; cut -c1-200 $W/demo.err
INNER
    inroot env QEMU_CPU=max /bin/bash /opt/check_sme.sh | tee "$OUT/arm64-sme.txt"
    cp "$ROOT/opt/work/sme/classify.jsonl" "$OUT/classify_sme.jsonl"
fi

echo "== x86_64, the same files and commit"
mkdir -p "$OUT/x86"
"$HOST_PY" -m edgehema classify --json --jobs 1 "$ROOT/opt/work/big.csv" "$ROOT"/opt/work/samples/*.csv > "$OUT/x86/classify.jsonl"
"$HOST_PY" -m edgehema classify --json --jobs 1 --backend onnx "$ROOT/opt/work/big.csv" "$ROOT"/opt/work/samples/*.csv > "$OUT/x86/classify_onnx.jsonl"
"$HOST_PY" -m edgehema replay $(find "$ROOT/opt/work/demo" -name '*.ehw' | sort) > "$OUT/x86/replay.jsonl"

"$HOST_PY" - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
# What the laboratory gets must be identical: events per class, cells, RET %, concentrations, flags.
COUNTS = ("events", "cells", "retic_percent", "concentration", "flags")

def rows(path):
    return {r["sample_id"]: r for r in map(json.loads, path.read_text().splitlines())}

ok = True
sme = out / "arm64-sme.txt"
if sme.exists():
    # On the SME CPU the engine must be caught: selftest fails, classify falls back with one warning
    # and counts as onnxruntime does elsewhere, a forced tflite is refused, the demo warns.
    said = dict(line.split(" ", 1) for line in sme.read_text().splitlines() if line.split(" ", 1)[0].endswith(
        ("_exit", "_warnings")) and " " in line)
    expect = {"selftest_exit": "1", "classify_exit": "0", "classify_warnings": "1", "forced_tflite_exit": "1",
              "demo_exit": "0", "demo_warnings": "1"}
    caught = all(said.get(k, "").strip() == v for k, v in expect.items())
    arm_sme = rows(out / "classify_sme.jsonl") if (out / "classify_sme.jsonl").exists() else {}
    x86_onnx = rows(out / "x86" / "classify_onnx.jsonl")
    same = bool(arm_sme) and all({k: arm_sme[s].get(k) for k in COUNTS} == {k: x86_onnx[s].get(k) for k in COUNTS}
                                 for s in arm_sme)
    seen = ", ".join(k + " " + said.get(k, "?").strip() for k in expect)
    print(f"SME CPU: the wrong tflite engine {'caught' if caught else 'NOT caught as expected'} "
          f"({seen}); counts after the fallback "
          f"{'identical' if same else 'DIFFER'} to onnxruntime on x86_64")
    ok &= caught and same
for name in ("classify.jsonl", "classify_onnx.jsonl", "replay.jsonl"):
    arm, x86 = rows(out / name), rows(out / "x86" / name)
    same = sorted(arm) == sorted(x86) and len(arm) > 0 and all(
        {k: arm[s].get(k) for k in COUNTS} == {k: x86[s].get(k) for k in COUNTS} for s in arm)
    ok &= same
    # Quality-control figures may differ in their last digits (float kernels differ between CPUs).
    qc = [f"{s} {k} {arm[s]['qc'][k]} vs {x86[s]['qc'][k]}" for s in arm if s in x86
          for k in arm[s].get("qc", {}) if arm[s]["qc"][k] != x86[s]["qc"].get(k)]
    print(f"{name}: {len(arm)} samples, counts and flags {'identical' if same else 'DIFFER'} on aarch64 and x86_64"
          + (f"; qc figures that differ: {'; '.join(qc)}" if qc else "; qc figures identical too"))
    if not same:
        for s in arm:
            print("  aarch64:", {k: arm[s].get(k) for k in COUNTS}, "\n  x86_64: ", {k: x86.get(s, {}).get(k) for k in COUNTS})
aarch64 = [w for w in (out / "wheels.txt").read_text().split() if "aarch64" in w]
print("aarch64 wheels:", ", ".join(sorted({w.split("-")[0] for w in aarch64})) or "none")
print("pure-Python wheels:", ", ".join(sorted({w.split("-")[0] for w in (out / "wheels.txt").read_text().split()
                                              if "-none-any" in w})))
sys.exit(0 if ok else 1)
PY
