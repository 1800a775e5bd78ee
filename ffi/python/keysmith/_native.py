"""Loading libkeysmith and declaring its C functions for ctypes."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading
from pathlib import Path
from typing import Optional

from ._error import KS_INTERNAL_ERROR, KeysmithError

c_char_p = ctypes.c_char_p
c_void_p = ctypes.c_void_p
c_size_t = ctypes.c_size_t
c_uint32 = ctypes.c_uint32



KS_KEY_MAX_LEN = 38
KS_FINGERPRINT_LEN = 64

if sys.platform == "darwin":
    _FILE_NAMES = ("libkeysmith.dylib",)
elif sys.platform == "win32":
    _FILE_NAMES = ("keysmith.dll",)
else:
    _FILE_NAMES = ("libkeysmith.so",)

# (name, return type, argument types) for every function used here.
_SIGNATURES = (
    ("ks_version", c_char_p, ()),
    ("ks_result_str", c_char_p, (c_uint32,)),
    ("ks_last_error", c_char_p, ()),
    ("ks_key_check_len", c_uint32, (c_char_p, c_size_t)),
    ("ks_key_canonicalize", c_uint32, (c_char_p, c_char_p, c_size_t, ctypes.POINTER(c_size_t))),
    ("ks_machine_fingerprint", c_uint32, (c_char_p, c_char_p, c_size_t, ctypes.POINTER(c_size_t))),
    ("ks_client_options_new", c_uint32, (ctypes.POINTER(c_void_p),)),
    ("ks_client_options_set_timeout_ms", c_uint32, (c_void_p, ctypes.c_uint64)),
    ("ks_client_options_set_offline_grace_secs", c_uint32, (c_void_p, ctypes.c_uint64)),
    ("ks_client_options_set_user_agent", c_uint32, (c_void_p, c_char_p)),
    ("ks_client_options_set_key_prefix", c_uint32, (c_void_p, c_char_p)),
    ("ks_client_options_free", None, (c_void_p,)),
    (
        "ks_client_new_with_options",
        c_uint32,
        (c_char_p, c_char_p, c_char_p, c_char_p, c_void_p, ctypes.POINTER(c_void_p)),
    ),
    ("ks_client_validate", c_uint32, (c_void_p, c_char_p, c_char_p, c_char_p, ctypes.POINTER(c_void_p))),
    (
        "ks_client_validate_offline",
        c_uint32,
        (c_void_p, c_char_p, c_char_p, c_char_p, ctypes.POINTER(c_void_p)),
    ),
    (
        "ks_client_deactivate",
        c_uint32,
        (
            c_void_p,
            c_char_p,
            c_char_p,
            c_char_p,
            ctypes.POINTER(ctypes.c_bool),
            ctypes.POINTER(ctypes.c_bool),
        ),
    ),
    ("ks_client_free", None, (c_void_p,)),
    ("ks_validation_valid", ctypes.c_bool, (c_void_p,)),
    ("ks_validation_code", c_char_p, (c_void_p,)),
    ("ks_validation_source", c_char_p, (c_void_p,)),
    ("ks_validation_message", c_char_p, (c_void_p,)),
    ("ks_validation_plan", c_char_p, (c_void_p,)),
    ("ks_validation_expires_at", ctypes.c_int64, (c_void_p,)),
    ("ks_validation_offline_until", ctypes.c_int64, (c_void_p,)),
    ("ks_validation_features_len", c_size_t, (c_void_p,)),
    ("ks_validation_feature", c_char_p, (c_void_p, c_size_t)),
    ("ks_validation_free", None, (c_void_p,)),
)

_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None


def library_path() -> str:
    """Where libkeysmith is loaded from: ``$KEYSMITH_LIB``, else the file next
    to this package, else the system's library search path."""
    from_env = os.environ.get("KEYSMITH_LIB")
    if from_env:
        return from_env
    here = Path(__file__).resolve().parent
    for name in _FILE_NAMES:
        candidate = here / name
        if candidate.exists():
            return str(candidate)
    found = ctypes.util.find_library("keysmith")
    if found:
        return found
    raise KeysmithError(
        KS_INTERNAL_ERROR,
        "libkeysmith not found: set KEYSMITH_LIB to the path of "
        f"{_FILE_NAMES[0]}, or copy it next to {here / '__init__.py'}",
    )


def lib() -> ctypes.CDLL:
    """The loaded library, with every function's signature declared."""
    global _lib
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is None:
            path = library_path()
            try:
                loaded = ctypes.CDLL(path)
            except OSError as e:
                raise KeysmithError(KS_INTERNAL_ERROR, f"cannot load libkeysmith from {path}: {e}") from e
            for name, restype, argtypes in _SIGNATURES:
                function = getattr(loaded, name)
                function.restype = restype
                function.argtypes = argtypes
            _lib = loaded
    return _lib
