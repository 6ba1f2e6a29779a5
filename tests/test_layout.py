"""The house a newcomer enters (issue 33): rooms by stage, no import circles, a light package face.

These hold the layout, so that it does not drift back: at most ten modules directly in edgehema/,
no cycle among the project's modules (imports at module level, TYPE_CHECKING ones included), and
``import edgehema`` loads none of the heavy optional libraries.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("edgehema", "firmware_bridge", "export")
HEAVY = ("torch", "tensorflow", "cv2", "dask", "distributed", "optuna", "pandas", "hl7", "hl7apy", "pyvips",
         "ai_edge_litert", "tflite_runtime", "onnx", "matplotlib")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            parts = list(p.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = p
    return out


def _top_level_imports(path: Path, module: str, known: set[str]) -> set[str]:
    """Project modules ``module`` imports when it is imported (not imports inside functions)."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    package = module if is_pkg else module.rsplit(".", 1)[0]
    found: set[str] = set()

    def resolve(name: str) -> None:
        while name and name not in known:
            name = name.rsplit(".", 1)[0] if "." in name else ""
        if name and name != module:
            found.add(name)

    def visit(nodes) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                for a in node.names:
                    resolve(a.name)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                for a in node.names:
                    full = f"{base}.{a.name}"
                    resolve(full if full in known else base)
            elif isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for h in getattr(node, "handlers", []):
                    visit(h.body)
    visit(tree.body)
    return found


def test_no_import_cycle_among_the_projects_modules():
    mods = _modules()
    graph = {m: _top_level_imports(p, m, set(mods)) for m, p in mods.items()}
    # A package imports its submodules' parents implicitly: edges to a package's own children from
    # the package are the re-exports of its face, not a circle unless the child imports it back.
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if n.startswith(m + ".") or m.startswith(n + "."):
                continue  # a package and its own modules
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                walk(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            walk(m)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles[:10])


def test_at_most_ten_modules_directly_in_the_package():
    top = sorted(p.name for p in (ROOT / "edgehema").glob("*.py"))
    assert len(top) <= 10, top


def test_import_edgehema_loads_no_heavy_optional_library():
    code = ("import sys, edgehema; heavy = " + repr(HEAVY) +
            "; print(','.join(m for m in heavy if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", out


def test_firmware_bridge_imports_nothing_of_edgehema_and_the_runtime_never_imports_export():
    mods = _modules()
    for m, p in mods.items():
        deps = _top_level_imports(p, m, set(mods))
        text = p.read_text()
        if m.startswith("firmware_bridge"):
            assert not any(d.startswith(("edgehema", "export")) for d in deps) and "import edgehema" not in text, m
        if m.startswith("edgehema"):
            # (the workstation commands, export and train, load it inside the command, when run)
            assert not any(d.startswith("export") for d in deps), m


def test_the_event_bundle_contract_is_read_in_the_bundle_module_only():
    """Every field the runtime reads of an event bundle's manifest comes from Bundle.settings (typed,
    checked at load); the smear detector's own manifest is read by edgehema/smear/learned.py."""
    import re

    offenders = []
    for p in (ROOT / "edgehema").rglob("*.py"):
        rel = p.relative_to(ROOT).as_posix()
        if rel in ("edgehema/model/bundle.py", "edgehema/smear/learned.py"):
            continue
        for k, line in enumerate(p.read_text().splitlines(), 1):
            if re.search(r"manifest\.get\(|manifest\[", line):
                offenders.append(f"{rel}:{k}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_a_manifest_field_of_the_wrong_type_is_one_error_at_load(tmp_path):
    import json
    import shutil

    import pytest

    from edgehema.exceptions import BundleError
    from edgehema.model.bundle import Bundle, bundled_root, seal

    src = bundled_root() / "reference"
    dst = tmp_path / "b"
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    m["thresholds"]["recon_err_p999"] = "high"
    (dst / "manifest.json").write_text(json.dumps(seal(m, dst)))
    with pytest.raises(BundleError, match=r"thresholds.recon_err_p999 must be a number, not 'high'"):
        Bundle.load(dst)
