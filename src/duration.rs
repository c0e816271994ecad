//! Go-style durations (`300s`, `5m`, `1h30m`, `1.5h`), as Kubernetes and Linkerd write them.
//! The CRD's `pattern` admits exactly this grammar; this module gives it a value.

use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{input:?} is not a duration like 300s, 5m or 1h30m: {problem}")]
pub struct DurationError {
    pub input: String,
    pub problem: &'static str,
}

/// Parses a Go duration without sign. Sub-second units are accepted; the result is exact to the
/// nanosecond.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let fail = |problem| DurationError {
        input: input.to_owned(),
        problem,
    };
    if input.is_empty() {
        return Err(fail("it is empty"));
    }
    let mut total_nanos: u128 = 0;
    let mut rest = input;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| fail("a number has no unit"))?;
        if num_len == 0 {
            return Err(fail("a unit has no number before it"));
        }
        let (number, tail) = rest.split_at(num_len);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            _ => return Err(fail("the unit is not one of ns, us, ms, s, m, h")),
        };
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() || frac.contains('.') || (number.contains('.') && frac.is_empty()) {
            return Err(fail("a number is malformed"));
        }
        let whole: u128 = whole.parse().map_err(|_| fail("a number is too large"))?;
        let mut nanos = whole
            .checked_mul(unit_nanos)
            .ok_or_else(|| fail("it is too long"))?;
        // Fractional part, digit by digit, exact down to the nanosecond.
        let mut scale = unit_nanos;
        for d in frac.bytes() {
            scale /= 10;
            nanos = nanos
                .checked_add(u128::from(d - b'0') * scale)
                .ok_or_else(|| fail("it is too long"))?;
        }
        total_nanos = total_nanos
            .checked_add(nanos)
            .ok_or_else(|| fail("it is too long"))?;
        rest = tail;
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| fail("it is too long"))?;
    Ok(Duration::new(secs, (total_nanos % 1_000_000_000) as u32))
}

/// Whole seconds with an `s` suffix, as Linkerd's proxy reads its refresh bounds (`300s`).
/// Fractions round up, so a refresh is never later than asked.
pub fn to_whole_seconds(d: Duration) -> String {
    format!("{}s", round_up_to_seconds(d).as_secs())
}

/// `d` rounded up to whole seconds: what a proxy is given for it.
pub fn round_up_to_seconds(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs() + u64::from(d.subsec_nanos() > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        for (input, secs, nanos) in [
            ("300s", 300, 0),
            ("5m", 300, 0),
            ("1h30m", 5400, 0),
            ("1.5h", 5400, 0),
            ("0s", 0, 0),
            ("250ms", 0, 250_000_000),
            ("1m0.5s", 60, 500_000_000),
            ("10us", 0, 10_000),
        ] {
            assert_eq!(parse(input), Ok(Duration::new(secs, nanos)), "{input}");
        }
    }

    #[test]
    fn refuses_what_the_crd_pattern_refuses() {
        for input in [
            "", "abc", "-5m", "5", "5 m", "m", ".5s", "5.s", "1.2.3s", "5d",
        ] {
            assert!(parse(input).is_err(), "{input:?} should be refused");
        }
        assert_eq!(
            parse("5d").unwrap_err().to_string(),
            "\"5d\" is not a duration like 300s, 5m or 1h30m: the unit is not one of ns, us, ms, s, m, h"
        );
    }

    /// The largest numbers the CRD's pattern lets through are refused as too long, never
    /// wrapped (in a release build the sum would wrap to 1 ns and pods would be told `1s`).
    #[test]
    fn numbers_too_large_are_refused_not_wrapped() {
        for input in [
            "340282366920938463463374607431.768211457s",
            "340282366920938463463374607432s",
            "99999999999999999999999999999999999999999h",
            "18446744073709551616s",
        ] {
            assert!(parse(input).is_err(), "{input:?} should be refused");
        }
    }

    #[test]
    fn whole_seconds_round_up() {
        assert_eq!(to_whole_seconds(Duration::from_secs(300)), "300s");
        assert_eq!(to_whole_seconds(Duration::from_millis(1500)), "2s");
        assert_eq!(to_whole_seconds(Duration::ZERO), "0s");
    }
}
