"""A result as an HL7 v2.5.1 ORU^R01 message, and the LIS's acknowledgement read back.

Observations are coded with LOINC and UCUM units, as laboratory information systems expect:

=========  ==========  =============================================================  ========
result     LOINC       name                                                           unit
=========  ==========  =============================================================  ========
RBC        789-8       Erythrocytes [#/volume] in Blood by Automated count            10*6/uL
PLT        777-3       Platelets [#/volume] in Blood by Automated count               10*3/uL
RET %      17849-1     Reticulocytes/100 erythrocytes in Blood by Automated count     %
RET#       60474-4     Reticulocytes [#/volume] in Blood by Automated count           10*6/uL
=========  ==========  =============================================================  ========

Cells and events counted and the coincidence rate have no LOINC code: they go with local codes
(coding system ``99EHM``, HL7's form for a local code system). A result with any flag carries the
abnormal flag ``A`` on every observation and one NTE per flag, so that a flagged result can never look
clean at the LIS; the model's name, version and sha256 go in an NTE of the order. Messages are built
as text and checked by parsing them back with python-hl7 (``hl7``); escaping is python-hl7's.
"""

from __future__ import annotations

import base64
from datetime import datetime, timezone
from pathlib import Path

import hl7

#: Local coding system for what LOINC does not name.
LOCAL = "99EHM"
PANEL = ("EHM-PANEL", "RBC, PLT and reticulocytes by optical event classification", LOCAL)

# (result path, LOINC code, name, UCUM unit, scale, decimals)
CONCENTRATIONS = [
    ("rbc_per_uL", "789-8", "Erythrocytes [#/volume] in Blood by Automated count", "10*6/uL", 1e-6, 2),
    ("plt_per_uL", "777-3", "Platelets [#/volume] in Blood by Automated count", "10*3/uL", 1e-3, 0),
]
RETIC_PERCENT = ("17849-1", "Reticulocytes/100 erythrocytes in Blood by Automated count", "%", 2)
RETIC_ABSOLUTE = ("retic_per_uL", "60474-4", "Reticulocytes [#/volume] in Blood by Automated count", "10*6/uL",
                  1e-6, 4)
LOCAL_COUNTS = [
    ("cells", "rbc", "EHM-RBC-N", "Red cells counted"),
    ("cells", "plt", "EHM-PLT-N", "Platelets counted"),
    ("cells", "retic", "EHM-RET-N", "Reticulocytes counted"),
    ("events", "total", "EHM-EVENTS", "Events measured"),
]

_SEP = hl7.parse("MSH|^~\\&|\r")  # a message to borrow python-hl7's escaping from


def esc(value) -> str:
    """A value made safe for an HL7 field (| ^ ~ \\ & escaped; line breaks as spaces)."""
    text = " ".join(str(value).split())
    return _SEP.escape(text)


def hl7_time(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y%m%d%H%M%S+0000")


def _result_time(result: dict, fallback: datetime) -> str:
    for key in ("started_at", "ended_at"):
        value = result.get(key)
        if value:
            try:
                return hl7_time(datetime.fromisoformat(str(value).replace("Z", "+00:00")))
            except ValueError:
                pass
    return hl7_time(fallback)


SMEAR_COUNTS = [("rbc", "EHM-SMEAR-RBC", "Red cells counted on the smear image"),
                ("wbc", "EHM-SMEAR-WBC", "White cells counted on the smear image"),
                ("plt", "EHM-SMEAR-PLT", "Platelets counted on the smear image")]


#: A slide's white-cell differential (edgehema.smear.slide): the OBR names LOINC's manual
#: differential panel, 24318-8 "Manual differential panel - Blood"; each leukocyte type its member
#: "/100 leukocytes in Blood" term (docs/lis.md cites them), immature granulocytes and nucleated red
#: cells too: the panel's members are methodless terms, and these are the methodless ones (71695-1 and
#: 58413-6 are the analyzers', "by Automated count"). The cells counted go under local codes.
DIFFERENTIAL_PANEL = ("24318-8", "Manual differential panel - Blood", "LN")
DIFFERENTIAL = [("neutrophil", "26511-6", "Neutrophils/100 leukocytes in Blood"),
                ("lymphocyte", "26478-8", "Lymphocytes/100 leukocytes in Blood"),
                ("monocyte", "26485-3", "Monocytes/100 leukocytes in Blood"),
                ("eosinophil", "26450-7", "Eosinophils/100 leukocytes in Blood"),
                ("basophil", "30180-4", "Basophils/100 leukocytes in Blood")]
IMMATURE_GRANULOCYTES = ("38518-7", "Immature granulocytes/100 leukocytes in Blood")
NUCLEATED_RED_CELLS = ("19048-8", "Nucleated erythrocytes/100 leukocytes in Blood")


def _differential_observations(result: dict) -> list[tuple[str, str, str, str, str]]:
    table = result.get("differential") or {}
    out = []
    for key, code, name in DIFFERENTIAL:
        if (table.get(key) or {}).get("percent") is not None:
            out.append((code, name, "LN", f"{table[key]['percent']:.1f}", "%"))
    if (table.get("ig") or {}).get("percent") is not None:
        out.append((*IMMATURE_GRANULOCYTES, "LN", f"{table['ig']['percent']:.1f}", "%"))
    if (table.get("erythroblast") or {}).get("per_100_leukocytes") is not None:
        out.append((*NUCLEATED_RED_CELLS, "LN", f"{table['erythroblast']['per_100_leukocytes']:.1f}", "/100{WBCs}"))
    out.append(("EHM-SMEAR-LEUK-N", "Leukocytes classified on the slide", LOCAL, str(int(result.get("leukocytes") or 0)),
                "{cells}"))
    if table.get("unclassified") is not None:
        out.append(("EHM-SMEAR-UNCL-N", "White cells left unclassified on the slide", LOCAL,
                    str(int(table["unclassified"]["count"])), "{cells}"))
    return out


def _morphology_observations(result: dict) -> list[tuple[str, str, str, str, str]]:
    """A slide's red-cell morphology: each finding graded 1+ or more under its LOINC term of the
    erythrocyte morphology panel (58408-6, a member of the manual differential panel), its grade as
    the value; schistocytes as a percentage (ICSH reports them so) under a local code; the red cells
    classified. No grade is sent from fewer red cells than grading needs (the flag says so)."""
    found = result.get("findings") or {}
    out = []
    for got in found.values():  # in the order edgehema.smear.morphology.FINDINGS lists them
        if got.get("grade") and got.get("loinc"):
            out.append((got["loinc"], got.get("loinc_name", ""), "LN", got["grade"], ""))
    schisto = found.get("schistocytes") or {}
    withheld = {"too_few_red_cells", "rbc_morphology_unreliable"} & set(result.get("flags") or [])
    if schisto.get("percent") is not None and not withheld:
        out.append(("EHM-SMEAR-SCHIST", "Schistocytes/100 erythrocytes on the smear", LOCAL, f"{schisto['percent']:.2f}", "%"))
    out.append(("EHM-SMEAR-RBC-N", "Red cells classified by shape on the slide", LOCAL,
                str(int(result.get("rbc_classified") or 0)), "{cells}"))
    return out


def observations(result: dict) -> list[tuple[str, str, str, str, str]]:
    """(code, name, coding system, value, UCUM unit) of every observation a result carries, for the
    HL7 and the ASTM messages alike: an event result's concentrations, RET %, counts and coincidence
    rate; a smear image's cell counts."""
    out = []
    if result.get("kind") == "smear_slide":
        return ((_differential_observations(result) if result.get("differential") is not None else [])
                + (_morphology_observations(result) if result.get("findings") is not None else []))
    if result.get("kind") == "smear":
        counts = result.get("counts") or {}
        for key, code, name in SMEAR_COUNTS:
            if counts.get(key) is not None:
                out.append((code, name, LOCAL, str(int(counts[key])), "{cells}"))
        return out
    conc = result.get("concentration") or {}
    for key, code, name, unit, scale, decimals in CONCENTRATIONS:
        if conc.get(key) is not None:
            out.append((code, name, "LN", f"{conc[key] * scale:.{decimals}f}", unit))
    if result.get("retic_percent") is not None:
        code, name, unit, decimals = RETIC_PERCENT
        out.append((code, name, "LN", f"{result['retic_percent']:.{decimals}f}", unit))
    key, code, name, unit, scale, decimals = RETIC_ABSOLUTE
    if conc.get(key) is not None:
        out.append((code, name, "LN", f"{conc[key] * scale:.{decimals}f}", unit))
    for group, key, code, name in LOCAL_COUNTS:
        value = (result.get(group) or {}).get(key)
        if value is not None:
            out.append((code, name, LOCAL, str(int(value)), "{cells}" if group == "cells" else "{events}"))
    coincidence = (result.get("qc") or {}).get("coincidence_fraction")
    if coincidence is not None:
        out.append(("EHM-COINC", "Coincidence events", LOCAL, f"{100 * coincidence:.2f}", "%"))
    return out


def _numeric(value: str) -> bool:
    try:
        float(value)
        return True
    except ValueError:
        return False


def build_oru(result: dict, control_id: str, *, sending_facility: str = "", receiving_application: str = "",
              receiving_facility: str = "", now: datetime | None = None, images: bool = False, status: str = "F") -> str:
    """ORU^R01 (HL7 2.5.1) for one sample's result; segments end with CR as the standard says.
    ``status``: ``F`` (final) or ``C`` (a correction of a result sent before: OBR-25 and every OBX-11).
    ``images``: the sample's scattergram PNG (``result["scattergram"]``), where there is one, as an
    OBX of type ED (base64), as analyzers send their pictures."""
    if status not in ("F", "C"):
        raise ValueError(f"result status {status!r}: F or C")
    now = now or datetime.now(timezone.utc)
    sample_id = esc(result.get("sample_id") or "unknown")
    flags = list(result.get("flags") or [])
    abnormal = "A" if flags else ""
    observed = _result_time(result, now)
    segments = [
        "|".join(["MSH", "^~\\&", "edgehema", esc(sending_facility or result.get("instrument_id") or ""),
                  esc(receiving_application), esc(receiving_facility), hl7_time(now), "", "ORU^R01^ORU_R01",
                  esc(control_id), "P", "2.5.1", "", "", "AL", "NE"]),
    ]
    species = result.get("species")
    if species:
        # PID-3 carries the sample (accession) id; PID-5, required, an unspecified name (the
        # analyzer does not know the patient); PID-35 the species, as veterinary LIS read it.
        pid = (["PID", "1", "", f"{sample_id}^^^^ACSN", "", "UNKNOWN^^^^^^U"] + [""] * 29
               + [f"{esc(species)}^{esc(species)}^L"])
        segments.append("|".join(pid))
    panel = DIFFERENTIAL_PANEL if result.get("kind") == "smear_slide" else PANEL
    segments.append("|".join(["OBR", "1", "", sample_id, "^".join(panel), "", "", observed] + [""] * 17 + [status]))
    model = result.get("model") or {}
    if model:
        segments.append("|".join(["NTE", "1", "L", esc(f"model {model.get('name', '?')} {model.get('version', '')} "
                                                     f"sha256 {model.get('sha256', '?')} on {model.get('backend', '?')}")]))
    elif result.get("kind") == "smear_slide":
        segments.append("|".join(["NTE", "1", "L", esc(f"smear slide {result.get('slide_id', '?')}: white-cell "
                                                     f"differential and red-cell morphology over "
                                                     f"{result.get('images', '?')} images")]))
    elif result.get("kind") == "smear":
        segments.append("|".join(["NTE", "1", "L", esc(f"smear image {result.get('source', '?')}, "
                                                     f"detector {result.get('engine', '?')}")]))
    for k, flag in enumerate(flags, start=2):
        detail = (result.get("flag_details") or {}).get(flag, "")
        segments.append("|".join(["NTE", str(k), "L", esc(f"FLAG {flag}: {detail}" if detail else f"FLAG {flag}")]))
    obx = [(f"{code}^{name}^{system}", value, unit, "NM" if _numeric(value) else "ST")
           for code, name, system, value, unit in observations(result)]
    for k, (ident, value, unit, kind) in enumerate(obx, start=1):
        units = f"{unit}^{unit}^UCUM" if unit else ""  # an ordinal (a morphology grade, 2+) has none
        segments.append("|".join(["OBX", str(k), kind, ident, "", esc(value), units, "", abnormal, "", "",
                                  status, "", "", observed]))
    picture = result.get("scattergram")
    if images and picture:
        try:
            data = base64.b64encode(Path(picture).read_bytes()).decode("ascii")
        except OSError:
            data = None  # the picture is gone: the counts still go, with a note
            segments.append("|".join(["NTE", str(len(flags) + 2), "L", esc(f"scattergram {picture} not readable")]))
        if data is not None:
            segments.append("|".join(["OBX", str(len(obx) + 1), "ED", f"EHM-SCATTER^Scattergrams^{LOCAL}", "",
                                      f"edgehema^IM^PNG^Base64^{data}", "", "", "", "", "", status, "", "", observed]))
    segments.append("|".join(["SPM", "1", f"{sample_id}&edgehema", "", "BLD^Whole blood^HL70487"]))
    message = "\r".join(segments) + "\r"
    hl7.parse(message)  # a message python-hl7 cannot parse back is a bug here, not the LIS's problem
    return message


def read_ack(text: str) -> tuple[str, str, str]:
    """(acknowledgement code, control id acknowledged, text) from an ACK message: AA, AE, AR
    (or CA, CE, CR in enhanced mode)."""
    try:
        msg = hl7.parse(text.replace("\n", "\r"))
        msa = msg.segment("MSA")
    except (KeyError, IndexError, ValueError, hl7.ParseException) as exc:
        raise ValueError(f"not an HL7 acknowledgement ({type(exc).__name__})") from None
    code = str(msa[1]).strip()
    acked = str(msa[2]).strip() if len(msa) > 2 else ""
    note = str(msa[3]).strip() if len(msa) > 3 else ""
    return code, acked, note
