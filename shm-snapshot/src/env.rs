//! Finding the region among the descriptors a supervisor hands over, by
//! systemd's socket-activation convention: `LISTEN_FDS` descriptors start at
//! fd 3, `LISTEN_FDNAMES` names them (colon-separated), and `LISTEN_PID`, if
//! set, must be this process.

use crate::error::RegionError;

/// The name under which the region is handed over in `LISTEN_FDNAMES`.
pub const FD_NAME: &str = "SHM_SHARED_FD";

/// The first descriptor of the convention.
pub const LISTEN_FDS_START: i32 = 3;

/// Picks the region's descriptor from the convention's three variables.
/// Pure, so every malformed combination can be tested without a process.
pub(crate) fn region_fd(
    listen_fds: Option<&str>,
    listen_fdnames: Option<&str>,
    listen_pid: Option<&str>,
    our_pid: u32,
) -> Result<i32, RegionError> {
    if let Some(pid) = listen_pid {
        let listen_pid: u32 = pid.parse().map_err(|_| RegionError::EnvMalformed {
            var: "LISTEN_PID",
            value: pid.to_owned(),
            why: "not a process id",
        })?;
        if listen_pid != our_pid {
            return Err(RegionError::NotOurs { listen_pid, our_pid });
        }
    }
    let fds = listen_fds.ok_or(RegionError::EnvMissing { var: "LISTEN_FDS" })?;
    let count: u32 = fds.parse().map_err(|_| RegionError::EnvMalformed {
        var: "LISTEN_FDS",
        value: fds.to_owned(),
        why: "not a count of descriptors",
    })?;
    if count == 0 {
        return Err(RegionError::EnvMalformed {
            var: "LISTEN_FDS",
            value: fds.to_owned(),
            why: "no descriptors were handed over",
        });
    }
    let names = listen_fdnames.ok_or(RegionError::EnvMissing {
        var: "LISTEN_FDNAMES",
    })?;
    // systemd's rule (sd_listen_fds_with_names): one name per descriptor.
    // A different count means the variables do not describe the same
    // descriptors, and picking one by position could map the wrong file.
    let named = names.split(':').count();
    if named as u64 != u64::from(count) {
        return Err(RegionError::EnvMalformed {
            var: "LISTEN_FDNAMES",
            value: names.to_owned(),
            why: "does not name exactly the LISTEN_FDS descriptors (one name per descriptor)",
        });
    }
    let index =
        names
            .split(':')
            .position(|name| name == FD_NAME)
            .ok_or_else(|| RegionError::NameMissing {
                names: names.to_owned(),
            })?;
    Ok(LISTEN_FDS_START + index as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd(fds: Option<&str>, names: Option<&str>, pid: Option<&str>) -> Result<i32, String> {
        region_fd(fds, names, pid, 42).map_err(|e| e.to_string())
    }

    #[test]
    fn region_is_found_by_name_after_other_descriptors() {
        assert_eq!(fd(Some("1"), Some("SHM_SHARED_FD"), Some("42")), Ok(3));
        assert_eq!(fd(Some("3"), Some("http:SHM_SHARED_FD:x"), None), Ok(4));
    }

    #[test]
    fn a_name_count_other_than_the_descriptor_count_is_refused() {
        for (fds, names) in [("1", "SHM_SHARED_FD:extra"), ("2", "SHM_SHARED_FD")] {
            let err = fd(Some(fds), Some(names), None).unwrap_err();
            assert!(err.contains("one name per descriptor"), "{fds} {names}: {err}");
        }
    }

    #[test]
    fn listen_pid_of_another_process_is_refused() {
        let err = fd(Some("1"), Some("SHM_SHARED_FD"), Some("7")).unwrap_err();
        assert_eq!(
            err,
            "LISTEN_PID=7 is another process (this is 42): the region was handed to it, not to us"
        );
    }

    #[test]
    fn missing_or_malformed_variables_are_named() {
        assert!(
            fd(None, Some("SHM_SHARED_FD"), None)
                .unwrap_err()
                .starts_with("LISTEN_FDS is not set")
        );
        assert!(
            fd(Some("1"), None, None)
                .unwrap_err()
                .starts_with("LISTEN_FDNAMES is not set")
        );
        assert!(
            fd(Some("x"), Some("SHM_SHARED_FD"), None)
                .unwrap_err()
                .contains("not a count")
        );
        assert!(
            fd(Some("0"), Some("SHM_SHARED_FD"), None)
                .unwrap_err()
                .contains("no descriptors")
        );
        assert!(
            fd(Some("1"), Some("SHM_SHARED_FD"), Some("me"))
                .unwrap_err()
                .contains("not a process id")
        );
        assert!(
            fd(Some("2"), Some("a:b"), None)
                .unwrap_err()
                .contains("has no entry named SHM_SHARED_FD")
        );
        assert!(
            fd(Some("1"), Some("a:SHM_SHARED_FD"), None)
                .unwrap_err()
                .contains("one name per descriptor")
        );
    }
}
