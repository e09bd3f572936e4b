//! Disk capacities: Kubernetes quantities (`10Gi`, `1G`, `1e9`) as byte counts, parsed by
//! `kubevirt_api::quantity::Quantity` (apimachinery's rules), with the size-specific checks.

use kubevirt_api::quantity::Quantity;

/// Why a quantity is not a usable size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error(transparent)]
    Syntax(#[from] kubevirt_api::quantity::QuantityError),
    #[error("expected a number before the suffix")]
    NoNumber,
    #[error("negative quantities are not sizes")]
    Negative,
    #[error("does not fit in 63 bits of bytes")]
    Overflow,
}

/// Parses a quantity into a number of bytes; fractions of a byte round up.
pub fn parse_bytes(input: &str) -> Result<u64, QuantityError> {
    let text = input.trim();
    // A size needs digits; a bare suffix like `Gi` is not zero bytes.
    if !text
        .bytes()
        .take_while(|b| matches!(b, b'+' | b'-' | b'.' | b'0'..=b'9'))
        .any(|b| b.is_ascii_digit())
    {
        return Err(QuantityError::NoNumber);
    }
    let q = Quantity::parse(text)?;
    if q.is_negative() {
        return Err(QuantityError::Negative);
    }
    // `value()` saturates at i64::MAX: treat reaching it as overflow.
    let v = q.value();
    if v == i64::MAX {
        return Err(QuantityError::Overflow);
    }
    Ok(q.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn common_disk_sizes() {
        assert_eq!(parse_bytes("10Gi"), Ok(10 << 30));
        assert_eq!(parse_bytes("512Mi"), Ok(512 << 20));
        assert_eq!(parse_bytes("1G"), Ok(1_000_000_000));
        assert_eq!(parse_bytes("1.5Gi"), Ok(3 << 29));
        assert_eq!(parse_bytes("2048"), Ok(2048));
        assert_eq!(parse_bytes("1e3"), Ok(1000));
        assert_eq!(parse_bytes("1E"), Ok(1_000_000_000_000_000_000));
        assert_eq!(parse_bytes("1500m"), Ok(2), "fractions round up");
        assert_eq!(parse_bytes("0"), Ok(0));
        assert_eq!(parse_bytes(" 3k "), Ok(3000));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(parse_bytes(""), Err(QuantityError::NoNumber));
        assert_eq!(parse_bytes("Gi"), Err(QuantityError::NoNumber));
        assert!(matches!(
            parse_bytes("1.2.3"),
            Err(QuantityError::Syntax(_))
        ));
        assert!(matches!(parse_bytes("10GB"), Err(QuantityError::Syntax(_))));
        assert_eq!(parse_bytes("-1Gi"), Err(QuantityError::Negative));
        assert_eq!(parse_bytes("100Ei"), Err(QuantityError::Overflow));
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,40}") {
            let _ = parse_bytes(&s);
        }

        #[test]
        fn binary_suffixes_multiply(n in 0u64..1_000_000, idx in 0usize..4) {
            let (suffix, shift) = [("Ki", 10), ("Mi", 20), ("Gi", 30), ("Ti", 40)][idx];
            prop_assert_eq!(parse_bytes(&format!("{n}{suffix}")), Ok(n << shift));
        }
    }
}
