"""The one exception of the package."""

from __future__ import annotations


class KeysmithError(Exception):
    """No answer: bad arguments or configuration (a malformed public key, a
    server URL that is not ``http(s)://host``), or the license server could
    not be reached (or not trusted) and no usable answer is cached.

    A decided answer is never an exception: an invalid license, a mistyped
    key, ``OFFLINE_GRACE_EXPIRED`` and ``CLOCK_TAMPERED`` are
    :class:`keysmith.Validation` objects with ``valid`` false.

    ``result`` is libkeysmith's ``ks_result`` number and ``result_name`` its
    name (``"KS_NETWORK"``, ``"KS_INVALID_PUBLIC_KEY"``, ...).
    """

    def __init__(self, result: int, message: str) -> None:
        super().__init__(message)
        self.result = result
        self.result_name = _NAMES.get(result, f"KS_UNKNOWN_{result}")

    @property
    def is_network(self) -> bool:
        """The server could not be reached or timed out, and nothing usable is
        cached."""
        return self.result_name in ("KS_NETWORK", "KS_TIMEOUT")


_NAMES = {
    0: "KS_OK",
    1: "KS_NULL_PARAMETER",
    2: "KS_INVALID_ARGUMENT",
    3: "KS_INSUFFICIENT_SIZE",
    4: "KS_KEY_MALFORMED",
    5: "KS_INVALID_PUBLIC_KEY",
    6: "KS_INVALID_CONFIG",
    7: "KS_NETWORK",
    8: "KS_TIMEOUT",
    9: "KS_UNTRUSTED_ANSWER",
    10: "KS_PROTOCOL",
    11: "KS_NO_CACHE",
    12: "KS_NO_MACHINE_ID",
    100: "KS_INTERNAL_ERROR",
    101: "KS_PANIC",
}
