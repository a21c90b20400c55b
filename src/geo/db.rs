//! GeoIP databases, read with the `maxminddb` crate: MaxMind GeoIP2 and
//! GeoLite2 Country or City (`country.iso_code`, `continent.code`, falling
//! back to `registered_country.iso_code`), and flat country databases that
//! carry only `country_code` (the continent then comes from [`continent_of`]).
//!
//! A file is memory-mapped, not read: the page cache holds it once however
//! many processes use it. Replace it by writing a new file and renaming it
//! over the old one, as `geoipupdate` does, so that the mapped file itself
//! never changes; the watcher in [`watch`] then opens the new one.

use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use maxminddb::{Mmap, Reader};
use serde::Deserialize;

use super::continents::continent_of;

/// The database built into Meridian, used when `geo.database` is not set.
static BUILT_IN: &[u8] = include_bytes!("../../data/geoip/iptoasn-country.mmdb");

/// Name of the built-in database in logs.
pub const BUILT_IN_NAME: &str = "built-in iptoasn-country (PDDL-1.0)";

/// Why a database cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("GeoIP database {file}: {reason}")]
pub struct DbError {
    /// The file, as configured.
    pub file: String,
    /// What is wrong with it.
    pub reason: String,
}

/// The bytes of a database.
#[derive(Debug)]
enum Source {
    BuiltIn(&'static [u8]),
    Mapped(Mmap),
}

impl AsRef<[u8]> for Source {
    fn as_ref(&self) -> &[u8] {
        match self {
            Source::BuiltIn(b) => b,
            Source::Mapped(m) => m,
        }
    }
}

/// Where a database came from and its identity on disk, to notice a new file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The file, or `None` for the built-in database.
    pub path: Option<PathBuf>,
    /// Modification time, length and inode when it was opened.
    pub stamp: Option<Stamp>,
}

/// What identifies one version of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
    inode: u64,
}

impl Stamp {
    /// The stamp of the file at `path` now.
    pub fn of(path: &Path) -> std::io::Result<Stamp> {
        Ok(Stamp::from_metadata(&std::fs::metadata(path)?))
    }

    /// The stamp of an open file: the one mapped, whatever the path names now.
    fn of_file(file: &File) -> std::io::Result<Stamp> {
        Ok(Stamp::from_metadata(&file.metadata()?))
    }

    fn from_metadata(m: &std::fs::Metadata) -> Stamp {
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(m);
        #[cfg(not(unix))]
        let inode = 0;
        Stamp {
            modified: m.modified().ok(),
            len: m.len(),
            inode,
        }
    }
}

/// An open GeoIP database.
#[derive(Debug)]
pub struct GeoDb {
    reader: Reader<Source>,
    origin: Origin,
}

/// What a database says of an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Place {
    /// ISO 3166-1 alpha-2 country code, upper case.
    pub country: Option<[u8; 2]>,
    /// Continent code (AF AN AS EU NA OC SA).
    pub continent: Option<[u8; 2]>,
}

#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow)]
    country: Option<Named<'a>>,
    #[serde(borrow)]
    registered_country: Option<Named<'a>>,
    #[serde(borrow)]
    continent: Option<Continent<'a>>,
    #[serde(borrow)]
    country_code: Option<&'a str>,
}

#[derive(Deserialize)]
struct Named<'a> {
    #[serde(borrow)]
    iso_code: Option<&'a str>,
}

#[derive(Deserialize)]
struct Continent<'a> {
    #[serde(borrow)]
    code: Option<&'a str>,
}

/// A two-letter code as upper-case bytes, if it is one.
fn code(text: &str) -> Option<[u8; 2]> {
    match text.as_bytes() {
        &[a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
            Some([a.to_ascii_uppercase(), b.to_ascii_uppercase()])
        }
        _ => None,
    }
}

impl GeoDb {
    /// The built-in country database.
    pub fn built_in() -> GeoDb {
        let reader = Reader::from_source(Source::BuiltIn(BUILT_IN))
            .expect("the built-in GeoIP database is valid");
        GeoDb {
            reader,
            origin: Origin {
                path: None,
                stamp: None,
            },
        }
    }

    /// Opens, maps and checks the database at `path`. Every network and
    /// record is read once, so that a corrupt file is refused here rather
    /// than found out one lookup at a time.
    pub fn open(path: &Path) -> Result<GeoDb, DbError> {
        let err = |reason: String| DbError {
            file: path.display().to_string(),
            reason,
        };
        let file = File::open(path).map_err(|e| err(e.to_string()))?;
        let stamp = Stamp::of_file(&file).map_err(|e| err(e.to_string()))?;
        let map = map(&file).map_err(|e| err(format!("cannot map it: {e}")))?;
        let reader = Reader::from_source(Source::Mapped(map))
            .map_err(|e| err(format!("not a MaxMind DB file: {e}")))?;
        check(&reader).map_err(|e| err(format!("corrupt: {e}")))?;
        let kind = &reader.metadata().database_type;
        tracing::debug!(file = %path.display(), database_type = %kind, "GeoIP database opened");
        Ok(GeoDb {
            reader,
            origin: Origin {
                path: Some(path.to_owned()),
                stamp: Some(stamp),
            },
        })
    }

    /// Where it came from.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// Its name in logs: the file, or the built-in database.
    pub fn name(&self) -> String {
        match &self.origin.path {
            Some(p) => p.display().to_string(),
            None => BUILT_IN_NAME.to_owned(),
        }
    }

    /// The `database_type` of its metadata.
    pub fn database_type(&self) -> &str {
        &self.reader.metadata().database_type
    }

    /// The country and continent of `ip`; empty when the database does not
    /// know the address or its record cannot be read.
    pub fn place(&self, ip: IpAddr) -> Place {
        let Ok(found) = self.reader.lookup(ip) else {
            return Place::default();
        };
        let Ok(Some(record)) = found.decode::<Record<'_>>() else {
            return Place::default();
        };
        let country = record
            .country
            .and_then(|c| c.iso_code)
            .or(record.country_code)
            .or(record.registered_country.and_then(|c| c.iso_code))
            .and_then(code);
        let continent = record
            .continent
            .and_then(|c| c.code)
            .and_then(code)
            .or_else(|| country.and_then(continent_of));
        Place { country, continent }
    }
}

/// Reads every network and every distinct record the way lookups do.
///
/// `Reader::verify` would also do, but it insists on metadata that many
/// country databases leave out (an empty `description`), and it is the
/// lookups' view of the file that matters here.
fn check(reader: &Reader<Source>) -> Result<(), maxminddb::MaxMindDbError> {
    let mut seen = std::collections::HashSet::new();
    for network in reader.networks(maxminddb::WithinOptions::default())? {
        let network = network?;
        if network.offset().is_some_and(|o| seen.insert(o)) {
            network.decode::<Record<'_>>()?;
        }
    }
    Ok(())
}

/// Maps `file` read-only.
#[allow(unsafe_code)]
fn map(file: &File) -> std::io::Result<Mmap> {
    // SAFETY: the mapping is read-only, and Meridian never writes the file.
    // Another process writing into the file in place while it is mapped
    // would change the bytes under the reader; the documented way to update
    // a database is to rename a new file over it (as geoipupdate does),
    // which leaves this mapping on the old file until it is dropped.
    unsafe { memmap2::MmapOptions::new().map(file) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_database_knows_countries_and_continents() {
        let db = GeoDb::built_in();
        // Well-known anycast and registry addresses whose AS is registered in the US.
        let p = db.place("8.8.8.8".parse().unwrap());
        assert_eq!(p.country, Some(*b"US"));
        assert_eq!(p.continent, Some(*b"NA"));
        // RIPE NCC's own network is registered in the Netherlands.
        let p = db.place("193.0.6.139".parse().unwrap());
        assert_eq!((p.country, p.continent), (Some(*b"NL"), Some(*b"EU")));
        let p = db.place("2001:4860:4860::8888".parse().unwrap());
        assert_eq!(p.country, Some(*b"US"), "IPv6 too");
        assert_eq!(db.place("127.0.0.1".parse().unwrap()), Place::default());
        assert_eq!(db.place("10.1.2.3".parse().unwrap()), Place::default());
        assert_eq!(db.name(), BUILT_IN_NAME);
    }

    #[test]
    fn the_built_in_database_passes_the_full_check() {
        let db = GeoDb::built_in();
        check(&db.reader).expect("every record of the built-in database reads");
    }

    #[test]
    fn codes_are_two_letters() {
        assert_eq!(code("us"), Some(*b"US"));
        assert_eq!(code("USA"), None);
        assert_eq!(code("1A"), None);
        assert_eq!(code(""), None);
    }

    #[test]
    fn missing_and_corrupt_files_are_refused_with_their_name() {
        let e = GeoDb::open(Path::new("/nonexistent/geo.mmdb")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("GeoIP database /nonexistent/geo.mmdb: "),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.mmdb");
        std::fs::write(&bad, b"this is not a database").unwrap();
        let e = GeoDb::open(&bad).unwrap_err();
        assert!(e.to_string().contains("not a MaxMind DB file"), "{e}");
    }
}
