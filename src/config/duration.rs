//! Durations as operators write them: `"500ms"`, `"30s"`, `"5m"`, `"1h"`, and compound
//! ones, `"1h30m"`, `"1d"`, `"2h 15m"` (the `humantime` crate's syntax).

use std::time::Duration;

/// Parses a duration: whole numbers with units `ms`, `s`, `m`, `h`, `d` (and humantime's
/// longer spellings, `min`, `hours`, ...), one or several. Months and years are refused:
/// they have no fixed length, and `"5M"` (months) is one shift key away from `"5m"`.
pub fn parse(text: &str) -> Result<Duration, String> {
    let hint = || {
        format!(
            "\"{text}\" is not a duration; write e.g. \"500ms\", \"30s\", \"5m\", \"1h\" or \"1h30m\""
        )
    };
    if !text.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(hint());
    }
    let duration = humantime::parse_duration(text).map_err(|_| hint())?;
    let months_or_years = text
        .split(|c: char| c.is_ascii_digit() || c.is_ascii_whitespace())
        .any(|unit| {
            matches!(
                unit,
                "M" | "month" | "months" | "y" | "year" | "years" | "w" | "week" | "weeks"
            )
        });
    if months_or_years {
        return Err(format!(
            "\"{text}\": weeks, months and years are not accepted; write days, e.g. \"30d\""
        ));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("2h 15m"), Ok(Duration::from_secs(8100)));
        assert_eq!(parse("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        for bad in [
            "",
            "30",
            "s",
            "-1s",
            "5M",
            "1y",
            "2w",
            "ten seconds",
            "99999999999999999999h",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
