"""Keysmith license SDK for Python: check license keys as people type them,
validate them against your Keysmith server, and keep working offline from a
cached, signed answer.

A thin ctypes layer over libkeysmith (the C ABI of the Rust SDK): every rule
-- the local key check, signature verification, the cache, the offline grace,
the clock-tamper check -- is the library's. Nothing to compile at install.

>>> import keysmith
>>> keysmith.check_key("ks-7h2k q9wm 4xrt 8cvp n3fj vcz9")
True
>>> with keysmith.Client("https://license.example.com", PUBLIC_KEY, "acme-editor") as client:
...     license = client.validate(key)
...     if not license.valid:
...         print("not licensed:", license.message)

The library is found through ``$KEYSMITH_LIB`` (a path to libkeysmith.so), or
next to this file, or on the system's library path.
"""

from __future__ import annotations

import ctypes
import math
import os
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Optional, Sequence, Tuple, Union

from . import _native
from ._error import (
    KS_INVALID_ARGUMENT,
    KS_INVALID_CONFIG,
    KS_INVALID_PUBLIC_KEY,
    KS_LICENSE_NOT_FOUND,
    KS_NULL_PARAMETER,
    KS_OK,
    ArgumentTypeError,
    InvalidArgumentError,
    KeysmithError,
    LicenseNotFoundError,
)
from ._native import library_path

__all__ = [
    "ArgumentTypeError",
    "Client",
    "Deactivation",
    "InvalidArgumentError",
    "KeysmithError",
    "LicenseNotFoundError",
    "Validation",
    "canonical_key",
    "check_key",
    "library_path",
    "library_version",
    "machine_fingerprint",
]

__version__ = "0.1.0"

PathLike = Union[str, "os.PathLike[str]"]


def _fail(result: int) -> KeysmithError:
    lib = _native.lib()
    detail = _decode(lib.ks_last_error()) or ""
    summary = _decode(lib.ks_result_str(result)) or ""
    # A value the library refuses is a ValueError as well, as Python has it.
    if result in (KS_INVALID_ARGUMENT, KS_INVALID_CONFIG, KS_INVALID_PUBLIC_KEY):
        return InvalidArgumentError(result, detail or summary)
    if result == KS_LICENSE_NOT_FOUND:
        return LicenseNotFoundError(result, detail or summary)
    return KeysmithError(result, detail or summary)


# Longest timeout or grace the library takes, in seconds (its u64
# milliseconds, with room): past it a value would wrap around.
_MAX_SECONDS = 2**53 / 1000


def _seconds(value: Union[float, timedelta], name: str, *, zero_ok: bool) -> float:
    """A duration in seconds from a number or a timedelta: finite, not
    negative (and not zero unless ``zero_ok``)."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ArgumentTypeError(
            KS_INVALID_ARGUMENT, f"{name} must be seconds (a number) or a timedelta, not {type(value).__name__}"
        )
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok) or value > _MAX_SECONDS:
        limit = "at least 0" if zero_ok else "more than 0"
        raise InvalidArgumentError(KS_INVALID_ARGUMENT, f"{name} must be a finite number of seconds, {limit}: {value!r}")
    return float(value)


def _check(result: int) -> None:
    if result != KS_OK:
        raise _fail(result)


def _text(value: str, name: str) -> bytes:
    """A str argument as the NUL-terminated UTF-8 the C ABI takes."""
    if not isinstance(value, str):
        raise ArgumentTypeError(KS_INVALID_ARGUMENT, f"{name} must be a str, not {type(value).__name__}")
    if "\0" in value:
        raise InvalidArgumentError(KS_INVALID_ARGUMENT, f"{name} must not contain a NUL character")
    return value.encode("utf-8")


def _fspath(value: PathLike) -> str:
    """A path argument (str or os.PathLike of str) as str."""
    try:
        path = os.fspath(value)
    except TypeError:
        raise ArgumentTypeError(
            KS_INVALID_ARGUMENT, f"cache_dir must be a str or a path, not {type(value).__name__}"
        ) from None
    if not isinstance(path, str):
        raise ArgumentTypeError(KS_INVALID_ARGUMENT, "cache_dir must be a str path, not bytes")
    return path


def _optional_text(value: Optional[str], name: str) -> Optional[bytes]:
    return None if value is None else _text(value, name)


def _key_bytes(key: str) -> bytes:
    """A key as bytes. Text that cannot be a key (a NUL, a lone surrogate)
    is kept unreadable, so that the library answers KEY_MALFORMED as it does
    for any typo."""
    if not isinstance(key, str):
        raise ArgumentTypeError(KS_INVALID_ARGUMENT, f"key must be a str, not {type(key).__name__}")
    return key.replace("\0", "\ufffd").encode("utf-8", "replace")


def _decode(value: Optional[bytes]) -> Optional[str]:
    return None if value is None else value.decode("utf-8", "replace")


def library_version() -> str:
    """The version of the loaded libkeysmith, e.g. ``"0.1.0"``."""
    return _decode(_native.lib().ks_version()) or ""


def check_key(key: str) -> bool:
    """Whether ``key`` is a well-formed license key -- locally, no client, no
    network. Forgiving as people type (case, spaces, missing dashes, ``O`` for
    ``0``, ``I``/``L`` for ``1``); catches every single typo and every swap of
    two neighbours."""
    data = _key_bytes(key)
    return _native.lib().ks_key_check_len(data, len(data)) == KS_OK


def canonical_key(key: str) -> str:
    """``key`` in canonical form (``"KS-7H2K-Q9WM-..."``); raises
    :class:`KeysmithError` (``KS_KEY_MALFORMED``) if it is not well-formed."""
    data = _key_bytes(key)
    buf = ctypes.create_string_buffer(_native.KS_KEY_MAX_LEN + 1)
    _check(_native.lib().ks_key_canonicalize(data, buf, len(buf), None))
    return buf.value.decode("ascii")


def machine_fingerprint(app_id: str) -> str:
    """This machine's fingerprint for ``app_id``: 64 hex digits, stable across
    runs, different per app, never the raw machine id. Pass it to
    :meth:`Client.validate` to take a machine seat. Raises
    :class:`KeysmithError` (``KS_NO_MACHINE_ID``) where the machine has no
    id."""
    buf = ctypes.create_string_buffer(_native.KS_FINGERPRINT_LEN + 1)
    _check(_native.lib().ks_machine_fingerprint(_text(app_id, "app_id"), buf, len(buf), None))
    return buf.value.decode("ascii")


@dataclass(frozen=True)
class Deactivation:
    """What :meth:`Client.deactivate` freed: whether the domain's and the
    machine's seat were held (and are now free)."""

    domain_freed: bool
    machine_freed: bool


@dataclass(frozen=True)
class Validation:
    """The answer of a validation: valid or not, why, and what the license
    grants."""

    valid: bool
    """Whether the app may run: true exactly when ``code`` is ``"VALID"``."""
    code: str
    """``"VALID"``, ``"KEY_MALFORMED"``, ``"LICENSE_NOT_FOUND"``,
    ``"LICENSE_SUSPENDED"``, ``"LICENSE_REVOKED"``, ``"LICENSE_EXPIRED"``,
    ``"DOMAIN_LIMIT_REACHED"``, ``"MACHINE_LIMIT_REACHED"``,
    ``"OFFLINE_GRACE_EXPIRED"``, ``"CLOCK_TAMPERED"``, ... (a server that
    rate-limits the app gives no answer: ``validate`` raises instead)."""
    source: str
    """``"online"``, ``"cache"`` (server unreachable) or ``"local"``
    (``KEY_MALFORMED`` decided without a request)."""
    plan: Optional[str]
    """The license's plan; None when there is no license."""
    features: Tuple[str, ...] = field(default_factory=tuple)
    """The plan's features. Gate on :meth:`has_feature`, which is false
    unless the answer is valid."""
    expires_at: Optional[datetime] = None
    """When the license expires (UTC); None for a perpetual license or none."""
    offline_until: Optional[datetime] = None
    """Until when this answer may be trusted offline (UTC); None for
    ``KEY_MALFORMED``."""
    message: str = ""
    """A sentence for a person about ``code``."""

    def has_feature(self, feature: str) -> bool:
        """Whether the license is valid and its plan grants ``feature``."""
        return self.valid and feature in self.features


def _utc(seconds: int) -> Optional[datetime]:
    return None if seconds < 0 else datetime.fromtimestamp(seconds, tz=timezone.utc)


def _read_validation(pointer: ctypes.c_void_p) -> Validation:
    """Copies everything out of a ks_validation, then frees it."""
    lib = _native.lib()
    try:
        features = tuple(
            _decode(lib.ks_validation_feature(pointer, i)) or ""
            for i in range(lib.ks_validation_features_len(pointer))
        )
        return Validation(
            valid=bool(lib.ks_validation_valid(pointer)),
            code=_decode(lib.ks_validation_code(pointer)) or "",
            source=_decode(lib.ks_validation_source(pointer)) or "",
            plan=_decode(lib.ks_validation_plan(pointer)),
            features=features,
            expires_at=_utc(lib.ks_validation_expires_at(pointer)),
            offline_until=_utc(lib.ks_validation_offline_until(pointer)),
            message=_decode(lib.ks_validation_message(pointer)) or "",
        )
    finally:
        lib.ks_validation_free(pointer)


class Client:
    """Validates license keys against one Keysmith server, verifying every
    answer with the pinned public key and answering from the cache when the
    server cannot be reached.

    Thread-safe: share one client between threads (each ``validate`` blocks
    only its own thread; the GIL is released meanwhile). Close it with
    :meth:`close` or a ``with`` block; :meth:`close` waits for calls in
    progress.

    ``public_key`` is the server's Ed25519 public key, base64 as
    ``GET /api/v1/public-key`` shows it -- compile it into your app, never
    fetch it at run time; several keys (a list, or commas) are all trusted.
    ``app_id`` names your app; ``cache_dir`` defaults to the platform's
    cache dir for it. ``timeout`` (seconds) bounds each request;
    ``offline_grace`` (seconds or a timedelta) can only shorten how long a
    cached answer is trusted offline. Raises :class:`KeysmithError` for a
    malformed public key or another unusable setting -- an
    :class:`InvalidArgumentError` (a ``ValueError``) for a bad value, an
    :class:`ArgumentTypeError` (a ``TypeError``) for a wrong type.
    """

    def __init__(
        self,
        server_url: str,
        public_key: Union[str, Sequence[str]],
        app_id: str,
        cache_dir: Optional[PathLike] = None,
        *,
        timeout: Optional[float] = None,
        offline_grace: Union[float, timedelta, None] = None,
        user_agent: Optional[str] = None,
        key_prefix: Optional[str] = None,
    ) -> None:
        self._handle: Optional[int] = None
        self._busy = 0
        self._state = threading.Condition()
        if not isinstance(public_key, str):
            if not isinstance(public_key, Sequence) or not all(isinstance(k, str) for k in public_key):
                raise ArgumentTypeError(KS_INVALID_ARGUMENT, "public_key must be a str or a sequence of str")
            public_key = ",".join(public_key)
        lib = _native.lib()
        options = ctypes.c_void_p()
        _check(lib.ks_client_options_new(ctypes.byref(options)))
        try:
            if timeout is not None:
                seconds = _seconds(timeout, "timeout", zero_ok=False)
                _check(lib.ks_client_options_set_timeout_ms(options, max(1, round(seconds * 1000))))
            if offline_grace is not None:
                seconds = _seconds(offline_grace, "offline_grace", zero_ok=True)
                _check(lib.ks_client_options_set_offline_grace_secs(options, int(seconds)))
            if user_agent is None:
                user_agent = f"keysmith-python/{__version__}"
            _check(lib.ks_client_options_set_user_agent(options, _text(user_agent, "user_agent")))
            if key_prefix is not None:
                _check(lib.ks_client_options_set_key_prefix(options, _text(key_prefix, "key_prefix")))
            handle = ctypes.c_void_p()
            _check(
                lib.ks_client_new_with_options(
                    _text(server_url, "server_url"),
                    _text(public_key, "public_key"),
                    _text(app_id, "app_id"),
                    None if cache_dir is None else _text(_fspath(cache_dir), "cache_dir"),
                    options,
                    ctypes.byref(handle),
                )
            )
        finally:
            lib.ks_client_options_free(options)
        self._handle = handle.value

    def validate(
        self,
        key: str,
        domain: Optional[str] = None,
        fingerprint: Optional[str] = None,
    ) -> Validation:
        """Validates ``key`` (for ``domain`` and/or the machine
        ``fingerprint``, taking their seats).

        Returns a :class:`Validation` whenever there is an answer, valid or
        not: check ``.valid`` and ``.code``. Raises :class:`KeysmithError`
        only when there is none: bad arguments, or the server is unreachable
        (``.is_network``) and nothing usable is cached."""
        return self._validate(key, domain, fingerprint, online=True)

    def validate_offline(
        self,
        key: str,
        domain: Optional[str] = None,
        fingerprint: Optional[str] = None,
    ) -> Validation:
        """Like :meth:`validate` from the cache alone, never touching the
        network; raises :class:`KeysmithError` (``KS_NO_CACHE``) when nothing
        is cached for this request."""
        return self._validate(key, domain, fingerprint, online=False)

    def deactivate(
        self,
        key: str,
        domain: Optional[str] = None,
        fingerprint: Optional[str] = None,
    ) -> "Deactivation":
        """Frees the seat this app holds on ``key`` -- the ``domain``'s and/or
        the machine ``fingerprint``'s (at least one) -- so that another domain
        or machine can take it (the app moves to a new machine), and removes
        the cached answer for that request, so that the app does not go on
        working here offline.

        Needs the server: raises :class:`KeysmithError` (``.is_network``)
        when it cannot be reached, :class:`LicenseNotFoundError` when no
        license has this key, :class:`InvalidArgumentError` for neither a
        domain nor a fingerprint or an unusable one, and
        :class:`KeysmithError` (``KS_KEY_MALFORMED``) for a malformed key,
        and :class:`InvalidArgumentError` (``KS_INVALID_CONFIG``) when the
        seat was freed but the cached answer cannot be removed (the cache
        dir became unusable). A seat that was not held is not an error: the
        answer says what was freed."""
        key_data = _key_bytes(key)
        domain_data = _optional_text(domain, "domain")
        fingerprint_data = _optional_text(fingerprint, "fingerprint")
        handle = self._enter()
        try:
            domain_freed = ctypes.c_bool()
            machine_freed = ctypes.c_bool()
            _check(
                _native.lib().ks_client_deactivate(
                    handle,
                    key_data,
                    domain_data,
                    fingerprint_data,
                    ctypes.byref(domain_freed),
                    ctypes.byref(machine_freed),
                )
            )
            return Deactivation(domain_freed.value, machine_freed.value)
        finally:
            self._leave()

    def _validate(self, key: str, domain: Optional[str], fingerprint: Optional[str], online: bool) -> Validation:
        key_data = _key_bytes(key)
        domain_data = _optional_text(domain, "domain")
        fingerprint_data = _optional_text(fingerprint, "fingerprint")
        handle = self._enter()
        try:
            lib = _native.lib()
            function = lib.ks_client_validate if online else lib.ks_client_validate_offline
            answer = ctypes.c_void_p()
            result = function(handle, key_data, domain_data, fingerprint_data, ctypes.byref(answer))
            _check(result)
            return _read_validation(answer)
        finally:
            self._leave()

    def _enter(self) -> int:
        with self._state:
            if self._handle is None:
                raise KeysmithError(KS_NULL_PARAMETER, "the client is closed")
            self._busy += 1
            return self._handle

    def _leave(self) -> None:
        with self._state:
            self._busy -= 1
            self._state.notify_all()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._handle is None

    def close(self) -> None:
        """Frees the client once calls in progress have returned. Further
        calls raise :class:`KeysmithError`. Closing twice is fine."""
        with self._state:
            handle, self._handle = self._handle, None
            while self._busy:
                self._state.wait()
        if handle is not None:
            _native.lib().ks_client_free(handle)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Only reached once no thread holds the client, so nothing is busy.
        handle = getattr(self, "_handle", None)
        if handle is not None and _native._lib is not None:
            self._handle = None
            _native._lib.ks_client_free(handle)
