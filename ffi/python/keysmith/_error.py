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
        return self.result in (KS_NETWORK, KS_TIMEOUT)


class InvalidArgumentError(KeysmithError, ValueError):
    """A bad argument value (e.g. a NUL character in a string, a domain that
    is not a host name, a negative timeout) or setting (a malformed public
    key, a server URL that is not ``http(s)://host``): no answer, like every
    :class:`KeysmithError` (``KS_INVALID_ARGUMENT``, ``KS_INVALID_CONFIG``,
    ``KS_INVALID_PUBLIC_KEY``), and a ``ValueError`` as Python has it."""


class ArgumentTypeError(KeysmithError, TypeError):
    """An argument of the wrong type (e.g. ``None`` for a ``str``): no answer,
    like every :class:`KeysmithError` (``KS_INVALID_ARGUMENT``), and a
    ``TypeError`` as Python has it."""


class LicenseNotFoundError(KeysmithError):
    """:meth:`keysmith.Client.deactivate`: no license has this key
    (``KS_LICENSE_NOT_FOUND``)."""


# ks_result numbers (keysmith.h): stable, never renumbered.
KS_OK = 0
KS_NULL_PARAMETER = 1
KS_INVALID_ARGUMENT = 2
KS_INSUFFICIENT_SIZE = 3
KS_KEY_MALFORMED = 4
KS_INVALID_PUBLIC_KEY = 5
KS_INVALID_CONFIG = 6
KS_NETWORK = 7
KS_TIMEOUT = 8
KS_UNTRUSTED_ANSWER = 9
KS_PROTOCOL = 10
KS_NO_CACHE = 11
KS_NO_MACHINE_ID = 12
KS_LICENSE_NOT_FOUND = 13
KS_INTERNAL_ERROR = 100
KS_PANIC = 101

_NAMES = {value: name for name, value in globals().items() if name.startswith("KS_")}
