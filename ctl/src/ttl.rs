//! Token lifetimes written the way operators write them: `90s`, `15m`, `12h`, `30d` or seconds.

use std::fmt;
use std::time::Duration;

/// Why a TTL string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseTtlError {
    input: String,
    reason: &'static str,
}

impl fmt::Display for ParseTtlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid ttl {:?}: {} (examples: 90s, 15m, 12h, 30d, or plain seconds)",
            self.input, self.reason
        )
    }
}

impl std::error::Error for ParseTtlError {}

/// Parse a positive lifetime: a whole number with an optional unit `s`, `m`, `h` or `d`
/// (no unit means seconds).
pub fn parse_ttl(input: &str) -> Result<Duration, ParseTtlError> {
    let err = |reason| ParseTtlError {
        input: input.to_owned(),
        reason,
    };
    let s = input.trim();
    let (digits, unit_secs) = match s.char_indices().last() {
        None => return Err(err("it is empty")),
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        Some((i, 'd')) => (&s[..i], 86_400),
        Some((_, c)) if c.is_ascii_digit() => (s, 1),
        Some(_) => return Err(err("unknown unit (use s, m, h or d)")),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err("expected a whole number before the unit"));
    }
    let n: u64 = digits.parse().map_err(|_| err("number too large"))?;
    let secs = n
        .checked_mul(unit_secs)
        .ok_or_else(|| err("number too large"))?;
    if secs == 0 {
        return Err(err("it must be longer than zero"));
    }
    Ok(Duration::from_secs(secs))
}
