//! A machine fingerprint that names this machine to the license server
//! without revealing its machine id.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{Error, Kind};

/// Where Linux and other systemd/D-Bus systems keep the machine id.
const MACHINE_ID_PATHS: [&str; 2] = ["/etc/machine-id", "/var/lib/dbus/machine-id"];

/// A stable fingerprint of this machine for `app_id`: 64 hex digits of
/// SHA-256 over the app id and the machine id (`/etc/machine-id`, else
/// `/var/lib/dbus/machine-id`).
///
/// The same on every run on the same machine; different for every app id,
/// so two vendors' fingerprints cannot be linked; and never the machine id
/// itself, which the hash does not reveal. Fails (see
/// [`Error::is_machine_id`]) where no machine id exists, e.g. a minimal
/// container: pass a fingerprint of your own choosing there.
///
/// ```no_run
/// let fp = keysmith::machine_fingerprint("acme-editor")?;
/// let options = keysmith::ValidateOptions::new().fingerprint(fp);
/// # Ok::<(), keysmith::Error>(())
/// ```
pub fn machine_fingerprint(app_id: &str) -> Result<String, Error> {
    fingerprint_from_files(app_id, &MACHINE_ID_PATHS.map(Path::new))
}

fn fingerprint_from_files(app_id: &str, paths: &[&Path]) -> Result<String, Error> {
    for path in paths {
        if let Ok(text) = std::fs::read_to_string(path) {
            let id = text.trim();
            if !id.is_empty() && id != "uninitialized" {
                return Ok(fingerprint_of(app_id, id));
            }
        }
    }
    let tried: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    Err(Error::new(
        Kind::MachineId,
        format!(
            "this machine has no machine id (tried {}): pass a fingerprint of your own",
            tried.join(", ")
        ),
    ))
}

fn fingerprint_of(app_id: &str, machine_id: &str) -> String {
    let mut hash = Sha256::new();
    for part in ["keysmith-fingerprint-v1", app_id, machine_id] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    hex::encode(hash.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_salted_and_not_the_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("machine-id");
        let id = "4c4c4544003510488034b4c04f4d4d32";
        std::fs::write(&path, format!("{id}\n")).unwrap();
        let paths = [path.as_path()];
        let a = fingerprint_from_files("app-a", &paths).unwrap();
        assert_eq!(
            a,
            fingerprint_from_files("app-a", &paths).unwrap(),
            "stable"
        );
        assert_ne!(
            a,
            fingerprint_from_files("app-b", &paths).unwrap(),
            "salted per app"
        );
        assert!(!a.contains(id));
        assert_eq!(a.len(), 64);
        assert!(keysmith_core::domain::is_valid_fingerprint(&a));
    }

    #[test]
    fn falls_back_to_the_second_file_and_fails_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        let dbus = dir.path().join("dbus");
        std::fs::write(&empty, "\n").unwrap();
        std::fs::write(&dbus, "abc\n").unwrap();
        let missing = dir.path().join("missing");
        assert_eq!(
            fingerprint_from_files("x", &[&missing, &empty, &dbus]).unwrap(),
            fingerprint_of("x", "abc")
        );
        let err = fingerprint_from_files("x", &[&missing, &empty]).unwrap_err();
        assert!(err.is_machine_id());
        assert!(err.to_string().contains("no machine id"), "{err}");
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn this_machine_when_it_has_an_id() {
        if MACHINE_ID_PATHS.iter().any(|p| Path::new(p).exists()) {
            let fp = machine_fingerprint("keysmith-test").unwrap();
            assert_eq!(fp, machine_fingerprint("keysmith-test").unwrap());
        } else {
            assert!(machine_fingerprint("keysmith-test")
                .unwrap_err()
                .is_machine_id());
        }
    }
}
