//! The DataVolume HTTP source's `checksum` ("algorithm:hex"), verified over the bytes as
//! served, before any decompression (as CDI puts its checksum reader at the bottom of the
//! reader stack). Algorithms and rules follow CDI's pkg/util/checksum.

use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};

use crate::error::{ImportError, ImportErrorKind, Result};

/// A parsed checksum: the algorithm and the expected digest, lower-case hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Expected {
    algorithm: &'static str,
    hex: String,
}

impl Expected {
    /// Parses "algorithm:hex" (algorithm md5, sha1, sha256 or sha512, case and surrounding
    /// blanks ignored). Errors read as CDI's, under its "invalid checksum" prefix.
    pub(crate) fn parse(spec: &str) -> Result<Expected> {
        let invalid = |reason: String| {
            ImportError::new(
                ImportErrorKind::Checksum,
                format!("invalid checksum: {reason}"),
            )
            .retryable(false)
        };
        let Some((algorithm, hex)) = spec.split_once(':') else {
            return Err(invalid(format!(
                "invalid checksum format: expected 'algorithm:hash', got '{spec}'"
            )));
        };
        let algorithm = algorithm.trim().to_ascii_lowercase();
        let hex = hex.trim().to_ascii_lowercase();
        if hex.is_empty() {
            return Err(invalid("checksum hash value cannot be empty".into()));
        }
        let (algorithm, len) = match algorithm.as_str() {
            "md5" => ("md5", 32),
            "sha1" => ("sha1", 40),
            "sha256" => ("sha256", 64),
            "sha512" => ("sha512", 128),
            other => {
                return Err(invalid(format!(
                    "unsupported hash algorithm '{other}': supported algorithms are: md5, sha1, sha256, sha512"
                )))
            }
        };
        if hex.len() != len {
            return Err(invalid(format!(
                "invalid {algorithm} hash length: expected {len} hex characters, got {}",
                hex.len()
            )));
        }
        if let Err(e) = hex::decode(&hex) {
            return Err(invalid(format!(
                "checksum hash is not valid hexadecimal: {e}"
            )));
        }
        Ok(Expected { algorithm, hex })
    }

    pub(crate) fn hasher(&self) -> Hasher {
        match self.algorithm {
            "md5" => Hasher::Md5(Md5::new()),
            "sha1" => Hasher::Sha1(Sha1::new()),
            "sha512" => Hasher::Sha512(Sha512::new()),
            _ => Hasher::Sha256(Sha256::new()),
        }
    }

    /// Compares with what was computed; the mismatch message is CDI's.
    pub(crate) fn verify(&self, hasher: Hasher) -> Result<()> {
        let actual = hasher.finish();
        if actual == self.hex {
            return Ok(());
        }
        Err(ImportError::new(
            ImportErrorKind::Checksum,
            format!(
                "checksum validation failed: checksum mismatch: expected {alg}:{}, calculated {alg}:{actual}",
                self.hex,
                alg = self.algorithm
            ),
        )
        .retryable(false))
    }
}

/// A running digest of one of the accepted algorithms.
pub(crate) enum Hasher {
    Md5(Md5),
    Sha1(Sha1),
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    pub(crate) fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Md5(h) => h.update(data),
            Hasher::Sha1(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    fn finish(self) -> String {
        match self {
            Hasher::Md5(h) => hex::encode(h.finalize()),
            Hasher::Sha1(h) => hex::encode(h.finalize()),
            Hasher::Sha256(h) => hex::encode(h.finalize()),
            Hasher::Sha512(h) => hex::encode(h.finalize()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_like_cdi() {
        let e = Expected::parse(
            " SHA256 : E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
        )
        .unwrap();
        assert_eq!(e.algorithm, "sha256");
        let mut h = e.hasher();
        h.update(b"");
        e.verify(h).unwrap();

        for (spec, msg) in [
            ("abc", "invalid checksum: invalid checksum format: expected 'algorithm:hash', got 'abc'"),
            ("sha256:", "invalid checksum: checksum hash value cannot be empty"),
            ("crc32:00", "invalid checksum: unsupported hash algorithm 'crc32': supported algorithms are: md5, sha1, sha256, sha512"),
            ("md5:abcd", "invalid checksum: invalid md5 hash length: expected 32 hex characters, got 4"),
        ] {
            let err = Expected::parse(spec).unwrap_err();
            assert_eq!(err.message, msg);
            assert_eq!(err.kind, ImportErrorKind::Checksum);
            assert!(!err.retryable);
        }
        assert!(Expected::parse(&format!("sha1:{}", "zz".repeat(20)))
            .unwrap_err()
            .message
            .starts_with("invalid checksum: checksum hash is not valid hexadecimal"));
    }

    #[test]
    fn every_algorithm_and_mismatch() {
        for (alg, digest) in [
            ("md5", "900150983cd24fb0d6963f7d28e17f72"),
            ("sha1", "a9993e364706816aba3e25717850c26c9cd0d89d"),
            ("sha256", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
            ("sha512", "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"),
        ] {
            let e = Expected::parse(&format!("{alg}:{digest}")).unwrap();
            let mut h = e.hasher();
            h.update(b"ab");
            h.update(b"c");
            e.verify(h).unwrap();
            let mut h = e.hasher();
            h.update(b"abd");
            let err = e.verify(h).unwrap_err();
            assert!(
                err.message.starts_with(&format!(
                    "checksum validation failed: checksum mismatch: expected {alg}:{digest}, calculated {alg}:"
                )),
                "{}",
                err.message
            );
        }
    }
}
