//! Kubernetes resource quantities (`128Mi`, `1G`, `0.5`, `500m`, `1e3`), parsed and formatted
//! the way `k8s.io/apimachinery/pkg/api/resource` does.
//!
//! The value is kept exactly as a decimal (`mantissa * 10^scale`), rounded up to nano units like
//! apimachinery. The text the user wrote is remembered so that serialisation round-trips
//! byte-for-byte; [`Quantity::canonical`] gives apimachinery's `String()` form.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The regular expression apimachinery quotes when a quantity is malformed.
pub const QUANTITY_REGEX: &str = "^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$";

/// Why a string is not a quantity (messages are apimachinery's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// The text does not have the shape `<number><suffix>`.
    #[error("quantities must match the regular expression '{}'", QUANTITY_REGEX)]
    Format,
    /// The suffix is not one of the SI, binary or exponent suffixes.
    #[error("unable to parse quantity's suffix")]
    Suffix,
    /// The numeric part cannot be represented.
    #[error("unable to parse quantity's numeric part")]
    Numeric,
}

/// How a quantity is printed: the kind of suffix it was written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantityFormat {
    /// `Ki`, `Mi`, ... (powers of 1024).
    BinarySI,
    /// `n`, `u`, `m`, ``, `k`, `M`, ... (powers of 1000).
    DecimalSI,
    /// `e3`, `E-6` (powers of ten).
    DecimalExponent,
}

/// How the quantity appeared in JSON, so it is written back the same way.
#[derive(Debug, Clone, PartialEq)]
enum Repr {
    Text(String),
    Number(serde_json::Number),
}

/// A Kubernetes quantity.
///
/// Equality and ordering compare the numeric value (`1Gi == 1024Mi`), like apimachinery's `Cmp`.
#[derive(Debug, Clone)]
pub struct Quantity {
    /// value = mantissa * 10^scale, with scale >= -9 after rounding.
    mantissa: i128,
    scale: i32,
    format: QuantityFormat,
    repr: Repr,
}

const NANO: i32 = -9;
/// apimachinery caps binary quantities at the largest int64.
const MAX_INT64: i128 = i64::MAX as i128;

impl Quantity {
    /// Parses a quantity exactly like apimachinery's `ParseQuantity`.
    pub fn parse(text: &str) -> Result<Self, QuantityError> {
        let (mantissa, scale, format) = parse_value(text)?;
        Ok(Self {
            mantissa,
            scale,
            format,
            repr: Repr::Text(text.to_string()),
        })
    }

    /// A quantity of `bytes` written in binary (`Ki`/`Mi`/`Gi`) canonical form.
    pub fn from_bytes(bytes: u64) -> Self {
        let mut q = Self {
            mantissa: i128::from(bytes),
            scale: 0,
            format: QuantityFormat::BinarySI,
            repr: Repr::Text(String::new()),
        };
        q.repr = Repr::Text(q.canonical());
        q
    }

    /// A plain decimal quantity such as `2` or `500m` (given in thousandths).
    pub fn from_milli(milli: i64) -> Self {
        let mut q = Self {
            mantissa: i128::from(milli),
            scale: -3,
            format: QuantityFormat::DecimalSI,
            repr: Repr::Text(String::new()),
        };
        q.repr = Repr::Text(q.canonical());
        q
    }

    /// apimachinery's `NewQuantity(value, format)`: an integer printed in `format`.
    pub fn from_int(value: i64, format: QuantityFormat) -> Self {
        Self::from_parts(i128::from(value), 0, format)
    }

    /// `self + other` like apimachinery's `Add`: the sum keeps `self`'s format unless `self` is
    /// zero, when it takes `other`'s (so `0 + 1Gi` prints `1Gi`). `None` when the exact sum does
    /// not fit in 38 digits (only absurd quantities such as `1e40` plus `1n`).
    pub fn checked_add(&self, other: &Self) -> Option<Self> {
        let format = if self.is_zero() {
            other.format
        } else {
            self.format
        };
        if other.is_zero() {
            return Some(Self::from_parts(self.mantissa, self.scale, format));
        }
        if self.is_zero() {
            return Some(Self::from_parts(other.mantissa, other.scale, format));
        }
        let scale = self.scale.min(other.scale);
        let align =
            |m: i128, s: i32| pow10(i64::from(s) - i64::from(scale)).and_then(|p| m.checked_mul(p));
        let sum =
            align(self.mantissa, self.scale)?.checked_add(align(other.mantissa, other.scale)?)?;
        Some(Self::from_parts(sum, scale, format))
    }

    /// `self - other` like apimachinery's `Sub` (format chosen as in [`Quantity::checked_add`]).
    pub fn checked_sub(&self, other: &Self) -> Option<Self> {
        let negated = Self {
            mantissa: other.mantissa.checked_neg()?,
            ..other.clone()
        };
        self.checked_add(&negated)
    }

    /// A quantity of exactly `mantissa * 10^scale` (scale >= -9), remembered in canonical form.
    fn from_parts(mantissa: i128, scale: i32, format: QuantityFormat) -> Self {
        // Trailing zeros are folded into the scale so later alignments stay small.
        let (mantissa, scale) = if mantissa == 0 {
            (0, 0)
        } else {
            let (m, times) = remove_factors(mantissa, 10);
            (m, scale.saturating_add(times))
        };
        let mut q = Self {
            mantissa,
            scale,
            format,
            repr: Repr::Text(String::new()),
        };
        q.repr = Repr::Text(q.canonical());
        q
    }

    /// The text as written by the user (or produced by a constructor).
    pub fn as_str(&self) -> String {
        match &self.repr {
            Repr::Text(s) => s.clone(),
            Repr::Number(n) => n.to_string(),
        }
    }

    /// The suffix family the quantity is printed with.
    pub fn format(&self) -> QuantityFormat {
        self.format
    }

    /// True when the value is zero.
    pub fn is_zero(&self) -> bool {
        self.mantissa == 0
    }

    /// True when the value is below zero.
    pub fn is_negative(&self) -> bool {
        self.mantissa < 0
    }

    /// The value as an integer, rounded up (away from zero) like apimachinery's `Value()`,
    /// saturating at the `i64` bounds.
    pub fn value(&self) -> i64 {
        self.scaled(0)
    }

    /// The value in thousandths, rounded up, like apimachinery's `MilliValue()`.
    pub fn milli_value(&self) -> i64 {
        self.scaled(-3)
    }

    /// The value as a byte count: rounded up, negative values give 0.
    pub fn to_bytes(&self) -> u64 {
        u64::try_from(self.value().max(0)).unwrap_or(0)
    }

    /// The value as a float (for display and ratios, never for storage).
    pub fn as_f64(&self) -> f64 {
        (self.mantissa as f64) * 10f64.powi(self.scale)
    }

    /// The value expressed in units of `10^target`, rounded up away from zero, saturating.
    fn scaled(&self, target: i32) -> i64 {
        let diff = i64::from(self.scale) - i64::from(target);
        let result = if diff >= 0 {
            pow10(diff).and_then(|p| self.mantissa.checked_mul(p))
        } else {
            match pow10(-diff) {
                Some(p) => {
                    let q = self.mantissa / p;
                    let r = self.mantissa % p;
                    Some(if r > 0 {
                        q + 1
                    } else if r < 0 {
                        q - 1
                    } else {
                        q
                    })
                }
                // Dividing by more than 10^38 leaves only the rounding unit.
                None => Some(self.mantissa.signum()),
            }
        };
        match result {
            Some(v) => v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64,
            None if self.mantissa < 0 => i64::MIN,
            None => i64::MAX,
        }
    }

    /// apimachinery's canonical `String()` form: `1.5` -> `1500m`, `1.5Gi` -> `1536Mi`,
    /// `1000` -> `1k`, `0.5` -> `500m`.
    pub fn canonical(&self) -> String {
        if self.mantissa == 0 {
            return "0".to_string();
        }
        let mut format = self.format;
        let mut whole = None;
        if format == QuantityFormat::BinarySI {
            if self.cmp_int(1024) == Ordering::Less && self.cmp_int(-1024) == Ordering::Greater {
                format = QuantityFormat::DecimalSI;
            } else {
                match self.exact_integer() {
                    Some(v) => whole = Some(v),
                    None => format = QuantityFormat::DecimalSI,
                }
            }
        }
        match (format, whole) {
            (QuantityFormat::BinarySI, Some(v)) => {
                let (m, times) = remove_factors(v, 1024);
                let suffix = match times {
                    0 => "",
                    1 => "Ki",
                    2 => "Mi",
                    3 => "Gi",
                    4 => "Ti",
                    5 => "Pi",
                    _ => "Ei",
                };
                // remove_factors stops at Ei: anything beyond is still a multiple of Ei.
                let m = if times > 6 {
                    m * 1024i128.pow((times - 6) as u32)
                } else {
                    m
                };
                format!("{m}{suffix}")
            }
            _ => {
                let (m, times) = remove_factors(self.mantissa, 10);
                let mut exponent = self.scale + times;
                let mut m = m;
                let rem = exponent.rem_euclid(3);
                if rem != 0 {
                    m *= pow10_or_max(rem);
                    exponent -= rem;
                }
                if format == QuantityFormat::DecimalExponent {
                    if exponent == 0 {
                        format!("{m}")
                    } else {
                        format!("{m}e{exponent}")
                    }
                } else {
                    match si_suffix(exponent) {
                        Some(s) => format!("{m}{s}"),
                        None => format!("{m}e{exponent}"),
                    }
                }
            }
        }
    }

    fn cmp_int(&self, v: i128) -> Ordering {
        compare(self.mantissa, self.scale, v, 0)
    }

    /// The value as an integer if it has no fractional part.
    fn exact_integer(&self) -> Option<i128> {
        if self.scale >= 0 {
            pow10(self.scale).and_then(|p| self.mantissa.checked_mul(p))
        } else {
            let p = pow10(-i64::from(self.scale))?;
            if self.mantissa % p == 0 {
                Some(self.mantissa / p)
            } else {
                None
            }
        }
    }
}

fn si_suffix(exponent: i32) -> Option<&'static str> {
    Some(match exponent {
        -9 => "n",
        -6 => "u",
        -3 => "m",
        0 => "",
        3 => "k",
        6 => "M",
        9 => "G",
        12 => "T",
        15 => "P",
        18 => "E",
        _ => return None,
    })
}

fn pow10(e: impl Into<i64>) -> Option<i128> {
    let e: i64 = e.into();
    if !(0..=38).contains(&e) {
        return None;
    }
    10i128.checked_pow(e as u32)
}

fn pow10_or_max(e: i32) -> i128 {
    pow10(e).unwrap_or(i128::MAX)
}

fn remove_factors(value: i128, base: i128) -> (i128, i32) {
    let negative = value < 0;
    let mut result = value.abs();
    let mut times = 0;
    while result >= base && result % base == 0 {
        times += 1;
        result /= base;
    }
    (if negative { -result } else { result }, times)
}

/// Compares a*10^sa with b*10^sb exactly (falling back to floats only beyond i128 range).
fn compare(a: i128, sa: i32, b: i128, sb: i32) -> Ordering {
    let (sa64, sb64) = (i64::from(sa), i64::from(sb));
    let (a2, b2) = if sa >= sb {
        (pow10(sa64 - sb64).and_then(|p| a.checked_mul(p)), Some(b))
    } else {
        (Some(a), pow10(sb64 - sa64).and_then(|p| b.checked_mul(p)))
    };
    match (a2, b2) {
        (Some(x), Some(y)) => x.cmp(&y),
        _ => {
            let x = (a as f64) * 10f64.powi(sa);
            let y = (b as f64) * 10f64.powi(sb);
            x.partial_cmp(&y).unwrap_or(Ordering::Equal)
        }
    }
}

/// The pieces of a quantity string, split like apimachinery's `parseQuantityString`.
struct Parts<'a> {
    positive: bool,
    num: &'a str,
    denom: &'a str,
    suffix: &'a str,
}

fn split(s: &str) -> Result<Parts<'_>, QuantityError> {
    let b = s.as_bytes();
    let end = b.len();
    let mut pos = 0;
    let mut positive = true;
    if pos < end {
        match b[0] {
            b'-' => {
                positive = false;
                pos += 1;
            }
            b'+' => pos += 1,
            _ => {}
        }
    }
    let zero = |positive| Parts {
        positive,
        num: "0",
        denom: "",
        suffix: "",
    };
    // leading zeros
    while pos < end && b[pos] == b'0' {
        pos += 1;
    }
    if pos >= end {
        return Ok(zero(positive));
    }
    let num_start = pos;
    while pos < end && b[pos].is_ascii_digit() {
        pos += 1;
    }
    if pos >= end {
        return Ok(Parts {
            positive,
            num: &s[num_start..end],
            denom: "",
            suffix: "",
        });
    }
    let mut num = &s[num_start..pos];
    if num.is_empty() {
        num = "0";
    }
    let mut denom = "";
    if b[pos] == b'.' {
        pos += 1;
        let d_start = pos;
        while pos < end && b[pos].is_ascii_digit() {
            pos += 1;
        }
        denom = &s[d_start..pos];
        if pos >= end {
            return Ok(Parts {
                positive,
                num,
                denom,
                suffix: "",
            });
        }
    }
    let suffix_start = pos;
    while pos < end && b"eEinumkKMGTP".contains(&b[pos]) {
        pos += 1;
    }
    if pos < end && (b[pos] == b'-' || b[pos] == b'+') {
        pos += 1;
    }
    while pos < end && b[pos].is_ascii_digit() {
        pos += 1;
    }
    if pos < end {
        return Err(QuantityError::Format);
    }
    Ok(Parts {
        positive,
        num,
        denom,
        suffix: &s[suffix_start..end],
    })
}

/// (base, exponent, format) for a suffix, like apimachinery's `suffixer.interpret`.
fn interpret(suffix: &str) -> Option<(u32, i32, QuantityFormat)> {
    use QuantityFormat::*;
    Some(match suffix {
        "" => (10, 0, DecimalSI),
        "n" => (10, -9, DecimalSI),
        "u" => (10, -6, DecimalSI),
        "m" => (10, -3, DecimalSI),
        "k" => (10, 3, DecimalSI),
        "M" => (10, 6, DecimalSI),
        "G" => (10, 9, DecimalSI),
        "T" => (10, 12, DecimalSI),
        "P" => (10, 15, DecimalSI),
        "E" => (10, 18, DecimalSI),
        "Ki" => (2, 10, BinarySI),
        "Mi" => (2, 20, BinarySI),
        "Gi" => (2, 30, BinarySI),
        "Ti" => (2, 40, BinarySI),
        "Pi" => (2, 50, BinarySI),
        "Ei" => (2, 60, BinarySI),
        s if s.len() > 1 && (s.starts_with('e') || s.starts_with('E')) => {
            let e: i32 = s[1..].parse().ok()?;
            (10, e, DecimalExponent)
        }
        _ => return None,
    })
}

fn parse_value(s: &str) -> Result<(i128, i32, QuantityFormat), QuantityError> {
    if s.is_empty() {
        return Err(QuantityError::Format);
    }
    let parts = split(s)?;
    let (base, exponent, mut format) = interpret(parts.suffix).ok_or(QuantityError::Suffix)?;
    // Digits without leading zeros (already stripped from num) and trailing zeros of denom.
    let denom = parts.denom.trim_end_matches('0');
    let digits = format!("{}{}", parts.num, denom);
    let digits = digits.trim_start_matches('0');
    let mut mantissa: i128 = if digits.is_empty() {
        0
    } else {
        if digits.len() > 36 {
            return Err(QuantityError::Numeric);
        }
        digits.parse().map_err(|_| QuantityError::Numeric)?
    };
    let mut scale: i32 = -(denom.len() as i32);
    if base == 10 {
        scale = scale.checked_add(exponent).ok_or(QuantityError::Numeric)?;
    } else {
        let factor = 1i128 << exponent;
        mantissa = mantissa.checked_mul(factor).ok_or(QuantityError::Numeric)?;
    }
    // Normalise: drop trailing zeros so huge exponents stay small numbers.
    if mantissa != 0 {
        let (m, times) = remove_factors(mantissa, 10);
        mantissa = m;
        scale += times;
    } else {
        scale = 0;
    }
    // Round up (away from zero) to nano units.
    if scale < NANO {
        let drop = i64::from(NANO) - i64::from(scale);
        mantissa = match pow10(drop) {
            Some(p) => {
                let q = mantissa / p;
                if mantissa % p != 0 {
                    q + 1
                } else {
                    q
                }
            }
            None => 1,
        };
        scale = NANO;
    }
    if format == QuantityFormat::BinarySI {
        if compare(mantissa, scale, MAX_INT64, 0) == Ordering::Greater {
            mantissa = MAX_INT64;
            scale = 0;
        }
        if mantissa != 0 && compare(mantissa, scale, 1, 0) == Ordering::Less {
            format = QuantityFormat::DecimalSI;
        }
    }
    if !parts.positive {
        mantissa = -mantissa;
    }
    Ok((mantissa, scale, format))
}

impl FromStr for Quantity {
    type Err = QuantityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Quantity {
    /// The text as written (round-trips); use [`Quantity::canonical`] for apimachinery's form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str())
    }
}

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Quantity {}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> Ordering {
        compare(self.mantissa, self.scale, other.mantissa, other.scale)
    }
}

impl Default for Quantity {
    fn default() -> Self {
        Self {
            mantissa: 0,
            scale: 0,
            format: QuantityFormat::DecimalSI,
            repr: Repr::Text("0".to_string()),
        }
    }
}

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        match &self.repr {
            Repr::Text(s) => ser.serialize_str(s),
            Repr::Number(n) => n.serialize(ser),
        }
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Quantity;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a quantity (string or number)")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Quantity, E> {
                Quantity::parse(v.trim())
                    .map(|mut q| {
                        q.repr = Repr::Text(v.to_string());
                        q
                    })
                    .map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Quantity, E> {
                let mut q = Quantity::parse(&v.to_string()).map_err(E::custom)?;
                q.repr = Repr::Number(v.into());
                Ok(q)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Quantity, E> {
                let mut q = Quantity::parse(&v.to_string()).map_err(E::custom)?;
                q.repr = Repr::Number(v.into());
                Ok(q)
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Quantity, E> {
                let n = serde_json::Number::from_f64(v)
                    .ok_or_else(|| E::custom(QuantityError::Numeric))?;
                let mut q = Quantity::parse(&n.to_string()).map_err(E::custom)?;
                q.repr = Repr::Number(n);
                Ok(q)
            }
        }
        de.deserialize_any(V)
    }
}

impl TryFrom<&k8s_openapi::apimachinery::pkg::api::resource::Quantity> for Quantity {
    type Error = QuantityError;
    fn try_from(
        q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity,
    ) -> Result<Self, Self::Error> {
        Self::parse(q.0.trim())
    }
}

impl From<&Quantity> for k8s_openapi::apimachinery::pkg::api::resource::Quantity {
    fn from(q: &Quantity) -> Self {
        Self(q.as_str())
    }
}

impl schemars::JsonSchema for Quantity {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Quantity".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "pattern": "^(\\+|-)?(([0-9]+(\\.[0-9]*)?)|(\\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\\+|-)?(([0-9]+(\\.[0-9]*)?)|(\\.[0-9]+))))?$",
            "x-kubernetes-int-or-string": true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity::parse(s).unwrap()
    }

    #[test]
    fn parses_common_forms() {
        assert_eq!(q("128Mi").to_bytes(), 128 * 1024 * 1024);
        assert_eq!(q("1G").to_bytes(), 1_000_000_000);
        assert_eq!(q("0.5").milli_value(), 500);
        assert_eq!(q("500m").milli_value(), 500);
        assert_eq!(q("1e3").value(), 1000);
        assert_eq!(q("1E3").value(), 1000);
        assert_eq!(q("-1.5Ki").value(), -1536);
        assert_eq!(q("1024M").to_bytes(), 1_024_000_000);
        assert_eq!(q(".5").milli_value(), 500);
        assert_eq!(q("5.").value(), 5);
        assert_eq!(q("0.1m").milli_value(), 1, "rounded up to nano then milli");
        assert_eq!(q("1n").milli_value(), 1, "milli value rounds up");
        assert!(q("0").is_zero());
        assert!((q("2.5Gi").as_f64() - 2.5 * 1024f64.powi(3)).abs() < 1.0);
    }

    #[test]
    fn apimachinery_quirks() {
        // apimachinery accepts a bare sign or dot as zero.
        assert!(q("+").is_zero());
        assert!(q(".").is_zero());
        assert!(q("-0").is_zero());
    }

    #[test]
    fn rejects_junk() {
        assert_eq!(Quantity::parse("abc"), Err(QuantityError::Format));
        assert_eq!(Quantity::parse(""), Err(QuantityError::Format));
        assert_eq!(Quantity::parse("1 Gi"), Err(QuantityError::Format));
        assert_eq!(Quantity::parse("1Gb"), Err(QuantityError::Format));
        assert_eq!(Quantity::parse("1Gi5"), Err(QuantityError::Suffix));
        assert_eq!(Quantity::parse("1Mi3"), Err(QuantityError::Suffix));
        assert_eq!(Quantity::parse("1e"), Err(QuantityError::Suffix));
        assert_eq!(Quantity::parse("1.2.3"), Err(QuantityError::Format));
        assert_eq!(Quantity::parse("1x"), Err(QuantityError::Format));
        // apimachinery reads "-1" after the first sign as a (bad) suffix.
        assert_eq!(Quantity::parse("--1"), Err(QuantityError::Suffix));
        assert_eq!(
            QuantityError::Format.to_string(),
            "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
        );
    }

    #[test]
    fn canonical_forms_match_apimachinery() {
        for (input, want) in [
            ("1.5", "1500m"),
            ("1.5Gi", "1536Mi"),
            ("1000", "1k"),
            ("1500", "1500"),
            ("0.5", "500m"),
            ("1024Mi", "1Gi"),
            ("1Ki", "1Ki"),
            ("512", "512"),
            ("0.5Ki", "512"),
            ("100m", "100m"),
            ("1e3", "1e3"),
            ("1e0", "1"),
            ("1E6", "1e6"),
            ("0", "0"),
            ("0Mi", "0"),
            ("-1Gi", "-1Gi"),
            ("0.0000000001", "1n"),
            ("128974848", "128974848"),
            ("129e6", "129e6"),
            ("129000000", "129M"),
            ("1.1Ki", "1127m"),
        ] {
            let got = q(input).canonical();
            if input == "1.1Ki" {
                // 1.1 * 1024 = 1126.4: not an integer, so apimachinery falls back to DecimalSI.
                assert_eq!(got, "1126400m", "{input}");
            } else {
                assert_eq!(got, want, "{input}");
            }
        }
    }

    #[test]
    fn equality_is_numeric() {
        assert_eq!(q("1Gi"), q("1024Mi"));
        assert_eq!(q("1k"), q("1000"));
        assert!(q("1Gi") > q("1G"));
        assert!(q("100m") < q("1"));
    }

    #[test]
    fn serde_keeps_text_and_numbers() {
        let v: Quantity = serde_json::from_str("\"1024M\"").unwrap();
        assert_eq!(serde_json::to_string(&v).unwrap(), "\"1024M\"");
        let v: Quantity = serde_json::from_str("2").unwrap();
        assert_eq!(serde_json::to_string(&v).unwrap(), "2");
        assert_eq!(v.value(), 2);
        let err = serde_json::from_str::<Quantity>("\"abc\"").unwrap_err();
        assert!(err.to_string().contains("quantities must match"), "{err}");
    }

    #[test]
    fn converts_to_and_from_k8s_openapi() {
        use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;
        let k = K8sQuantity("2Gi".into());
        let q = Quantity::try_from(&k).unwrap();
        assert_eq!(q.to_bytes(), 2 << 30);
        assert_eq!(K8sQuantity::from(&q), k);
        assert!(Quantity::try_from(&K8sQuantity("x".into())).is_err());
    }

    #[test]
    fn arithmetic_follows_apimachinery_formats() {
        let sum = q("512Mi").checked_add(&q("512Mi")).unwrap();
        assert_eq!(sum.canonical(), "1Gi");
        assert_eq!(sum.as_str(), "1Gi", "the text is the canonical form");
        // A zero receiver takes the other operand's format; otherwise the receiver's wins.
        assert_eq!(q("0").checked_add(&q("1Gi")).unwrap().canonical(), "1Gi");
        assert_eq!(q("500m").checked_add(&q("1")).unwrap().canonical(), "1500m");
        assert_eq!(
            q("1Gi").checked_add(&q("1G")).unwrap().canonical(),
            "2073741824"
        );
        assert_eq!(
            q("1G").checked_add(&q("1Gi")).unwrap().canonical(),
            "2073741824"
        );
        assert_eq!(
            q("2Gi").checked_sub(&q("512Mi")).unwrap().canonical(),
            "1536Mi"
        );
        assert_eq!(
            q("1").checked_sub(&q("1500m")).unwrap().canonical(),
            "-500m"
        );
        assert_eq!(
            q("1e3").checked_add(&q("1n")).unwrap().canonical(),
            "1000000000001e-9"
        );
        assert!(
            q("1e40").checked_add(&q("1n")).is_none(),
            "beyond 38 digits"
        );
        assert_eq!(
            Quantity::from_int(3, QuantityFormat::DecimalSI).as_str(),
            "3"
        );
        assert_eq!(
            Quantity::from_int(2048, QuantityFormat::BinarySI).as_str(),
            "2Ki"
        );
    }

    #[test]
    fn constructors() {
        assert_eq!(Quantity::from_bytes(128 * 1024 * 1024).as_str(), "128Mi");
        // Below 1Ki apimachinery falls back to DecimalSI.
        assert_eq!(Quantity::from_bytes(1000).as_str(), "1k");
        assert_eq!(Quantity::from_milli(1500).as_str(), "1500m");
        assert_eq!(Quantity::from_milli(2000).as_str(), "2");
    }
}
