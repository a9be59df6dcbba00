//! The one duration grammar of kinfer's command lines (gateway and operator flags): humantime's,
//! a number with a unit, parts added up: `500ms`, `30s`, `5m`, `1.5h`, `1h 30m`. A number without
//! a unit is refused rather than guessed (seconds? milliseconds?): the chart, the docs and the
//! examples always write the unit.

use std::time::Duration;

/// A duration such as `500ms`, `30s`, `5m` or `1h 30m`; `0s` is allowed (for flags where zero
/// turns something off).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|error| {
        format!("{text:?} is not a duration ({error}): write a number and a unit, for example 500ms, 30s, 5m or 1h 30m")
    })
}

/// Like [`parse_duration`], for periods and timeouts that cannot be zero.
pub fn parse_nonzero_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err(format!("{text:?}: the duration must be longer than zero")),
        duration => Ok(duration),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_fractions_and_sums() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("0.5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration(" 30s "), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(
            parse_nonzero_duration("800ms"),
            Ok(Duration::from_millis(800))
        );
    }

    #[test]
    fn errors_say_what_to_write() {
        for text in [
            "",
            "3",
            "1.5",
            "fast",
            "5 parsecs",
            "-1s",
            "1e3s",
            "99999999999999999999s",
        ] {
            let error = parse_duration(text).unwrap_err();
            assert!(
                error.contains("for example 500ms, 30s"),
                "{text:?}: {error}"
            );
        }
        let error = parse_nonzero_duration("0s").unwrap_err();
        assert!(error.contains("longer than zero"), "{error}");
    }
}
