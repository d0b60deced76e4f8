//! Field validation of request bodies: every check names its field, in lowercase.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ledger_core::{validate_id, IdError, TimestampMs, AMOUNT_MAX, NAME_LENGTH_MAX};
use serde_json::Value;

use crate::problem::Problem;

/// What a JSON value is, for error details.
pub fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(_) => "a boolean".to_owned(),
        Value::Number(number) => number.to_string(),
        Value::String(_) => "a string".to_owned(),
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    }
}

/// Validates an id given as text (a body field or a path segment).
pub fn parse_id<T: TryFrom<String, Error = IdError>>(
    field: &'static str,
    text: &str,
) -> Result<T, Problem> {
    validate_id(field, text).map_err(|error| Problem::validation(error.to_string()))?;
    T::try_from(text.to_owned()).map_err(|error| Problem::validation(error.to_string()))
}

/// An id field: a string following the id grammar.
pub fn id<T: TryFrom<String, Error = IdError>>(
    field: &'static str,
    value: &Value,
) -> Result<T, Problem> {
    match value {
        Value::String(text) => parse_id(field, text),
        other => Err(Problem::validation(format!(
            "{field} must be a string (got {})",
            describe(other)
        ))),
    }
}

/// An integer field within `minimum..=maximum`.
pub fn integer(
    field: &'static str,
    value: &Value,
    minimum: i64,
    maximum: i64,
) -> Result<i64, Problem> {
    let refuse = || {
        Problem::validation(format!(
            "{field} must be an integer from {minimum} to {maximum} (got {})",
            describe(value)
        ))
    };
    match value {
        Value::Number(number) => match exact_integer(number) {
            Some(integer) if (minimum..=maximum).contains(&integer) => Ok(integer),
            _ => Err(refuse()),
        },
        _ => Err(refuse()),
    }
}

/// Largest magnitude below which every integer is exactly a double (2^53).
const EXACT_DOUBLE_INTEGER_MAX: f64 = 9_007_199_254_740_992.0;

/// The integer a JSON number stands for, if it is one. JSON Schema's
/// `integer` is any number with a zero fractional part, so `10.0` and
/// `1e3` are integers; written with a fraction or an exponent they are read
/// as doubles, accepted only where a double holds every integer exactly
/// (below 2^53; amounts are at most 10^12) and the fraction is zero. Money
/// is never kept as a float: the integer is taken and the double dropped.
pub fn exact_integer(number: &serde_json::Number) -> Option<i64> {
    if let Some(integer) = number.as_i64() {
        return Some(integer);
    }
    if number.is_u64() {
        return None;
    }
    let double = number.as_f64()?;
    if double.is_finite() && double.fract() == 0.0 && double.abs() < EXACT_DOUBLE_INTEGER_MAX {
        Some(double as i64)
    } else {
        None
    }
}

/// An amount of currency (grant, price): an integer in `1..=AMOUNT_MAX`.
pub fn amount(field: &'static str, value: &Value) -> Result<i64, Problem> {
    integer(field, value, 1, AMOUNT_MAX)
}

/// A count (supply, serial, max per user): an integer in `1..=maximum`.
pub fn count(field: &'static str, value: &Value, maximum: u32) -> Result<u32, Problem> {
    integer(field, value, 1, maximum as i64).map(|count| count as u32)
}

/// A name: a string of 1 to `NAME_LENGTH_MAX` bytes.
pub fn name(field: &'static str, value: &Value) -> Result<String, Problem> {
    match value {
        Value::String(text) if text.is_empty() => {
            Err(Problem::validation(format!("{field} must not be empty")))
        }
        Value::String(text) if text.len() > NAME_LENGTH_MAX => Err(Problem::validation(format!(
            "{field} is longer than {NAME_LENGTH_MAX} bytes"
        ))),
        Value::String(text) => Ok(text.clone()),
        other => Err(Problem::validation(format!(
            "{field} must be a string (got {})",
            describe(other)
        ))),
    }
}

/// A boolean field.
pub fn boolean(field: &'static str, value: &Value) -> Result<bool, Problem> {
    match value {
        Value::Bool(flag) => Ok(*flag),
        other => Err(Problem::validation(format!(
            "{field} must be a boolean (got {})",
            describe(other)
        ))),
    }
}

/// A timestamp field: RFC 3339 in UTC (`2030-01-01T00:00:00Z`), to milliseconds since the epoch.
pub fn timestamp(field: &'static str, value: &Value) -> Result<TimestampMs, Problem> {
    let refuse = || {
        Problem::validation(format!(
            "{field} must be an rfc 3339 timestamp in utc, e.g. 2030-01-01T00:00:00Z"
        ))
    };
    let Value::String(text) = value else {
        return Err(refuse());
    };
    let time = humantime::parse_rfc3339(text).map_err(|_| refuse())?;
    let since_epoch = time.duration_since(UNIX_EPOCH).map_err(|_| refuse())?;
    u64::try_from(since_epoch.as_millis()).map_err(|_| refuse())
}

/// Formats milliseconds since the epoch as RFC 3339 UTC with milliseconds.
pub fn format_timestamp(at_ms: TimestampMs) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(at_ms)).to_string()
}

/// Milliseconds since the epoch, from the system clock.
pub fn now_ms() -> TimestampMs {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as TimestampMs)
        .unwrap_or(0)
}

/// An item kind by its API name (`accessory`, `classic_clothing`, ...).
pub fn item_kind(field: &'static str, value: &Value) -> Result<ledger_core::ItemKind, Problem> {
    let names = || {
        ledger_core::ItemKind::all()
            .map(|kind| kind.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match value {
        Value::String(name) => ledger_core::ItemKind::parse(name).ok_or_else(|| {
            Problem::validation(format!("{field} must be one of {} (got `{name}`)", names()))
        }),
        other => Err(Problem::validation(format!(
            "{field} must be one of {} (got {})",
            names(),
            describe(other)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledger_core::UserId;
    use serde_json::json;

    #[test]
    fn amounts_are_positive_bounded_integers() {
        assert_eq!(amount("price", &json!(1)), Ok(1));
        assert_eq!(amount("price", &json!(AMOUNT_MAX)), Ok(AMOUNT_MAX));
        // A zero fraction is still an integer (JSON Schema's `integer`).
        assert_eq!(amount("price", &json!(10.0)), Ok(10));
        let parsed: Value = serde_json::from_str("37119728.0").unwrap();
        assert_eq!(amount("price", &parsed), Ok(37_119_728));
        let parsed: Value = serde_json::from_str("1e3").unwrap();
        assert_eq!(amount("price", &parsed), Ok(1_000));
        for bad in [
            json!(0),
            json!(-1),
            json!(1.5),
            json!(0.0),
            json!(1e12 + 0.5),
            json!("5"),
            json!(null),
            json!(AMOUNT_MAX + 1),
            json!(u64::MAX),
            json!(1e30),
        ] {
            let problem = amount("price", &bad).unwrap_err();
            assert_eq!(problem.code, "validation_failed");
            assert!(
                problem
                    .detail
                    .starts_with("price must be an integer from 1 to 1000000000000"),
                "{}",
                problem.detail
            );
        }
    }

    #[test]
    fn ids_name_their_field() {
        assert_eq!(
            id::<UserId>("buyer_id", &json!("bob")),
            Ok(UserId::parse("bob").unwrap())
        );
        assert_eq!(
            id::<UserId>("buyer_id", &json!("")).unwrap_err().detail,
            "buyer_id must not be empty"
        );
        assert!(id::<UserId>("buyer_id", &json!("a b"))
            .unwrap_err()
            .detail
            .starts_with("buyer_id must start"));
        assert_eq!(
            id::<UserId>("buyer_id", &json!(7)).unwrap_err().detail,
            "buyer_id must be a string (got 7)"
        );
    }

    #[test]
    fn timestamps_are_strict_utc() {
        assert_eq!(
            timestamp("starts_at", &json!("1970-01-01T00:00:01Z")),
            Ok(1_000)
        );
        assert_eq!(
            timestamp("starts_at", &json!("2030-01-01T00:00:00.250Z")),
            Ok(1_893_456_000_250)
        );
        for bad in [
            json!("2030-01-01"),
            json!("2030-01-01T00:00:00+02:00"),
            json!("soon"),
            json!(1_000),
        ] {
            assert!(timestamp("starts_at", &bad).is_err(), "{bad}");
        }
        assert_eq!(
            format_timestamp(1_893_456_000_250),
            "2030-01-01T00:00:00.250Z"
        );
    }

    #[test]
    fn names_are_bounded_in_bytes() {
        assert!(name("name", &json!("hat")).is_ok());
        assert!(name("name", &json!("")).is_err());
        assert!(name("name", &json!("é".repeat(101))).is_err());
        assert!(name("name", &json!("é".repeat(100))).is_ok());
    }
}
