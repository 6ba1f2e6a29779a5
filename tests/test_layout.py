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


def test_the_bundle_contract_is_read_in_the_bundle_module_only():
    """Every field the runtime or the workstation reads of a model folder's manifest (event bundle
    or smear detector) comes from edgehema.model.bundle's typed views (Bundle.settings,
    SmearFolder), parsed and checked once; writers set members through bundle.amend, which knows
    the contract's members. No other module indexes a manifest or parses a manifest file."""
    import re

    offenders = []
    for p in [*(ROOT / "edgehema").rglob("*.py"), *(ROOT / "export").rglob("*.py")]:
        rel = p.relative_to(ROOT).as_posix()
        if rel == "edgehema/model/bundle.py":
            continue
        for k, line in enumerate(p.read_text().splitlines(), 1):
            if re.search(r"manifest\.get\(|manifest\[|(MANIFEST|manifest\.json\"|mpath|manifest_path)\)?\.read_(text|bytes)", line):
                offenders.append(f"{rel}:{k}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_a_writer_cannot_set_a_member_the_contract_does_not_know():
    import pytest

    from edgehema.exceptions import BundleError
    from edgehema.model.bundle import DROP, amend

    m = {"format": "edgehema-bundle/1", "name": "a", "model": {"file": "model.onnx"}, "integrity": {"x": 1}}
    got = amend(m, name="b", model={"tflite": {"file": "model.tflite"}}, update={"thresholds": {"recon_err_p999": 1.0}})
    assert got == {"format": "edgehema-bundle/1", "name": "b", "thresholds": {"recon_err_p999": 1.0},
                   "model": {"file": "model.onnx", "tflite": {"file": "model.tflite"}}}
    assert "name" not in amend(m, name=DROP)
    with pytest.raises(BundleError, match="parity_sumary are not in the bundle contract"):
        amend(m, parity_sumary={})
    with pytest.raises(BundleError, match="target are not in the bundle contract"):
        amend({"kind": "smear"}, target="onnx-int8")  # an event bundle's member, not a smear folder's


def test_a_smear_folder_with_a_broken_member_is_one_error_at_load(tmp_path):
    import json
    import shutil

    import pytest

    from edgehema.exceptions import BundleError
    from edgehema.model.bundle import SmearFolder
    from edgehema.smear.learned import MODELS

    dst = tmp_path / "s"
    shutil.copytree(MODELS / "bccd-int8", dst)
    f = SmearFolder.load(dst)
    assert f.input_size == (320, 240) and f.classes == ("rbc", "wbc", "plt") and f.tflite.file == "model.tflite"
    m = json.loads((dst / "manifest.json").read_text())
    m["tflite"] = "model.tflite"
    (dst / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"manifest.json: tflite must be an object, not 'model.tflite'"):
        SmearFolder.load(dst)
    (dst / "manifest.json").write_text("{")
    with pytest.raises(BundleError, match="manifest is not readable JSON"):
        SmearFolder.load(dst)


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


def test_the_readme_layout_table_and_the_package_map_name_every_room():
    """Every subpackage of edgehema/ and export/ is in the README's Layout table, and every
    edgehema room in the stage map of edgehema/__init__.py; every path the table names exists."""
    import re

    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Layout"):readme.index("\n## ", readme.index("## Layout") + 5)]
    stage_map = (ROOT / "edgehema" / "__init__.py").read_text().split('"""')[1]
    for pkg in ("edgehema", "export"):
        for room in sorted(p.parent.name for p in (ROOT / pkg).glob("*/__init__.py")):
            assert f"`{room}/`" in table or f"`{pkg}/{room}/`" in table, f"README Layout misses {pkg}/{room}/"
            if pkg == "edgehema":
                assert f"edgehema.{room}" in stage_map, f"edgehema/__init__.py's map misses {room}"
    for row in table.splitlines():
        if not row.startswith("| `"):
            continue
        first = row.split("|")[1]
        names = re.findall(r"`([^`]+)`", first)
        base = names[0].rsplit("/", 1)[0] if "/" in names[0].rstrip("/") else ""
        for name in names:
            path = ROOT / name if "/" in name.rstrip("/") or not base else ROOT / base / name
            if name.startswith(("tests/", "benchmarks/", "tools/", "deploy/")):
                path = ROOT / name
            assert path.exists(), f"README Layout names {name}, which is not in the tree ({path})"


def test_no_function_is_longer_than_ninety_lines():
    """Long functions are split into named steps (issue 33 found them at 239, 145, 111 and 94 lines)."""
    long = []
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(p.read_text(), str(p))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 90:
                    long.append(f"{p.relative_to(ROOT)}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not long, "\n".join(long)
