//! The one error type of this crate: a kind for the caller's decisions, CDI's wording for
//! the DataVolume's conditions, and whether trying again may help.

/// Result alias for this crate.
pub type Result<T, E = ImportError> = std::result::Result<T, E>;

/// What went wrong, coarsely: enough for a caller to pick a reason and a back-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImportErrorKind {
    /// The server answered 404 (or 410) for the source.
    NotFound,
    /// Any other HTTP failure: connection, status, truncated body, protocol.
    Http,
    /// TLS handshake or certificate verification.
    Tls,
    /// The checksum does not match, or the checksum given is malformed.
    Checksum,
    /// The image cannot be read: bad header, failed `qemu-img check`, truncated compression.
    Corrupt,
    /// The image's virtual size exceeds the volume's capacity.
    TooLarge,
    /// The filesystem holding the volume or scratch space is full (ENOSPC, EDQUOT).
    NoSpace,
    /// The image is refused: it names other files, is encrypted, or is in a format not
    /// imported.
    Refused,
    /// A local file operation failed, or the import was cancelled.
    Io,
}

/// An import that did not produce a disk. `message` is worded as CDI words it, so it can go
/// into a DataVolume condition as is.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ImportError {
    pub kind: ImportErrorKind,
    pub message: String,
    /// True when the same import may succeed later without any change (network errors,
    /// 5xx, timeouts). The caller decides the back-off.
    pub retryable: bool,
}

impl ImportError {
    pub(crate) fn new(kind: ImportErrorKind, message: impl Into<String>) -> Self {
        let retryable = matches!(kind, ImportErrorKind::Http | ImportErrorKind::Tls);
        ImportError {
            kind,
            message: message.into(),
            retryable,
        }
    }

    pub(crate) fn retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    /// A local file operation `action` (a CDI-style phrase such as "write") on `path` failed.
    /// ENOSPC and EDQUOT become [`ImportErrorKind::NoSpace`], worded as Go prints them
    /// ("no space left on device"), which CDI's controller recognises.
    pub(crate) fn io(action: &str, path: &std::path::Path, err: std::io::Error) -> Self {
        match err.raw_os_error() {
            Some(libc::ENOSPC) => ImportError::new(
                ImportErrorKind::NoSpace,
                format!("{action} {}: no space left on device", path.display()),
            ),
            Some(libc::EDQUOT) => ImportError::new(
                ImportErrorKind::NoSpace,
                format!("{action} {}: disk quota exceeded", path.display()),
            ),
            _ => ImportError::new(
                ImportErrorKind::Io,
                format!("{action} {}: {}", path.display(), os_message(&err)),
            ),
        }
    }

    /// Opening a source file failed: a missing file is [`ImportErrorKind::NotFound`].
    pub(crate) fn open(path: &std::path::Path, err: std::io::Error) -> Self {
        let not_found = err.kind() == std::io::ErrorKind::NotFound;
        let mut e = ImportError::io("open", path, err);
        if not_found {
            e.kind = ImportErrorKind::NotFound;
            e.retryable = false;
        }
        e
    }

    pub(crate) fn cancelled() -> Self {
        ImportError::new(ImportErrorKind::Io, "import cancelled").retryable(true)
    }

    /// CDI's message when an image does not fit (pkg/image/qemu.go, `checkIfURLIsValid`).
    pub(crate) fn too_large(virtual_size: u64, capacity: u64) -> Self {
        ImportError::new(
            ImportErrorKind::TooLarge,
            format!(
                "virtual image size {virtual_size} is larger than the reported available storage {capacity}. A larger PVC is required"
            ),
        )
    }

    /// Streamed data passed `limit` before its size was known: the same wording, so CDI's
    /// controller simplification ("is larger than the reported available") still applies.
    pub(crate) fn data_too_large(what: &str, limit: u64) -> Self {
        ImportError::new(
            ImportErrorKind::TooLarge,
            format!(
                "{what} of more than {limit} bytes is larger than the reported available storage {limit}. A larger PVC is required"
            ),
        )
    }

    /// Prefixes the message with the phase it failed in, as CDI's data processor does
    /// ("Unable to transfer source data to target file: ...").
    pub(crate) fn context(mut self, phase: &str) -> Self {
        self.message = format!("{phase}: {}", self.message);
        self
    }
}

/// An OS error as Go prints it: lower case, without Rust's "(os error N)".
pub(crate) fn os_message(err: &std::io::Error) -> String {
    let text = err.to_string();
    let text = match text.find(" (os error ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_reads_like_go() {
        let e = ImportError::io(
            "write",
            std::path::Path::new("/v/disk.img.tmp"),
            std::io::Error::from_raw_os_error(libc::ENOSPC),
        );
        assert_eq!(e.kind, ImportErrorKind::NoSpace);
        assert!(!e.retryable);
        assert_eq!(e.message, "write /v/disk.img.tmp: no space left on device");
        let e = ImportError::io(
            "open",
            std::path::Path::new("/x"),
            std::io::Error::from_raw_os_error(libc::ENOENT),
        );
        assert_eq!(e.message, "open /x: no such file or directory");
    }

    #[test]
    fn too_large_matches_cdi() {
        assert_eq!(
            ImportError::too_large(52949672960, 42949672960).to_string(),
            "virtual image size 52949672960 is larger than the reported available storage 42949672960. A larger PVC is required"
        );
        assert!(ImportError::data_too_large("image data", 10)
            .message
            .contains("is larger than the reported available"));
    }
}
