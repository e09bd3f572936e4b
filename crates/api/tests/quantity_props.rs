//! Property tests: quantities parse like apimachinery and survive formatting.

use kubevirt_api::quantity::{Quantity, QuantityError};
use proptest::prelude::*;

const SUFFIXES: [(&str, u32, i32); 16] = [
    ("", 10, 0),
    ("n", 10, -9),
    ("u", 10, -6),
    ("m", 10, -3),
    ("k", 10, 3),
    ("M", 10, 6),
    ("G", 10, 9),
    ("T", 10, 12),
    ("P", 10, 15),
    ("E", 10, 18),
    ("Ki", 2, 10),
    ("Mi", 2, 20),
    ("Gi", 2, 30),
    ("Ti", 2, 40),
    ("Pi", 2, 50),
    ("Ei", 2, 60),
];

proptest! {
    /// `<n><binary suffix>` is exactly n * 2^k bytes.
    #[test]
    fn binary_suffixes_are_exact(n in 0u64..1_000_000, idx in 10usize..14) {
        let (suffix, _, exp) = SUFFIXES[idx];
        let q = Quantity::parse(&format!("{n}{suffix}")).unwrap();
        prop_assert_eq!(q.to_bytes(), n << exp);
    }

    /// `<n><decimal suffix>` is exactly n * 10^k (for the integer-valued suffixes).
    #[test]
    fn decimal_suffixes_are_exact(n in 0i64..1_000_000, idx in 4usize..7) {
        let (suffix, _, exp) = SUFFIXES[idx];
        let q = Quantity::parse(&format!("{n}{suffix}")).unwrap();
        prop_assert_eq!(q.value(), n * 10i64.pow(exp as u32));
    }

    /// Fractions: `<int>.<frac>` in milli units, rounded up like apimachinery.
    #[test]
    fn fractions_in_milli(int in 0i64..100_000, frac in 0u32..1000) {
        let q = Quantity::parse(&format!("{int}.{frac:03}")).unwrap();
        prop_assert_eq!(q.milli_value(), int * 1000 + i64::from(frac));
        let q = Quantity::parse(&format!("{int}.{frac:03}5")).unwrap();
        prop_assert_eq!(q.milli_value(), int * 1000 + i64::from(frac) + 1, "rounds up");
    }

    /// Exponent form equals the plain decimal.
    #[test]
    fn exponents(n in 1i64..10_000, e in 0u32..9) {
        let q = Quantity::parse(&format!("{n}e{e}")).unwrap();
        prop_assert_eq!(q.value(), n * 10i64.pow(e));
        let upper = Quantity::parse(&format!("{n}E{e}")).unwrap();
        prop_assert_eq!(q, upper);
    }

    /// The canonical form parses back to the same value, and is a fixed point.
    #[test]
    fn canonical_round_trips(n in -1_000_000_000i64..1_000_000_000, idx in 0usize..16) {
        let (suffix, _, _) = SUFFIXES[idx];
        let q = Quantity::parse(&format!("{n}{suffix}")).unwrap();
        let c = q.canonical();
        let back = Quantity::parse(&c).unwrap();
        prop_assert_eq!(&back, &q, "{} -> {}", q, c);
        prop_assert_eq!(back.canonical(), c);
    }

    /// Serde keeps exactly what was written.
    #[test]
    fn serde_preserves_text(n in 0u64..1_000_000, idx in 0usize..16) {
        let text = format!("{n}{}", SUFFIXES[idx].0);
        let json = serde_json::to_string(&text).unwrap();
        let q: Quantity = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(serde_json::to_string(&q).unwrap(), json);
    }

    /// Ordering agrees with the byte values.
    #[test]
    fn ordering_matches_bytes(a in 0u64..1u64 << 40, b in 0u64..1u64 << 40) {
        let qa = Quantity::from_bytes(a);
        let qb = Quantity::from_bytes(b);
        prop_assert_eq!(qa.cmp(&qb), a.cmp(&b));
        prop_assert_eq!(Quantity::parse(&qa.as_str()).unwrap().to_bytes(), a);
    }

    /// Junk never panics and is rejected with apimachinery's errors.
    #[test]
    fn junk_is_rejected_without_panicking(s in "[a-zA-Z!@#$%^&*() ]{1,12}") {
        // Strings made only of suffix letters are valid suffixes on an empty number ("" = 0);
        // everything else must fail one way or another.
        match Quantity::parse(&s) {
            Ok(q) => prop_assert!(q.is_zero(), "{} parsed as {}", s, q.canonical()),
            Err(e) => prop_assert!(matches!(e, QuantityError::Format | QuantityError::Suffix | QuantityError::Numeric)),
        }
    }

    /// Extreme exponents never panic (and never overflow the accessors).
    #[test]
    fn extreme_exponents(n in -1000i64..1000, e in any::<i32>(), upper in any::<bool>()) {
        let text = format!("{n}{}{e}", if upper { "E" } else { "e" });
        if let Ok(q) = Quantity::parse(&text) {
            let _ = (q.value(), q.milli_value(), q.to_bytes(), q.as_f64(), q.canonical());
            let _ = q.cmp(&Quantity::parse("1").unwrap());
        }
    }

    /// Arbitrary text never panics.
    #[test]
    fn anything_never_panics(s in "\\PC{0,24}") {
        let _ = Quantity::parse(&s);
    }
}

#[test]
fn spot_checks_from_the_issue() {
    assert_eq!(Quantity::parse("128Mi").unwrap().to_bytes(), 134_217_728);
    assert_eq!(Quantity::parse("1G").unwrap().to_bytes(), 1_000_000_000);
    assert_eq!(Quantity::parse("0.5").unwrap().milli_value(), 500);
    assert!((Quantity::parse("0.5").unwrap().as_f64() - 0.5).abs() < 1e-12);
    assert_eq!(Quantity::parse("0.5").unwrap().canonical(), "500m");
}
