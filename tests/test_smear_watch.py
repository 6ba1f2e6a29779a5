"""``edgehema smear --watch``: images counted as they arrive, once each, a half-written image waited
for, a bad one reported and passed over, and results stored before a crash written at the next start."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import cv2

from edgehema.smear.watch import SmearJournal, watch

from .test_smear import smear_like


def test_images_are_counted_once_as_they_arrive_and_half_written_ones_wait(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    journal = SmearJournal(tmp_path / "j.sqlite")
    png = cv2.imencode(".png", smear_like())[1].tobytes()
    results, errors = [], []

    def drop():
        time.sleep(0.3)
        (folder / "a.png").write_bytes(png)
        part = folder / "b.png"
        part.write_bytes(png[: len(png) // 3])  # the camera is still writing it
        time.sleep(0.35)
        part.write_bytes(png)
        (folder / "bad.jpg").write_bytes(b"%PDF-1.4 not an image")
        (folder / "notes.txt").write_text("not looked at")

    t = threading.Thread(target=drop)
    t.start()
    # settle 1 s: b.png, a third written, then whole 0.35 s later, is read whole; retry 2 s: bad.jpg
    # is reported once it is older than that.
    n = watch(folder, journal, results.append, errors.append, engine="baseline", interval=0.2, idle_exit=3.0,
              retry_s=2.0)
    t.join()
    assert n == 2 and sorted(r["sample_id"] for r in results) == ["a", "b"]
    assert all(r["counts"]["wbc"] == 1 for r in results)  # b was read whole, not the first third
    assert len(errors) == 1 and "bad.jpg" in errors[0] and "PDF" in errors[0]
    again: list = []
    assert watch(folder, journal, again.append, errors.append, engine="baseline", interval=0.1, idle_exit=0.5,
                 retry_s=2.0) == 0
    assert again == [] and len(errors) == 1  # nothing counted or reported twice
    time.sleep(0.01)
    (folder / "a.png").write_bytes(cv2.imencode(".png", smear_like(seed=5))[1].tobytes())  # a new image, same name
    assert watch(folder, journal, again.append, errors.append, engine="baseline", interval=0.1, idle_exit=2.0) == 1
    journal.close()


def test_a_result_stored_before_a_crash_is_written_at_the_next_start(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    journal = SmearJournal(tmp_path / "j.sqlite")
    stored = {"kind": "smear", "sample_id": "before-crash", "counts": {"rbc": 3, "wbc": 1, "plt": 0}}
    journal.record(folder / "x.png", 10, 1, stored, None)  # committed, never emitted (killed here)
    out: list = []
    watch(folder, journal, out.append, lambda e: None, engine="baseline", interval=0.1, idle_exit=0.3)
    assert out == [stored]
    assert journal.unemitted() == []
    journal.close()


def test_watch_command(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "edgehema", "smear", "--watch", str(folder), "--journal",
                             str(tmp_path / "j.sqlite"), "--engine", "baseline", "--max-images", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    cv2.imwrite(str(folder / "s1.png"), smear_like())
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert json.loads(out)["sample_id"] == "s1" and "watching" in err


def test_smear_counts_go_to_the_lis_as_valid_hl7_and_astm(tmp_path):
    from edgehema.lis.astm import build_records
    from edgehema.lis.hl7_message import build_oru
    from edgehema.smear import count_image

    from .test_lis import Peer, validate

    image = tmp_path / "s1.png"
    cv2.imwrite(str(image), smear_like())
    result, _ = count_image(image, "baseline")
    msg = validate(build_oru(result, "SM1"))
    obx = {o.OBX.obx_3.obx_3_1.value: o.OBX.obx_5.value for o in msg.children[1].ORU_R01_ORDER_OBSERVATION.children
           if o.name == "ORU_R01_OBSERVATION"}
    assert obx == {"EHM-SMEAR-RBC": str(result["counts"]["rbc"]), "EHM-SMEAR-WBC": str(result["counts"]["wbc"]),
                   "EHM-SMEAR-PLT": str(result["counts"]["plt"])}
    records = build_records(result, "SM1")
    assert [r.split("|")[2] for r in records if r.startswith("R|")] == ["^^^EHM-SMEAR-RBC", "^^^EHM-SMEAR-WBC",
                                                                        "^^^EHM-SMEAR-PLT"]
    peer = Peer()
    try:
        proc = subprocess.run([sys.executable, "-m", "edgehema", "smear", "--json", "--engine", "baseline", "--lis",
                               peer.url, "--outbox", str(tmp_path / "box.sqlite"), str(image)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert list(peer.distinct().values()) == ["s1"] and not peer.invalid
    finally:
        peer.close()
