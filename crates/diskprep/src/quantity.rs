//! A tiny Kubernetes quantity parser for disk capacities (`10Gi`, `1G`, `512M`, `1e9`).
//!
//! Temporary: replaced by `kubevirt_api::quantity::Quantity` once crates/api provides it.
//! Fractions of a byte are rounded up, like `resource.Quantity.Value()`.

/// Why a quantity string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("empty quantity")]
    Empty,
    #[error("expected a number at the start")]
    NoNumber,
    #[error(
        "unknown suffix {suffix:?} (use Ki, Mi, Gi, Ti, Pi, Ei, k, M, G, T, P, E or an exponent)"
    )]
    BadSuffix { suffix: String },
    #[error("negative quantities are not sizes")]
    Negative,
    #[error("does not fit in 64 bits of bytes")]
    Overflow,
}

/// Parses a quantity into a number of bytes.
pub fn parse_bytes(input: &str) -> Result<u64, QuantityError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(QuantityError::Empty);
    }
    let (negative, s) = match s.as_bytes()[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(num_end);
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if (int_part.is_empty() && frac_part.is_empty()) || frac_part.contains('.') {
        return Err(QuantityError::NoNumber);
    }
    let mut mantissa: u128 = 0;
    for b in int_part.bytes().chain(frac_part.bytes()) {
        mantissa = mantissa
            .checked_mul(10)
            .and_then(|m| m.checked_add(u128::from(b - b'0')))
            .ok_or(QuantityError::Overflow)?;
    }
    if negative && mantissa != 0 {
        return Err(QuantityError::Negative);
    }
    // value = mantissa * 2^bin * 10^dec / 10^frac_len
    let (bin, dec): (u32, i64) = match suffix {
        "" => (0, 0),
        "Ki" => (10, 0),
        "Mi" => (20, 0),
        "Gi" => (30, 0),
        "Ti" => (40, 0),
        "Pi" => (50, 0),
        "Ei" => (60, 0),
        "n" => (0, -9),
        "u" => (0, -6),
        "m" => (0, -3),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        other => {
            let exp = other
                .strip_prefix(['e', 'E'])
                .and_then(|e| e.parse::<i64>().ok())
                .filter(|e| e.abs() <= 40)
                .ok_or_else(|| QuantityError::BadSuffix {
                    suffix: other.to_owned(),
                })?;
            (0, exp)
        }
    };
    let dec = dec - frac_part.len() as i64;
    if dec.abs() > 40 {
        return Err(QuantityError::Overflow);
    }
    let mut numerator = mantissa
        .checked_mul(1u128 << bin)
        .ok_or(QuantityError::Overflow)?;
    let mut denominator: u128 = 1;
    if dec >= 0 {
        numerator = numerator
            .checked_mul(10u128.pow(dec as u32))
            .ok_or(QuantityError::Overflow)?;
    } else {
        denominator = 10u128.pow((-dec) as u32);
    }
    let bytes = numerator.div_ceil(denominator);
    u64::try_from(bytes).map_err(|_| QuantityError::Overflow)
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
        assert_eq!(parse_bytes(""), Err(QuantityError::Empty));
        assert_eq!(parse_bytes("Gi"), Err(QuantityError::NoNumber));
        assert_eq!(parse_bytes("1.2.3"), Err(QuantityError::NoNumber));
        assert_eq!(parse_bytes("-1Gi"), Err(QuantityError::Negative));
        assert!(matches!(
            parse_bytes("10GB"),
            Err(QuantityError::BadSuffix { .. })
        ));
        assert_eq!(parse_bytes("100Ei"), Err(QuantityError::Overflow));
        assert_eq!(
            parse_bytes("99999999999999999999999999999999999999999"),
            Err(QuantityError::Overflow)
        );
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
