"""``smear`` and ``evaluate-smear``: counts from blood-smear images, and the image path measured."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from edgehema.exceptions import EdgehemaError
from edgehema.cli._app import app, error, warn
from edgehema.sinks.text_table import Column, render

DEFAULT_BCCD = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "bccd"


@app.command()
def smear(
    images: Optional[List[Path]] = typer.Argument(None, metavar="IMAGE...", help="Smear images (JPEG, PNG, TIFF, BMP) or folders of them."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per image: counts, detections, flags."),
    as_csv: bool = typer.Option(False, "--csv", help="One CSV row per image."),
    overlay_dir: Optional[Path] = typer.Option(None, "--overlay", help="Folder for each image with its detections drawn and the counts in a corner."),
    engine: str = typer.Option("model", "--engine", help="Detector: model (the shipped int8 network: TFLite on LiteRT, else ONNX on onnxruntime), model-tflite or model-onnx (the one or the other), baseline (classical OpenCV), model:FOLDER (a model folder), model:FILE.onnx or model:FOLDER/model.tflite."),
    watch_dir: Optional[Path] = typer.Option(None, "--watch", help="Count every image dropped into this folder, as it arrives (JSON lines), until stopped."),
    journal: Path = typer.Option(Path("edgehema-smear-journal.sqlite"), "--journal", help="With --watch: the SQLite journal results are committed to before they are written out."),
    max_images: Optional[int] = typer.Option(None, "--max-images", min=1, help="With --watch: stop after this many images."),
    idle_exit: Optional[float] = typer.Option(None, "--idle-exit", min=0.1, help="With --watch: stop after this many seconds without a new image."),
    lis: Optional[List[str]] = typer.Option(None, "--lis", metavar="URL", help="Also send each image's counts to a LIS (mllp://, astm+tcp://, astm+serial://), queued until acknowledged. Repeatable."),
    outbox: Path = typer.Option(Path("edgehema-outbox.sqlite"), "--outbox", help="With --lis and files: the queue (with --watch: the journal)."),
    lis_wait: float = typer.Option(30.0, "--lis-wait", min=0.0, help="With --lis: seconds to wait at the end for the LIS."),
    stain: str = typer.Option("auto", "--stain", help="Stain normalisation to the training images' colours: auto (images whose stain is unlike them), always, never."),
    overlap: str = typer.Option("none", "--overlap", help="Red cells in touching regions: none (one per detected box, the default), area (a region counts the single cells its area holds, up to four per box; seed 002's correction)."),
    um_per_px: Optional[float] = typer.Option(None, "--um-per-px", min=1e-4, help="The images' scale in micrometres per pixel (else estimated from each image: its red cells)."),
    microscope: Optional[Path] = typer.Option(None, "--microscope", metavar="PROFILE.toml", help="A microscope/camera profile giving um_per_px (as --um-per-px)."),
    species: Optional[str] = typer.Option(None, "--species", help="The species whose red-cell size turns um/px into pixels (human, dog, cat, horse, cattle; default human)."),
    wbc: str = typer.Option("auto", "--wbc", help="White-cell type classifier: auto (the shipped one), none, or a classifier folder or FOLDER/model.tflite."),
    rbc: str = typer.Option("auto", "--rbc", help="Red-cell shape classifier: auto (the shipped one), none, or a classifier folder or FOLDER/model.tflite."),
    slide: Optional[str] = typer.Option(None, "--slide", metavar="ID", help="All images named are one slide: one differential and one morphology grading over them (else each folder named is a slide)."),
) -> None:
    """Count red cells, white cells and platelets on blood-smear images, with the type of every
    white cell and the shape of every red cell and, per slide (a folder, or --slide), the white-cell
    differential and the red-cell morphology graded as the ICSH recommends.

    Exit status 1 if any image failed; the others are still counted."""
    from edgehema.cli.lis import lis_sinks

    if as_json and as_csv:
        raise typer.BadParameter("choose one of --json and --csv")
    _check_engine(engine)
    _check_stain(stain)
    _check_overlap(overlap)
    scale = _scale_options(um_per_px, microscope, species)
    _check_classifier("wbc_type", "--wbc", wbc, engine)
    _check_classifier("rbc_morphology", "--rbc", rbc, engine)
    scale["wbc"], scale["rbc"] = wbc, rbc
    if overlay_dir is not None:
        if overlay_dir.exists() and not overlay_dir.is_dir():
            raise EdgehemaError(f"{overlay_dir}: is a file; --overlay names a folder")
        overlay_dir.mkdir(parents=True, exist_ok=True)
    if watch_dir is not None:
        senders = lis_sinks(lis or [], journal, lis_wait)  # the journal's database is the outbox
        try:
            return _watch(watch_dir, journal, engine, overlay_dir, max_images, idle_exit, as_csv, senders, stain, overlap,
                          scale)
        finally:
            for sender in senders:
                sender.close()
    if not images:
        raise typer.BadParameter("name images or folders, or --watch FOLDER")
    senders = lis_sinks(lis or [], outbox, lis_wait)
    try:
        _count_files(images, as_json, as_csv, overlay_dir, engine, senders, stain, overlap, scale, slide)
    finally:
        for sender in senders:
            sender.close()


def _scale_options(um_per_px: Optional[float], microscope: Optional[Path], species: Optional[str]) -> dict:
    """The images' scale as count_image takes it, checked now (one line for a bad profile)."""
    from edgehema.smear import scale as SC

    if um_per_px is not None and microscope is not None:
        raise typer.BadParameter("give --um-per-px or --microscope, not both")
    if species is not None and species not in SC.RBC_UM:
        raise typer.BadParameter(f"--species {species}: one of {', '.join(SC.RBC_UM)}")
    if microscope is not None:
        SC.microscope(microscope, species)  # read once here: a broken profile stops before any image
    return {"um_per_px": um_per_px, "microscope": microscope, "species": species}


def _slides(images, slide: Optional[str]) -> list[tuple[Optional[str], list[Path]]]:
    """(slide id or None, files) in the order named: ``--slide`` makes all one slide; else each
    folder named is a slide (its name the id) and files named alone belong to none."""
    from edgehema.smear import image_files

    groups: list[tuple[Optional[str], list[Path]]] = []
    for p in images:
        files = image_files([str(p)])
        sid = slide if slide is not None else (Path(p).resolve().name if Path(p).is_dir() else None)
        if groups and groups[-1][0] == sid and (slide is not None or sid is None):
            groups[-1][1].extend(files)
        else:
            groups.append((sid, list(files)))
    return [(sid, files) for sid, files in groups if files]


CSV_HEADER = "image,rbc,wbc,plt,flags,seconds"


def _columns(engine: str, scale: dict) -> tuple[bool, bool]:
    """(white-cell types shown, red-cell shapes shown): whether each classifier runs."""
    from edgehema.smear.pipeline import classifier_for

    return (classifier_for("wbc_type", engine, scale.get("wbc", "auto")) is not None,
            classifier_for("rbc_morphology", engine, scale.get("rbc", "auto")) is not None)


def _csv_header(typed: tuple[bool, bool]) -> str:
    from edgehema.smear.differential import TYPES
    from edgehema.smear.morphology import CLASSES

    return (CSV_HEADER + ("," + ",".join(TYPES) if typed[0] else "")
            + ("," + ",".join(f"rbc_{c}" for c in CLASSES) if typed[1] else "") + "\n")


def _count_files(images, as_json: bool, as_csv: bool, overlay_dir: Optional[Path], engine: str, senders: list,
                 stain: str = "auto", overlap: str = "none", scale: dict | None = None,
                 slide: Optional[str] = None) -> None:
    from edgehema.smear.slide import SlideAccumulator

    groups = _slides(images, slide)
    if not groups:
        raise EdgehemaError(f"{', '.join(map(str, images))}: no images (JPEG, PNG, TIFF, BMP) there")
    typed = _columns(engine, scale or {})
    rows, slides, failed = [], [], 0
    if as_csv:
        sys.stdout.write(_csv_header(typed))
    for sid, files in groups:
        acc = SlideAccumulator(sid) if sid is not None else None
        for path in files:
            result = _count_one(path, engine, stain, overlap, scale, overlay_dir)
            if result is None:
                failed += 1
                continue
            if acc is not None:
                result["slide_id"] = sid
                acc.add(result)
            for sender in senders:  # queued (durably) first: the LIS gets what the screen shows
                sender.write(result)
            _show(result, as_json, as_csv, typed, rows)
        if acc is not None and acc.images:
            summary = acc.result()
            for sender in senders:  # the slide's differential too (HL7 panel 24318-8; ASTM likewise)
                sender.write(summary)
            if as_json:
                typer.echo(json.dumps(summary, separators=(",", ":")))
            elif as_csv:
                sys.stdout.write(_csv_row(summary, typed))
            slides.append(summary)
    if rows:
        render(f"smear counts ({engine} detector)",
               [Column("image", "left", keep=9), Column("RBC", keep=8), Column("WBC", keep=8), Column("PLT", keep=8),
                *([Column("white cells", "left", keep=9, wrap=True)] if typed[0] else []),
                *([Column("red-cell shapes", "left", keep=9, wrap=True)] if typed[1] else []),
                Column("flags", "left", keep=5, wrap=True), Column("ms", keep=1)], rows, sys.stdout)
    if not as_json and not as_csv:
        for summary in slides:
            if summary["differential"] is not None:
                _slide_table(summary)
            if summary["morphology"] is not None:
                _morphology_table(summary)
    if failed:
        raise typer.Exit(1)


def _count_one(path: Path, engine: str, stain: str, overlap: str, scale: dict | None, overlay_dir: Optional[Path]):
    """One image's result (its overlay written), or None after one error line."""
    import cv2

    from edgehema.smear import count_image, overlay

    try:
        result, image = count_image(path, engine, stain=stain, overlap=overlap, **(scale or {}))
    except EdgehemaError as exc:
        error(str(exc))
        return None
    if overlay_dir is not None:
        target = overlay_dir / f"{path.stem}.overlay.png"
        if not cv2.imwrite(str(target), overlay(image, result)):
            error(f"{target}: cannot write the overlay")
            return None
        result["overlay"] = str(target)
    return result




def _csv_row(result: dict, typed: tuple[bool, bool]) -> str:
    from edgehema.smear.differential import TYPES
    from edgehema.smear.morphology import CLASSES

    if result.get("kind") == "smear_slide":  # a slide's row: its differential's and morphology's counts
        d, m = result["differential"] or {}, result["morphology"] or {}
        # the columns of an image's row: rbc and wbc the cells typed, no plt, no seconds
        row = (f"slide:{result['slide_id']},{result['rbc_typed'] if typed[1] else ''},{result['wbc_typed']},,"
               f"{' '.join(result['flags'])},,")
        parts = ([",".join(str((d.get(t) or {}).get("count", 0)) for t in TYPES)] if typed[0] else []) + \
                ([",".join(str((m.get(c) or {}).get("count", 0)) for c in CLASSES)] if typed[1] else [])
        return row + ",".join(parts) + "\n"
    c = result["counts"]
    row = f"{result['source']},{c['rbc']},{c['wbc']},{c['plt']},{' '.join(result['flags'])},{result['seconds']}"
    if typed[0]:
        diff = result.get("differential") or {}
        row += "," + ",".join(str(diff.get(t, 0)) for t in TYPES)
    if typed[1]:
        shapes = result.get("morphology") or {}
        row += "," + ",".join(str(shapes.get(k, 0)) for k in CLASSES)
    return row + "\n"


def _show(result: dict, as_json: bool, as_csv: bool, typed: tuple[bool, bool], rows: list) -> None:
    c = result["counts"]
    if as_json:
        typer.echo(json.dumps(result, separators=(",", ":")))
    elif as_csv:
        sys.stdout.write(_csv_row(result, typed))
    else:
        from edgehema.smear.pipeline import SHAPE_TAGS, TYPE_TAGS

        types = ", ".join(f"{TYPE_TAGS[t]} {n}" for t, n in (result.get("differential") or {}).items() if n) or "-"
        shapes = sorted(((n, t) for t, n in (result.get("morphology") or {}).items() if n), reverse=True)
        shaped = ", ".join(f"{SHAPE_TAGS.get(t, t)} {n}" for n, t in shapes) or "-"
        rows.append([Path(result["source"]).name, str(c["rbc"]), str(c["wbc"]), str(c["plt"]),
                     *([types] if typed[0] else []), *([shaped] if typed[1] else []),
                     ", ".join(result["flags"]) or "ok", f"{1000 * result['seconds']:.0f}"])


def _slide_table(summary: dict) -> None:
    d = summary["differential"]
    rows = []
    for t, v in d.items():
        if "percent" in v:
            pct = "-" if v["percent"] is None else f"{v['percent']:.1f} %"
            ci = "-" if v["ci95"] is None else f"{v['ci95'][0]:.1f}-{v['ci95'][1]:.1f} %"
        elif "per_100_leukocytes" in v:
            pct = "-" if v["per_100_leukocytes"] is None else f"{v['per_100_leukocytes']:.1f} /100 WBC"
            ci = ""
        else:
            pct = "-" if v["percent_of_typed"] is None else f"{v['percent_of_typed']:.1f} % of typed"
            ci = ""
        rows.append([t, str(v["count"]), pct, ci])
    render(f"slide {summary['slide_id']}: differential over {summary['leukocytes']} leukocytes, "
           f"{summary['images']} images" + (f" ({', '.join(summary['flags'])})" if summary["flags"] else ""),
           [Column("type", "left", keep=9), Column("count", keep=5), Column("percent", keep=8),
            Column("95 % interval", keep=6)], rows, sys.stdout)


def _morphology_table(summary: dict) -> None:
    """A slide's red-cell findings: count, percent, 95 % interval, ICSH grade."""
    rows = []
    for name, f in summary["findings"].items():
        pct = "-" if f["percent"] is None else f"{f['percent']:.1f} %"
        ci = "-" if f["ci95"] is None else f"{f['ci95'][0]:.1f}-{f['ci95'][1]:.1f} %"
        rows.append([name.replace("_", " "), str(f["count"]), pct, ci, f["grade"] or "-"])
    m = summary["morphology"]
    render(f"slide {summary['slide_id']}: red-cell morphology over {summary['rbc_classified']} red cells classified "
           f"({m['normal']['count']} normal, {m['unclassified']['count']} unclassified), {summary['images']} images",
           [Column("finding", "left", keep=9), Column("count", keep=5), Column("percent", keep=6),
            Column("95 % interval", keep=6), Column("ICSH grade", keep=5)], rows, sys.stdout)


@app.command("evaluate-smear")
def evaluate_smear(
    data: Path = typer.Option(DEFAULT_BCCD, "--data", help="An annotated set, VOC (JPEGImages/, Annotations/, SPLIT.txt) or YOLO (images/SPLIT/, labels/SPLIT/, data.yaml); default ../shared/data/bccd."),
    split: str = typer.Option("val", "--split", help="Which list of images: val (for the figures) or train."),
    engine: List[str] = typer.Option(["model", "baseline"], "--engine", help="Detector(s) to measure side by side: model, model-tflite, model-onnx, baseline, model:FILE.onnx, model:FOLDER/model.tflite."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per engine."),
    stain: str = typer.Option("auto", "--stain", help="Stain normalisation: auto, always, never."),
    overlap: str = typer.Option("none", "--overlap", help="Red cells in touching regions: none or area (as for smear)."),
    restain: Optional[str] = typer.Option(None, "--restain", metavar="a=DA,b=DB,contrast=C,l=DL", help="Measure on the images restained: CIELAB a*, b* moved, colour spread scaled, lightness moved (a stain unlike the training set)."),
    magnification: str = typer.Option("1", "--magnification", metavar="M[,M...]", help="Measure on the images resampled by each factor (0.5: as at half the magnification), e.g. 0.5,0.75,1,1.5,2."),
    by_source: bool = typer.Option(False, "--by-source", help="Also a row per source (image size) of the set."),
    cells: Optional[Path] = typer.Option(None, "--cells", metavar="DIR", help="Measure a cell classifier instead, on a set of single-cell images (one folder per class, e.g. ../shared/data/pbc, or with --morphology ../shared/data/chula-rbc-crops), on --split (default there: test)."),
    wbc: List[str] = typer.Option(["auto"], "--wbc", help="With --cells: classifier(s) to measure (auto, a folder, FOLDER/model.tflite)."),
    morphology: bool = typer.Option(False, "--morphology", help="With --cells: measure the red-cell shape classifier (--rbc) instead of the white-cell one."),
    rbc: List[str] = typer.Option(["auto"], "--rbc", help="With --cells --morphology: classifier(s) to measure (auto, a folder, FOLDER/model.tflite)."),
    mode: str = typer.Option("classifier", "--mode", help="With --cells: classifier (the centre crop at the set's scale) or pipeline (each image counted as smear counts it)."),
    wbc_stability: bool = typer.Option(False, "--wbc-stability", help="Measure how often the white cells found on --data's fields keep their type at other magnifications and stains."),
    rbc_stability: bool = typer.Option(False, "--rbc-stability", help="The same for the red cells' shapes (--rbc), and the shapes given on --data's fields."),
) -> None:
    """Per class AP@0.5 and mAP, precision and recall, and per-image count errors on an annotated set;
    with --cells, a cell classifier's confusion matrix, recall, precision and balanced accuracy."""
    if cells is not None:
        task, models = ("rbc_morphology", rbc) if morphology else ("wbc_type", wbc)
        return _evaluate_cells(cells, "test" if split == "val" else split, models, mode, engine[0], as_json, task)
    if wbc_stability or rbc_stability:
        return _wbc_stability(data, split, engine[0], as_json, rbc[0] if rbc_stability else wbc[0],
                              "rbc_morphology" if rbc_stability else "wbc_type")
    from functools import partial

    from edgehema.smear.evaluate import evaluate
    from edgehema.smear.stain import restain as restained
    from edgehema.sinks.text_table import Column, render

    from edgehema.smear.annotations import annotated_set

    annotated_set(data, split)  # the set's layout and split checked before any engine runs
    try:
        factors = [float(m) for m in magnification.split(",")]
    except ValueError:
        raise typer.BadParameter(f"--magnification {magnification!r}: numbers, comma-separated") from None
    if not all(0.1 <= m <= 10 for m in factors):
        raise typer.BadParameter(f"--magnification {magnification!r}: each between 0.1 and 10")
    for e in engine:
        _check_engine(e)
    _check_stain(stain)
    _check_overlap(overlap)
    perturb = None
    if restain:
        names = {"a": "da", "b": "db", "contrast": "contrast", "l": "dl"}
        kwargs = {}
        for part in restain.split(","):
            key, _, value = part.partition("=")
            try:
                kwargs[names[key.strip().lower()]] = float(value)
            except (KeyError, ValueError):
                raise typer.BadParameter(f"--restain {part!r}: a=NUMBER, b=NUMBER, contrast=NUMBER or l=NUMBER") from None
        perturb = partial(restained, **kwargs)
    reports = [evaluate(data, split, e, stain=stain, perturb=perturb, overlap=overlap, magnification=m)
               for m in factors for e in engine]
    if as_json:
        for r in reports:
            typer.echo(json.dumps(r))
        return
    rows = []
    for r in reports:
        parts = [("all", r)] + (sorted(r.get("by_source", {}).items()) if by_source else [])
        for name, f in parts:
            c = f["classes"]
            rows.append([r["engine"], f"{r['magnification']:g}x", name, str(f["images"]), f"{f['map50']:.3f}",
                         f"{c['rbc']['ap50']:.3f}", f"{c['wbc']['ap50']:.3f}", f"{c['plt']['ap50']:.3f}",
                         f"{100 * f['rbc_count_within_10pct']:.0f} %", f"{100 * f['wbc_exact']:.0f} %",
                         f"{100 * f['plt_within_1']:.0f} %", f"{r['images'] / r['seconds']:.1f}" if name == "all" else ""])
    render(f"{data.name} {split}", [
        Column("engine", "left", keep=9), Column("mag", keep=4), Column("source", "left", keep=7), Column("images", keep=4),
        Column("mAP@0.5", keep=8), Column("AP RBC", keep=7), Column("AP WBC", keep=7), Column("AP PLT", keep=7),
        Column("RBC count within 10 %", keep=5), Column("WBC exact", keep=5), Column("PLT within 1", keep=5),
        Column("images/s", keep=3)], rows, sys.stdout)


def _wbc_stability(data: Path, split: str, engine: str, as_json: bool, wbc: str = "auto", task: str = "wbc_type") -> None:
    from edgehema.smear.annotations import annotated_set
    from edgehema.smear.evaluate_cells import type_stability

    annotated_set(data, split)
    _check_engine(engine)
    r = type_stability(data, split, engine, wbc=wbc, task=task)
    if as_json:
        typer.echo(json.dumps(r))
        return
    rows = [[name, str(t["matched"]), str(t["unmatched"]), "-" if t["same_type"] is None else f"{100 * t['same_type']:.1f} %"]
            for name, t in r["changes"].items()]
    what = "white cells typed" if task == "wbc_type" else "red cells given a shape"
    given = ", ".join(f"{c} {n}" for c, n in sorted(r["given"].items(), key=lambda kv: -kv[1]))
    render(f"{r['data']} {r['split']}: {r['cells']} {what} as the fields are ({given}); the same cells changed",
           [Column("change", "left", keep=9), Column("found again", keep=5), Column("not found", keep=5),
            Column("same class", keep=6)], rows, sys.stdout)


def _evaluate_cells(root: Path, split: str, models: List[str], mode: str, engine: str, as_json: bool,
                    task: str = "wbc_type") -> None:
    from edgehema.smear.evaluate_cells import evaluate_cells

    if mode not in ("classifier", "pipeline"):
        raise typer.BadParameter(f"--mode must be classifier or pipeline, not {mode!r}")
    if mode == "pipeline" and task != "wbc_type":
        raise typer.BadParameter("--mode pipeline measures white-cell types; red-cell shapes: --mode classifier")
    if split not in ("train", "val", "test"):
        raise typer.BadParameter(f"--split {split}: train, val or test")
    option = "--rbc" if task == "rbc_morphology" else "--wbc"
    for m in models:
        if m != "auto" and not Path(m).exists():
            raise EdgehemaError(f"{option} {m}: no such classifier folder or file")
    reports = [evaluate_cells(root, split, m, task=task, mode=mode, engine=engine) for m in models]
    if as_json:
        for r in reports:
            typer.echo(json.dumps(r))
        return
    for r in reports:
        cm = r["confusion"]
        rows = [[t, *map(str, counts), "-" if r["recall"].get(t) is None else f"{r['recall'][t]:.3f}",
                 "-" if r["precision"].get(t) is None else f"{r['precision'][t]:.3f}"]
                for t, counts in zip(cm["rows"], cm["counts"])]
        extra = f", normal vs abnormal {r['normal_vs_abnormal']:.3f}" if "normal_vs_abnormal" in r else ""
        render(f"{r['classifier']} on {r['data']} {r['split']} ({r['mode']}, {r['cells']} cells, split by {r['split_by']}): "
               f"balanced accuracy {r['balanced_accuracy']:.3f}, accuracy {r['accuracy']:.3f}{extra}, "
               f"{1000 * r['seconds_per_cell']:.1f} ms per cell",
               [Column("truth \\ said", "left", keep=9), *[Column(c[:6], keep=3) for c in cm["columns"]],
                Column("recall", keep=5), Column("precision", keep=5)], rows, sys.stdout)


def _check_stain(mode: str) -> None:
    from edgehema.smear.stain import MODES

    if mode not in MODES:
        raise typer.BadParameter(f"--stain must be one of {', '.join(MODES)}, not {mode!r}")


def _check_overlap(mode: str) -> None:
    from edgehema.smear.overlap import MODES

    if mode not in MODES:
        raise typer.BadParameter(f"--overlap must be one of {', '.join(MODES)}, not {mode!r}")


def _check_classifier(task: str, option: str, choice: str, engine: str):
    """A cell classifier opened before any image: a refused one is one line up front. Returns it
    (None: none runs)."""
    from edgehema.smear.pipeline import classifier_for

    if choice not in ("auto", "none") and not Path(choice).exists():
        raise EdgehemaError(f"{option} {choice}: no such classifier folder or file")
    return classifier_for(task, engine, choice)


def _check_engine(name: str) -> None:
    from edgehema.smear.pipeline import ENGINES

    if name not in ENGINES and not name.startswith("model:"):
        raise typer.BadParameter(f"--engine must be one of {', '.join(ENGINES)} or model:PATH (a folder, FILE.onnx, FOLDER/model.tflite), not {name!r}")
    if name.startswith("model:") and not Path(name[6:]).exists():
        raise EdgehemaError(f"{name[6:]}: no such model file or folder")
    if name != "baseline":
        # Opened before any image: a refused model (signature, hashes, known answer) is one line up
        # front, and an engine that runs unfused says so once.
        from edgehema.smear import learned

        model = learned.engine_model(name)
        learned.session(model)
        for key in (model, name):
            if key in learned.ENGINE_NOTES:
                warn(learned.ENGINE_NOTES[key])


def _watch(folder: Path, journal_path: Path, engine: str, overlay_dir: Optional[Path], max_images: Optional[int],
           idle_exit: Optional[float], as_csv: bool, senders: list, stain: str = "auto",
           overlap: str = "none", scale: dict | None = None) -> None:
    import signal

    import cv2

    from edgehema.smear import overlay
    from edgehema.smear.watch import SmearJournal, watch

    journal = SmearJournal(journal_path)
    stopping = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stopping.update(now=True))

    def emit(result: dict) -> None:
        for sender in senders:
            sender.write(result)
        if as_csv:
            c = result["counts"]
            sys.stdout.write(f"{result['source']},{c['rbc']},{c['wbc']},{c['plt']},{' '.join(result['flags'])},"
                             f"{result['seconds']}\n")
        else:
            sys.stdout.write(json.dumps(result, separators=(",", ":")) + "\n")
        sys.stdout.flush()

    def draw(result: dict, image) -> None:
        if overlay_dir is not None:
            cv2.imwrite(str(overlay_dir / f"{Path(result['source']).stem}.overlay.png"), overlay(image, result))

    sys.stderr.write(f"edgehema: watching {folder} for smear images (journal {journal_path}); Ctrl-C stops\n")
    try:
        watch(folder, journal, emit, error, engine, max_images=max_images, idle_exit=idle_exit,
              stop=lambda: stopping["now"], on_image=draw, stain=stain, overlap=overlap, scale=scale)
    except KeyboardInterrupt:
        pass
    finally:
        journal.close()
