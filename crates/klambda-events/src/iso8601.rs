//! ISO 8601 durations, the subset Knative's delivery fields use (`PT0.2S`, `PT1M30S`,
//! `P1DT2H`): part of the contract because a function's `klambda.json` carries them and the
//! parser, the deployer and the broker must read them the same way.

use std::time::Duration;

/// Parses an ISO-8601 duration of days, hours, minutes and (fractional) seconds, the subset
/// Knative uses: `PT0.2S`, `PT1M30S`, `P1DT2H`.
pub fn duration(text: &str) -> Option<Duration> {
    let rest = text.strip_prefix('P')?;
    if rest.is_empty() {
        return None;
    }
    let (date, time) = match rest.split_once('T') {
        Some((date, time)) if !time.is_empty() => (date, Some(time)),
        Some(_) => return None,
        None => (rest, None),
    };
    let mut seconds = 0f64;
    let mut parse = |part: &str, units: &[(char, f64)]| -> Option<()> {
        let mut number = String::new();
        let mut seen = 0;
        for c in part.chars() {
            if c.is_ascii_digit() || c == '.' {
                number.push(c);
                continue;
            }
            let position = units.iter().position(|(unit, _)| *unit == c)?;
            if position < seen || number.is_empty() {
                return None;
            }
            seen = position + 1;
            seconds += number.parse::<f64>().ok()? * units[position].1;
            number.clear();
        }
        number.is_empty().then_some(())
    };
    parse(date, &[('D', 86_400.0)])?;
    if let Some(time) = time {
        parse(time, &[('H', 3600.0), ('M', 60.0), ('S', 1.0)])?;
    }
    Duration::try_from_secs_f64(seconds).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_durations_knative_uses() {
        let cases = [
            ("PT0.2S", Some(200)),
            ("PT1S", Some(1000)),
            ("PT1M30S", Some(90_000)),
            ("PT2H", Some(7_200_000)),
            ("P1D", Some(86_400_000)),
            ("P1DT1S", Some(86_401_000)),
            ("", None),
            ("P", None),
            ("PT", None),
            ("1S", None),
            ("PT1X", None),
            ("PTS", None),
            ("PT1S2M", None),
        ];
        for (text, millis) in cases {
            assert_eq!(
                duration(text).map(|d| d.as_millis() as u64),
                millis,
                "{text:?}"
            );
        }
    }
}
