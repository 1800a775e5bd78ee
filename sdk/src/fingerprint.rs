//! A machine fingerprint that names this machine to the license server
//! without revealing its machine id.

use std::path::Path;
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::error::{Error, Kind};

/// Where Linux and other systemd/D-Bus systems keep the machine id.
const MACHINE_ID_PATHS: [&str; 2] = ["/etc/machine-id", "/var/lib/dbus/machine-id"];

/// Where FreeBSD and DragonFly keep theirs.
const BSD_HOST_ID_PATHS: [&str; 1] = ["/etc/hostid"];

/// A stable fingerprint of this machine for `app_id`: 64 hex digits of
/// SHA-256 over the app id and the machine id, which is, by system:
///
/// - Linux (and any other Unix): `/etc/machine-id`, else
///   `/var/lib/dbus/machine-id`;
/// - macOS: the hardware UUID (`IOPlatformUUID`, from `/usr/sbin/ioreg`);
/// - Windows: the `MachineGuid` set at installation
///   (`HKLM\SOFTWARE\Microsoft\Cryptography`, read with `reg.exe` in the
///   64-bit view, without a console window);
/// - FreeBSD, DragonFly: `/etc/hostid`.
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
    // The client's rule, so that the id salting both is one a client takes.
    if !crate::client::is_valid_app_id(app_id) {
        return Err(Error::new(
            Kind::InvalidArgument,
            format!("app id {app_id:?} {}", crate::client::APP_ID_RULE),
        ));
    }
    if cfg!(target_os = "macos") {
        fingerprint_from_program(app_id, &macos_ioreg())
    } else if cfg!(windows) {
        fingerprint_from_program(app_id, &windows_reg())
    } else if cfg!(any(target_os = "freebsd", target_os = "dragonfly")) {
        fingerprint_from_files(app_id, &BSD_HOST_ID_PATHS.map(Path::new))
    } else {
        fingerprint_from_files(app_id, &MACHINE_ID_PATHS.map(Path::new))
    }
}

fn fingerprint_from_files(app_id: &str, paths: &[&Path]) -> Result<String, Error> {
    for path in paths {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Some(id) = usable_id(&text) {
                return Ok(fingerprint_of(app_id, id));
            }
        }
    }
    let tried: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    Err(no_machine_id(&tried.join(", ")))
}

/// A system program that prints the machine id, and how to find it in what
/// the program prints.
struct IdProgram {
    program: String,
    args: Vec<String>,
    parse: fn(&str) -> Option<&str>,
}

/// macOS: the hardware UUID of the platform expert device.
fn macos_ioreg() -> IdProgram {
    IdProgram {
        program: "/usr/sbin/ioreg".to_owned(),
        args: owned(&["-rd1", "-c", "IOPlatformExpertDevice"]),
        parse: ioreg_platform_uuid,
    }
}

/// Windows: `reg.exe` from the system directory. `/reg:64` reads the 64-bit
/// view, where `MachineGuid` is, also from a 32-bit app.
fn windows_reg() -> IdProgram {
    let root = std::env::var("SystemRoot").unwrap_or_else(|_| r"C:\Windows".to_owned());
    IdProgram {
        program: format!(r"{root}\System32\reg.exe"),
        args: owned(&[
            "query",
            r"HKLM\SOFTWARE\Microsoft\Cryptography",
            "/v",
            "MachineGuid",
            "/reg:64",
        ]),
        parse: reg_machine_guid,
    }
}

fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|&a| a.to_owned()).collect()
}

fn fingerprint_from_program(app_id: &str, id: &IdProgram) -> Result<String, Error> {
    let mut command = Command::new(&id.program);
    command
        .args(&id.args)
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    without_console_window(&mut command);
    let printed = command
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned());
    match printed.as_deref().and_then(id.parse).and_then(usable_id) {
        Some(machine_id) => Ok(fingerprint_of(app_id, machine_id)),
        None => Err(no_machine_id(&format!(
            "{} {}",
            id.program,
            id.args.join(" ")
        ))),
    }
}

/// A GUI app on Windows must not flash a console window for `reg.exe`.
#[cfg(windows)]
fn without_console_window(command: &mut Command) {
    use std::os::windows::process::CommandExt;
    const CREATE_NO_WINDOW: u32 = 0x0800_0000;
    command.creation_flags(CREATE_NO_WINDOW);
}

#[cfg(not(windows))]
fn without_console_window(_: &mut Command) {}

/// The value of `"IOPlatformUUID" = "…"` in `ioreg -rd1 -c
/// IOPlatformExpertDevice`.
fn ioreg_platform_uuid(printed: &str) -> Option<&str> {
    printed.lines().find_map(|line| {
        let (name, value) = line.split_once('=')?;
        (name.trim() == "\"IOPlatformUUID\"").then(|| value.trim().trim_matches('"'))
    })
}

/// The value of the `MachineGuid    REG_SZ    …` line of `reg query`.
fn reg_machine_guid(printed: &str) -> Option<&str> {
    printed.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        match (fields.next(), fields.next(), fields.next()) {
            (Some(name), Some("REG_SZ"), value) if name.eq_ignore_ascii_case("MachineGuid") => {
                value
            }
            _ => None,
        }
    })
}

/// A machine id worth hashing: not empty, not systemd's placeholder.
fn usable_id(text: &str) -> Option<&str> {
    let id = text.trim();
    (!id.is_empty() && id != "uninitialized").then_some(id)
}

fn no_machine_id(tried: &str) -> Error {
    Error::new(
        Kind::MachineId,
        format!("this machine has no machine id (tried {tried}): pass a fingerprint of your own"),
    )
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

    /// An app id a client would refuse is refused here too, before any
    /// machine id is read.
    #[test]
    fn the_app_id_follows_the_clients_rule() {
        for bad in ["", ".hidden", "a/b with spaces", &"a".repeat(65)] {
            let err = machine_fingerprint(bad).unwrap_err();
            assert!(err.is_invalid_argument(), "{bad:?}: {err}");
        }
    }

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

    /// What `ioreg -rd1 -c IOPlatformExpertDevice` prints on a Mac (cut).
    const IOREG_PRINTS: &str = r#"+-o Mac14,2  <class IOPlatformExpertDevice, id 0x100000202, registered, matched, active, busy 0 (52 ms), retain 37>
    {
      "IOPlatformSerialNumber" = "C02ZX1YZMD6R"
      "IOPlatformUUIDNotes" = "not this one"
      "IOPlatformUUID" = "3A7E1D9C-1B2C-4D5E-8F90-A1B2C3D4E5F6"
      "model" = <"Mac14,2">
    }
"#;

    /// What `reg query HKLM\SOFTWARE\Microsoft\Cryptography /v MachineGuid`
    /// prints on Windows.
    const REG_PRINTS: &str = "\r\nHKEY_LOCAL_MACHINE\\SOFTWARE\\Microsoft\\Cryptography\r\n    MachineGuid    REG_SZ    6f1c2a9e-3b4d-4e5f-8a7b-9c0d1e2f3a4b\r\n\r\n";

    #[test]
    fn the_mac_and_windows_ids_are_found_in_what_their_programs_print() {
        assert_eq!(
            ioreg_platform_uuid(IOREG_PRINTS),
            Some("3A7E1D9C-1B2C-4D5E-8F90-A1B2C3D4E5F6")
        );
        assert_eq!(ioreg_platform_uuid("+-o Root\n{\n}\n"), None);
        assert_eq!(
            reg_machine_guid(REG_PRINTS),
            Some("6f1c2a9e-3b4d-4e5f-8a7b-9c0d1e2f3a4b")
        );
        assert_eq!(
            reg_machine_guid(
                "ERROR: The system was unable to find the specified registry key or value.\r\n"
            ),
            None
        );
        assert_eq!(reg_machine_guid("    MachineGuid    REG_SZ\r\n"), None);
    }

    /// The program path end to end, with `sh` printing what `ioreg` would.
    #[test]
    #[cfg(unix)]
    fn an_id_program_is_run_and_its_answer_hashed() {
        let ioreg_like = |script: &str| IdProgram {
            program: "/bin/sh".to_owned(),
            args: owned(&["-c", script]),
            parse: ioreg_platform_uuid,
        };
        let printing = ioreg_like(&format!("printf '%s' '{IOREG_PRINTS}'"));
        assert_eq!(
            fingerprint_from_program("app", &printing).unwrap(),
            fingerprint_of("app", "3A7E1D9C-1B2C-4D5E-8F90-A1B2C3D4E5F6")
        );
        for (program, why) in [
            (
                ioreg_like("echo '\"IOPlatformUUID\" = \"x\"'; exit 3"),
                "fails",
            ),
            (ioreg_like("echo nothing to see"), "prints no id"),
            (
                ioreg_like("echo '\"IOPlatformUUID\" = \"\"'"),
                "prints an empty id",
            ),
            (
                IdProgram {
                    program: "/nonexistent/ioreg".to_owned(),
                    ..macos_ioreg()
                },
                "is missing",
            ),
        ] {
            let err = fingerprint_from_program("app", &program).unwrap_err();
            assert!(err.is_machine_id(), "{why}: {err}");
            assert!(err.to_string().contains(&program.program), "{why}: {err}");
        }
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
