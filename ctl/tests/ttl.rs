//! TTL strings as operators write them.

use std::time::Duration;

use hearth_ctl::parse_ttl;

#[test]
fn units_and_plain_seconds() {
    let cases = [
        ("90s", 90),
        ("15m", 15 * 60),
        ("12h", 12 * 3600),
        ("30d", 30 * 86_400),
        ("3600", 3600),
        ("1", 1),
        (" 7d ", 7 * 86_400),
    ];
    for (input, secs) in cases {
        assert_eq!(parse_ttl(input), Ok(Duration::from_secs(secs)), "{input}");
    }
}

#[test]
fn refuses_nonsense() {
    for input in [
        "",
        "  ",
        "0",
        "0s",
        "0d",
        "d",
        "-5m",
        "+5m",
        "1.5h",
        "5 m",
        "5w",
        "5ms",
        "1h30m",
        "abc",
        "30D",
        "99999999999999999999",
        "213503982334602d",
    ] {
        let err = parse_ttl(input).expect_err(input);
        let msg = err.to_string();
        assert!(msg.contains("invalid ttl"), "{input}: {msg}");
    }
}

#[test]
fn largest_values_do_not_overflow() {
    assert_eq!(
        parse_ttl(&u64::MAX.to_string()),
        Ok(Duration::from_secs(u64::MAX))
    );
    let max_days = u64::MAX / 86_400;
    assert_eq!(
        parse_ttl(&format!("{max_days}d")),
        Ok(Duration::from_secs(max_days * 86_400))
    );
    assert!(parse_ttl(&format!("{}d", max_days + 1)).is_err());
}
