"""Tests of the Python package over libkeysmith (stdlib unittest only).

Run from cargo (``ffi/tests/python.rs`` starts a real server and sets the
environment), or by hand::

    KEYSMITH_LIB=target/debug/libkeysmith.so python3 -m unittest discover -s ffi/python/tests -t ffi/python

Without ``KEYSMITH_TEST_SERVER`` the tests that need a server are skipped
(unless ``KEYSMITH_TEST_REQUIRE_SERVER`` is set, which makes that a failure).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import unittest
from datetime import datetime, timedelta, timezone
from pathlib import Path

import keysmith

SERVER = os.environ.get("KEYSMITH_TEST_SERVER")
PACKAGE_DIR = Path(keysmith.__file__).resolve().parent
PUBLIC_KEY_SHAPED = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
KEY = "KS-7H2K-Q9WM-4XRT-8CVP-N3FJ-VCZ9"


def typo_of(key: str) -> str:
    return key[:-1] + ("B" if key[-1] == "A" else "A")


def closed_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return "http://127.0.0.1:%d" % s.getsockname()[1]


def needs_server(cls):
    if SERVER is None:
        if os.environ.get("KEYSMITH_TEST_REQUIRE_SERVER"):
            raise RuntimeError("KEYSMITH_TEST_SERVER is not set")
        return unittest.skip("KEYSMITH_TEST_SERVER not set")(cls)
    return cls


class LocalTests(unittest.TestCase):
    """No server needed."""

    def test_check_key_is_forgiving_and_catches_typos(self) -> None:
        self.assertTrue(keysmith.check_key(KEY))
        self.assertTrue(keysmith.check_key("ks 7h2k q9wm 4xrt 8cvp n3fj vcz9"))
        self.assertFalse(keysmith.check_key(typo_of(KEY)))
        self.assertFalse(keysmith.check_key(KEY[:-2] + KEY[-1] + KEY[-2]))
        for garbage in ["", "garbage", KEY + "\0", KEY + "\0junk", "caf\u00e9", "\ud800", "A" * 1_000_000]:
            self.assertFalse(keysmith.check_key(garbage), repr(garbage[:20]))
        with self.assertRaises(TypeError):
            keysmith.check_key(None)  # type: ignore[arg-type]
        with self.assertRaises(TypeError):
            keysmith.check_key(KEY.encode())  # type: ignore[arg-type]

    def test_canonical_key(self) -> None:
        self.assertEqual(keysmith.canonical_key("ks 7h2k q9wm 4xrt 8cvp n3fj vcz9"), KEY)
        with self.assertRaises(keysmith.KeysmithError) as caught:
            keysmith.canonical_key(typo_of(KEY))
        self.assertEqual(caught.exception.result_name, "KS_KEY_MALFORMED")

    def test_version_and_library(self) -> None:
        self.assertEqual(keysmith.library_version(), keysmith.__version__)
        self.assertTrue(os.path.exists(keysmith.library_path()))

    def test_machine_fingerprint(self) -> None:
        try:
            fp = keysmith.machine_fingerprint("py-test")
        except keysmith.KeysmithError as e:
            self.assertEqual(e.result_name, "KS_NO_MACHINE_ID")
            return
        self.assertEqual(len(fp), 64)
        self.assertEqual(fp, keysmith.machine_fingerprint("py-test"))
        self.assertNotEqual(fp, keysmith.machine_fingerprint("other-app"))

    def test_bad_configuration_raises(self) -> None:
        cases = [
            ("http://127.0.0.1:1", "not base64!", "app", "KS_INVALID_PUBLIC_KEY"),
            ("http://127.0.0.1:1", "", "app", "KS_INVALID_PUBLIC_KEY"),
            ("http://127.0.0.1:1", "AAAA", "app", "KS_INVALID_PUBLIC_KEY"),
            ("ftp://example.com", PUBLIC_KEY_SHAPED, "app", "KS_INVALID_CONFIG"),
            ("not a url", PUBLIC_KEY_SHAPED, "app", "KS_INVALID_CONFIG"),
            ("http://127.0.0.1:1", PUBLIC_KEY_SHAPED, "../etc", "KS_INVALID_CONFIG"),
        ]
        with tempfile.TemporaryDirectory() as cache:
            for url, public_key, app_id, result in cases:
                with self.assertRaises(keysmith.KeysmithError) as caught:
                    keysmith.Client(url, public_key, app_id, cache)
                self.assertEqual(caught.exception.result_name, result, (url, public_key, app_id))
                self.assertTrue(str(caught.exception))
            with self.assertRaises(keysmith.KeysmithError):
                keysmith.Client("http://127.0.0.1:1", PUBLIC_KEY_SHAPED, "app", cache, timeout=0)
            with self.assertRaises(keysmith.KeysmithError):
                keysmith.Client("http://127.0.0.1:1", PUBLIC_KEY_SHAPED, "app", cache, key_prefix="no good")
            # Bad arguments are no answer: a KeysmithError (SPEC §9), and
            # the TypeError or ValueError Python code expects.
            bad_arguments = [
                (TypeError, lambda: keysmith.Client(None, PUBLIC_KEY_SHAPED, "app", cache)),  # type: ignore[arg-type]
                (TypeError, lambda: keysmith.Client("http://127.0.0.1:1", None, "app", cache)),  # type: ignore[arg-type]
                (TypeError, lambda: keysmith.Client("http://127.0.0.1:1", [PUBLIC_KEY_SHAPED, 7], "app", cache)),  # type: ignore[list-item]
                (ValueError, lambda: keysmith.Client("http://127.0.0.1:1\0", PUBLIC_KEY_SHAPED, "app", cache)),
                (ValueError, lambda: keysmith.Client("http://127.0.0.1:1", PUBLIC_KEY_SHAPED, "a\0pp", cache)),
                (ValueError, lambda: keysmith.machine_fingerprint("a\0pp")),
                (TypeError, lambda: keysmith.Client("http://127.0.0.1:1", PUBLIC_KEY_SHAPED, "app", 123)),  # type: ignore[arg-type]
                (TypeError, lambda: keysmith.Client("http://127.0.0.1:1", PUBLIC_KEY_SHAPED, "app", cache, timeout="5")),  # type: ignore[arg-type]
                (TypeError, lambda: keysmith.Client("http://127.0.0.1:1", PUBLIC_KEY_SHAPED, "app", cache, timeout=True)),
            ]
            for bad in [float("nan"), float("inf"), -1, 0, 1e30]:
                bad_arguments.append(
                    (ValueError, lambda bad=bad: keysmith.Client("http://127.0.0.1:1", PUBLIC_KEY_SHAPED, "app", cache, timeout=bad))
                )
            for bad in [float("nan"), float("inf"), -5, timedelta(seconds=-1)]:
                bad_arguments.append(
                    (ValueError, lambda bad=bad: keysmith.Client("http://127.0.0.1:1", PUBLIC_KEY_SHAPED, "app", cache, offline_grace=bad))
                )
            client = keysmith.Client("http://127.0.0.1:1", PUBLIC_KEY_SHAPED, "app", cache)
            self.addCleanup(client.close)
            valid_shaped = "KS-7H2K-Q9WM-4XRT-8CVP-N3FJ-VCZ9"
            bad_arguments += [
                (ValueError, lambda: client.validate(valid_shaped, domain="")),
                (ValueError, lambda: client.validate(valid_shaped, domain="not a host!")),
                (ValueError, lambda: client.validate(valid_shaped, fingerprint="x y")),
                (TypeError, lambda: client.validate(valid_shaped, domain=7)),  # type: ignore[arg-type]
            ]
            for python_error, call in bad_arguments:
                with self.assertRaises(keysmith.KeysmithError) as caught:
                    call()
                self.assertIsInstance(caught.exception, python_error)
                self.assertEqual(caught.exception.result_name, "KS_INVALID_ARGUMENT")
            # A setting the library refuses is a ValueError too.
            with self.assertRaises(ValueError) as refused:
                keysmith.Client("http://127.0.0.1:1", PUBLIC_KEY_SHAPED, "app", "")
            self.assertEqual(refused.exception.result_name, "KS_INVALID_CONFIG")

    def test_offline_without_cache_raises_and_typos_need_no_server(self) -> None:
        with tempfile.TemporaryDirectory() as cache:
            with keysmith.Client(closed_url(), PUBLIC_KEY_SHAPED, "py-test", cache, timeout=5) as client:
                with self.assertRaises(keysmith.KeysmithError) as caught:
                    client.validate(KEY)
                self.assertTrue(caught.exception.is_network, caught.exception.result_name)
                with self.assertRaises(keysmith.KeysmithError) as caught:
                    client.validate_offline(KEY)
                self.assertEqual(caught.exception.result_name, "KS_NO_CACHE")
                for typo in [typo_of(KEY), "", "\0", "\ud800"]:
                    answer = client.validate(typo)
                    self.assertEqual((answer.valid, answer.code, answer.source), (False, "KEY_MALFORMED", "local"))
                    self.assertIsNone(answer.plan)
                    self.assertIsNone(answer.expires_at)

    def test_closed_client_raises(self) -> None:
        with tempfile.TemporaryDirectory() as cache:
            client = keysmith.Client(closed_url(), PUBLIC_KEY_SHAPED, "py-test", cache)
            self.assertFalse(client.closed)
            client.close()
            client.close()
            self.assertTrue(client.closed)
            with self.assertRaises(keysmith.KeysmithError):
                client.validate(KEY)

    def test_library_from_env_and_beside_the_package(self) -> None:
        library = keysmith.library_path()
        code = "import keysmith; print(keysmith.check_key(%r), keysmith.library_path())" % KEY
        env = dict(os.environ)
        env["KEYSMITH_LIB"] = "/nonexistent/libkeysmith.so"
        env["PYTHONPATH"] = str(PACKAGE_DIR.parent)
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=PACKAGE_DIR.parent
        )
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("cannot load libkeysmith from /nonexistent/libkeysmith.so", out.stderr)

        with tempfile.TemporaryDirectory() as site:
            shutil.copytree(PACKAGE_DIR, Path(site) / "keysmith", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
            shutil.copy(library, Path(site) / "keysmith" / "libkeysmith.so")
            env.pop("KEYSMITH_LIB")
            env["PYTHONPATH"] = site
            out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=site)
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertEqual(out.stdout.split(), ["True", str(Path(site).resolve() / "keysmith" / "libkeysmith.so")])


@needs_server
class ServerTests(unittest.TestCase):
    """Against the real server the Rust test started: VALID_KEY is on plan
    "pro" (features sso, audit-log) until 2099-01-01, REVOKED_KEY is
    revoked, UNKNOWN_KEY is well-formed but no license has it."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.public_key = os.environ["KEYSMITH_TEST_PUBLIC_KEY"]
        cls.valid_key = os.environ["KEYSMITH_TEST_VALID_KEY"]
        cls.revoked_key = os.environ["KEYSMITH_TEST_REVOKED_KEY"]
        cls.unknown_key = os.environ["KEYSMITH_TEST_UNKNOWN_KEY"]

    def setUp(self) -> None:
        self._cache = tempfile.TemporaryDirectory()
        self.cache = self._cache.name
        self.client = keysmith.Client(SERVER, self.public_key, "py-test", self.cache, timeout=20)

    def tearDown(self) -> None:
        self.client.close()
        self._cache.cleanup()

    def test_valid_license(self) -> None:
        answer = self.client.validate(self.valid_key)
        self.assertIsInstance(answer, keysmith.Validation)
        self.assertTrue(answer.valid)
        self.assertEqual(answer.code, "VALID")
        self.assertEqual(answer.source, "online")
        self.assertEqual(answer.plan, "pro")
        self.assertEqual(sorted(answer.features), ["audit-log", "sso"])
        # Frozen all through: the features cannot be changed, the answer hashes.
        self.assertIsInstance(answer.features, tuple)
        self.assertEqual(hash(answer), hash(answer))
        self.assertEqual(answer.expires_at, datetime(2099, 1, 1, tzinfo=timezone.utc))
        self.assertEqual(answer.expires_at.tzinfo, timezone.utc)
        self.assertIsNotNone(answer.offline_until)
        self.assertTrue(answer.has_feature("sso"))
        self.assertFalse(answer.has_feature("warp-drive"))
        self.assertEqual(answer.message, "the license is valid")

    def test_domain_and_fingerprint(self) -> None:
        answer = self.client.validate(self.valid_key, domain="Shop.Example.COM.", fingerprint="machine-1")
        self.assertTrue(answer.valid)
        with self.assertRaises(keysmith.KeysmithError) as caught:
            self.client.validate(self.valid_key, domain="not a host name!")
        self.assertEqual(caught.exception.result_name, "KS_INVALID_ARGUMENT")
        with self.assertRaises(keysmith.KeysmithError):
            self.client.validate(self.valid_key, fingerprint="has spaces")
        for bad in [{"domain": "shop\0.example.com"}, {"fingerprint": "m\0"}]:
            with self.assertRaises(keysmith.KeysmithError) as caught:
                self.client.validate(self.valid_key, **bad)
            self.assertIsInstance(caught.exception, ValueError)

    def test_typo_is_an_answer_decided_locally(self) -> None:
        answer = self.client.validate(typo_of(self.valid_key))
        self.assertEqual((answer.valid, answer.code, answer.source), (False, "KEY_MALFORMED", "local"))
        self.assertEqual(answer.features, ())
        self.assertIsNone(answer.offline_until)

    def test_revoked_and_unknown(self) -> None:
        revoked = self.client.validate(self.revoked_key)
        self.assertEqual((revoked.valid, revoked.code, revoked.source), (False, "LICENSE_REVOKED", "online"))
        self.assertEqual(revoked.plan, "pro")
        self.assertFalse(revoked.has_feature("sso"))
        unknown = self.client.validate(self.unknown_key)
        self.assertEqual((unknown.valid, unknown.code), (False, "LICENSE_NOT_FOUND"))

    def test_deactivate_frees_the_seat_and_forgets_the_cached_answer(self) -> None:
        fingerprint = "py-moving-machine"
        self.assertTrue(self.client.validate(self.valid_key, fingerprint=fingerprint).valid)
        freed = self.client.deactivate(self.valid_key, fingerprint=fingerprint)
        self.assertEqual(freed, keysmith.Deactivation(domain_freed=False, machine_freed=True))
        with self.assertRaises(keysmith.KeysmithError) as caught:
            self.client.validate_offline(self.valid_key, fingerprint=fingerprint)
        self.assertEqual(caught.exception.result_name, "KS_NO_CACHE")
        self.assertEqual(
            self.client.deactivate(self.valid_key, fingerprint=fingerprint),
            keysmith.Deactivation(False, False),
        )
        with self.assertRaises(keysmith.LicenseNotFoundError) as caught:
            self.client.deactivate(self.unknown_key, fingerprint="m")
        self.assertEqual(caught.exception.result_name, "KS_LICENSE_NOT_FOUND")
        with self.assertRaises(keysmith.InvalidArgumentError):
            self.client.deactivate(self.valid_key)
        with self.assertRaises(keysmith.KeysmithError) as caught:
            self.client.deactivate(typo_of(self.valid_key), fingerprint="m")
        self.assertEqual(caught.exception.result_name, "KS_KEY_MALFORMED")
        with keysmith.Client(closed_url(), self.public_key, "py-test", self.cache, timeout=5) as offline:
            with self.assertRaises(keysmith.KeysmithError) as caught:
                offline.deactivate(self.valid_key, fingerprint="m")
            self.assertTrue(caught.exception.is_network)

    def test_offline_from_cache(self) -> None:
        self.assertTrue(self.client.validate(self.valid_key).valid)
        self.assertFalse(self.client.validate(self.revoked_key).valid)
        # The same cache, the server unreachable: the cached answers stand.
        with keysmith.Client(closed_url(), self.public_key, "py-test", self.cache, timeout=5) as offline:
            answer = offline.validate(self.valid_key)
            self.assertEqual((answer.valid, answer.code, answer.source), (True, "VALID", "cache"))
            self.assertTrue(answer.has_feature("sso"))
            revoked = offline.validate(self.revoked_key)
            self.assertEqual((revoked.code, revoked.source), ("LICENSE_REVOKED", "cache"))
            self.assertTrue(offline.validate_offline(self.valid_key).valid)
            with self.assertRaises(keysmith.KeysmithError) as caught:
                offline.validate(self.unknown_key)
            self.assertTrue(caught.exception.is_network)
        # A grace of 0 seconds trusts no cached valid answer.
        with keysmith.Client(closed_url(), [self.public_key], "py-test", self.cache, offline_grace=timedelta(0)) as strict:
            self.assertEqual(strict.validate(self.valid_key).code, "OFFLINE_GRACE_EXPIRED")

    def test_eight_threads_share_one_client(self) -> None:
        typo = typo_of(self.valid_key)
        expected = {self.valid_key: "VALID", typo: "KEY_MALFORMED", self.revoked_key: "LICENSE_REVOKED"}
        failures: list = []
        counts = [0] * 8
        start = threading.Barrier(8)

        def work(index: int) -> None:
            try:
                start.wait()
                for _ in range(10):
                    for key, code in expected.items():
                        answer = self.client.validate(key)
                        if answer.code != code:
                            failures.append((key, answer.code))
                        counts[index] += 1
            except BaseException as e:  # noqa: BLE001 - reported below
                failures.append(e)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(failures, [])
        self.assertEqual(counts, [30] * 8)

    def test_close_waits_for_calls_in_progress(self) -> None:
        client = keysmith.Client(SERVER, self.public_key, "py-test", self.cache)
        results: list = []

        def work() -> None:
            for _ in range(5):
                try:
                    results.append(client.validate(self.valid_key).code)
                except keysmith.KeysmithError:
                    results.append("closed")

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        client.close()
        for t in threads:
            t.join()
        self.assertEqual(len(results), 20)
        self.assertTrue(set(results) <= {"VALID", "closed"}, results)


if __name__ == "__main__":
    unittest.main()
