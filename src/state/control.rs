//! What operators decide, as opposed to what health checks observe: drained
//! regions and backends, and the incident shown on the status page. Saved
//! to `admin.state_file` with an atomic write and restored at start-up.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Format version written into the state file.
const VERSION: u32 = 1;

/// The incident posted by operators, shown on the status page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Incident {
    /// A short headline.
    pub title: String,
    /// What is going on, in plain words.
    pub message: String,
    /// Where updates are posted (`null` when none).
    #[serde(default)]
    pub link: Option<String>,
}

/// A drained backend: its region's name and its `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendRef {
    /// Region name.
    pub region: String,
    /// `host:port`.
    pub backend: String,
}

/// Drains and the incident. Names, not indices, so that they survive a
/// configuration change; a name the configuration no longer has is kept,
/// and applies again if it comes back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Control {
    /// Drained regions, by name.
    #[serde(default)]
    pub drained_regions: BTreeSet<String>,
    /// Drained backends.
    #[serde(default)]
    pub drained_backends: BTreeSet<BackendRef>,
    /// The incident, if one is posted.
    #[serde(default)]
    pub incident: Option<Incident>,
}

impl Control {
    /// Whether the region named `region` is drained.
    pub fn region_drained(&self, region: &str) -> bool {
        self.drained_regions.contains(region)
    }

    /// Whether `backend` (`host:port`) of `region` is drained.
    pub fn backend_drained(&self, region: &str, backend: &str) -> bool {
        // BTreeSet<BackendRef> cannot be searched by borrowed parts; drains are few.
        self.drained_backends
            .iter()
            .any(|b| b.region == region && b.backend == backend)
    }

    /// Whether `backend` of `region` is drained by its address or, for an
    /// address found by DNS, by the name it was found under.
    pub fn drains(&self, region: &str, backend: &crate::config::Backend) -> bool {
        self.backend_drained(region, &backend.address)
            || backend
                .discovered_from
                .as_deref()
                .is_some_and(|name| self.backend_drained(region, name))
    }
}

/// The state file as written.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    #[serde(flatten)]
    control: Control,
}

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    /// Reading, writing, syncing or renaming failed.
    #[error("{file}: {source}")]
    Io {
        /// The file.
        file: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a state file this version understands.
    #[error("{file}: not a valid state file: {reason}")]
    Corrupt {
        /// The file.
        file: String,
        /// What is wrong.
        reason: String,
    },
}

/// What [`load`] found.
#[derive(Debug)]
pub struct Loaded {
    /// The restored drains and incident (empty when there was no file).
    pub control: Control,
    /// Where a corrupt file was moved, and why it was refused.
    pub set_aside: Option<(PathBuf, StateFileError)>,
}

/// Reads the state file. A missing file is an empty state. A corrupt one is
/// renamed to `FILE.corrupt-UNIXTIME` so that nothing is lost and the next
/// save does not overwrite it, and the state starts empty.
pub fn load(path: &Path) -> Result<Loaded, StateFileError> {
    let io = |source| StateFileError::Io {
        file: path.display().to_string(),
        source,
    };
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Loaded {
                control: Control::default(),
                set_aside: None,
            })
        }
        Err(e) => return Err(io(e)),
    };
    let refused = match parse(&bytes) {
        Ok(control) => {
            return Ok(Loaded {
                control,
                set_aside: None,
            })
        }
        Err(reason) => StateFileError::Corrupt {
            file: path.display().to_string(),
            reason,
        },
    };
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".corrupt-{stamp}"));
    let aside = PathBuf::from(aside);
    std::fs::rename(path, &aside).map_err(io)?;
    Ok(Loaded {
        control: Control::default(),
        set_aside: Some((aside, refused)),
    })
}

fn parse(bytes: &[u8]) -> Result<Control, String> {
    let file: StateFile = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if file.version != VERSION {
        return Err(format!(
            "version {} is not known (expected {VERSION})",
            file.version
        ));
    }
    Ok(file.control)
}

/// Writes the state file atomically: a temporary file in the same
/// directory, synced, renamed over the old one, and the directory synced,
/// so that a crash leaves either the old state or the new, never half.
pub fn save(path: &Path, control: &Control) -> Result<(), StateFileError> {
    let io = |source| StateFileError::Io {
        file: path.display().to_string(),
        source,
    };
    let file = StateFile {
        version: VERSION,
        control: control.clone(),
    };
    let mut bytes = serde_json::to_vec_pretty(&file).map_err(|e| io(std::io::Error::other(e)))?;
    bytes.push(b'\n');
    crate::atomic_file::write(path, &bytes).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Control {
        let mut c = Control::default();
        c.drained_regions.insert("us".into());
        c.drained_backends.insert(BackendRef {
            region: "eu".into(),
            backend: "10.0.0.1:80".into(),
        });
        c.incident = Some(Incident {
            title: "Checkout is slow".into(),
            message: "We are on it.".into(),
            link: Some("https://status.example.com".into()),
        });
        c
    }

    #[test]
    fn a_saved_state_loads_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert_eq!(load(&path).unwrap().control, Control::default());
        save(&path, &sample()).unwrap();
        let loaded = load(&path).unwrap();
        assert_eq!(loaded.control, sample());
        assert!(loaded.set_aside.is_none());
        assert!(loaded.control.region_drained("us"));
        assert!(!loaded.control.region_drained("eu"));
        assert!(loaded.control.backend_drained("eu", "10.0.0.1:80"));
        assert!(!loaded.control.backend_drained("us", "10.0.0.1:80"));
        // Saving again replaces the file and leaves no temporary behind.
        save(&path, &Control::default()).unwrap();
        assert_eq!(load(&path).unwrap().control, Control::default());
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn a_corrupt_state_is_set_aside_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        for bad in [
            &b"{\"version\": 1, \"drained_regions\": [\"us\""[..],
            b"\x00\x01garbage",
            b"{\"version\": 7}",
            b"{\"version\": 1, \"drained_regions\": \"us\"}",
            b"{\"version\": 1, \"surprise\": true}",
        ] {
            std::fs::write(&path, bad).unwrap();
            let loaded = load(&path).unwrap();
            assert_eq!(loaded.control, Control::default());
            let (aside, why) = loaded.set_aside.expect("set aside");
            assert!(matches!(why, StateFileError::Corrupt { .. }), "{why}");
            assert!(why.to_string().contains("state.json"), "{why}");
            assert_eq!(std::fs::read(&aside).unwrap(), bad, "kept as it was");
            assert!(!path.exists());
            std::fs::remove_file(aside).unwrap();
        }
    }

    #[test]
    fn saving_into_a_missing_directory_is_an_error_naming_the_file() {
        let e = save(Path::new("/nonexistent/meridian/state.json"), &sample()).unwrap_err();
        assert!(
            e.to_string().contains("/nonexistent/meridian/state.json"),
            "{e}"
        );
    }
}
