"""The stream's settings file (``edgehema stream --config FILE``, ``deploy/stream.toml``), checked.

Every key has a type; a value of the wrong type or a key that is not a setting (a typo would
otherwise be ignored silently, and the device would run with a default nobody chose) is one
error line naming the file and the key.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from edgehema._utils.toml import read_toml
from edgehema.exceptions import EdgehemaError

#: setting -> (accepted Python types, what it is)
SETTINGS: dict[str, tuple[tuple[type, ...], str]] = {
    "port": ((str,), "pyserial URL of the instrument link"),
    "baud": ((int,), "baud rate"),
    "journal": ((str,), "SQLite result journal"),
    "archive": ((str,), "folder of per-sample frame archives"),
    "output": ((str,), "file the JSON results are appended to"),
    "model": ((str,), "model bundle directory or shipped name"),
    "backend": ((str,), "onnx, tflite or auto"),
    "adapt": ((bool,), "per-sample adaptation"),
    "reconnect": ((bool,), "wait for the port when it goes away"),
    "max_samples": ((int,), "stop after this many results"),
    "idle_exit": ((int, float), "stop after this many seconds without data"),
    "cpu": ((int,), "pin the stream to this CPU core"),
    "lis": ((str,), "LIS to send each result to (mllp://, astm+tcp://, astm+serial://)"),
    "plots": ((str,), "folder for each sample's scattergram PNG"),
    "trusted_keys": ((str, list), "public key files or folders the model must be signed by"),
}
_TYPE_NAMES = {str: "a string", int: "a whole number", float: "a number", bool: "true or false", list: "a list of strings"}


def load_stream_settings(path: str | Path) -> dict:
    path = Path(path)
    data = read_toml(path, EdgehemaError, "the stream settings")
    settings = data.get("stream", data)
    if not isinstance(settings, dict):
        raise EdgehemaError(f"{path}: [stream] must be a table of settings")
    for key, value in settings.items():
        if key not in SETTINGS:
            near = difflib.get_close_matches(key, SETTINGS, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else f" (settings: {', '.join(SETTINGS)})"
            raise EdgehemaError(f"{path}: unknown setting '{key}'{hint}")
        types, what = SETTINGS[key]
        # TOML's true/false are bools, and bool is an int in Python: keep them apart.
        if isinstance(value, bool) != (bool in types) or not isinstance(value, types):
            want = " or ".join(_TYPE_NAMES[t] for t in types)
            raise EdgehemaError(f"{path}: setting '{key}' ({what}) must be {want}, not {value!r}")
    keys = settings.get("trusted_keys")
    if isinstance(keys, list) and (not keys or not all(isinstance(k, str) and k for k in keys)):
        raise EdgehemaError(f"{path}: setting 'trusted_keys' must be a key file or folder, or a non-empty list of them")
    if "backend" in settings and settings["backend"] not in ("onnx", "tflite", "auto"):
        raise EdgehemaError(f"{path}: setting 'backend' must be onnx, tflite or auto, not {settings['backend']!r}")
    for key in ("baud", "max_samples"):
        if key in settings and settings[key] < 1:
            raise EdgehemaError(f"{path}: setting '{key}' must be at least 1, not {settings[key]}")
    return settings
