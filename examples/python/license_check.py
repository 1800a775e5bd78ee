#!/usr/bin/env python3
"""Checking your app's license at start-up with the keysmith package: copy this.

    python3 license_check.py SERVER_URL PUBLIC_KEY LICENSE_KEY [CACHE_DIR]

or set KEYSMITH_SERVER, KEYSMITH_PUBLIC_KEY, KEYSMITH_KEY and
KEYSMITH_CACHE_DIR. In a real app the server URL and the public key are
constants (never fetch the public key at run time), the license key comes
from the user, and the cache dir is left out (the platform's default).

Exit status: 0 licensed, 1 not licensed, 2 no answer at all.
Needs `pip install ./ffi/python` (or PYTHONPATH=ffi/python) and libkeysmith
(KEYSMITH_LIB=/path/to/libkeysmith.so, or the library beside the package).
"""

from __future__ import annotations

import os
import sys

import keysmith

APP_ID = "acme-editor"

MESSAGES = {
    "VALID": "Thank you for your purchase!",
    "KEY_MALFORMED": "That license key has a typo: please check it against your receipt.",
    "LICENSE_NOT_FOUND": "We do not know that license key: please check your receipt.",
    "LICENSE_SUSPENDED": "Your license is suspended: please contact support.",
    "LICENSE_REVOKED": "Your license has been revoked: please contact support.",
    "LICENSE_EXPIRED": "Your license has expired: renew it to keep using the app.",
    "DOMAIN_LIMIT_REACHED": "Your license is in use on as many sites as it allows.",
    "MACHINE_LIMIT_REACHED": "Your license is in use on as many computers as it allows: free one first.",
    "OFFLINE_GRACE_EXPIRED": "We could not reach the license server for too long: please go online once.",
    "CLOCK_TAMPERED": "Your computer's clock looks wrong: please set it to the right time.",
}


def setting(index: int, env: str) -> str | None:
    if len(sys.argv) > index and sys.argv[index]:
        return sys.argv[index]
    return os.environ.get(env) or None


def main() -> int:
    server = setting(1, "KEYSMITH_SERVER")
    public_key = setting(2, "KEYSMITH_PUBLIC_KEY")
    license_key = setting(3, "KEYSMITH_KEY")
    cache_dir = setting(4, "KEYSMITH_CACHE_DIR")
    if not (server and public_key and license_key):
        print(f"usage: {sys.argv[0]} SERVER_URL PUBLIC_KEY LICENSE_KEY [CACHE_DIR]", file=sys.stderr)
        return 2
    try:
        with keysmith.Client(server, public_key, APP_ID, cache_dir) as client:
            license = client.validate(license_key)
    except keysmith.KeysmithError as e:
        # No answer at all: misconfigured, or offline with nothing usable cached.
        print(f"We could not check your license ({e.result_name}): {e}", file=sys.stderr)
        return 2

    print(f"License check: {license.code} ({license.source})")
    print(MESSAGES.get(license.code, license.message))
    if not license.valid:
        return 1
    print(f"Plan: {license.plan}")
    print("Features: " + " ".join(license.features))
    print("Expires: " + (license.expires_at.date().isoformat() if license.expires_at else "never"))
    if license.has_feature("sso"):
        print("Single sign-on is enabled.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
