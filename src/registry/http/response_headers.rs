//! What registries say in response headers that the client acts on:
//! - `Retry-After` on 429 and 503 (seconds, or an HTTP date), a wait the retry loop
//!   honours up to `maximumRetryAfter`;
//! - `RateLimit-Limit` / `RateLimit-Remaining` (Docker Hub: `100;w=21600`), exported as
//!   the gauge `registry_rate_limit{registry,header}`.

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};

use crate::registry::metrics;

/// The wait `Retry-After` asks for, if it is present and readable. A date in the past is
/// no wait.
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(text).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The leading number of a `RateLimit-*` value (`76;w=21600` → 76).
fn leading_number(text: &str) -> Option<i64> {
    text.split([';', ',']).next()?.trim().parse().ok()
}

/// Exports the `RateLimit-*` headers of a response from `registry`.
pub(crate) fn record_rate_limit(registry: &str, headers: &HeaderMap) {
    for (header, label) in [
        ("ratelimit-limit", "limit"),
        ("ratelimit-remaining", "remaining"),
    ] {
        if let Some(value) = headers
            .get(header)
            .and_then(|v| v.to_str().ok())
            .and_then(leading_number)
        {
            metrics::rate_limit(registry, label, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(
            retry_after(&headers("retry-after", "4"), now),
            Some(Duration::from_secs(4))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            retry_after(&headers("retry-after", &later), now),
            Some(Duration::from_secs(90))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(
            retry_after(&headers("retry-after", &earlier), now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(&headers("retry-after", "soon"), now), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn rate_limit_values() {
        assert_eq!(leading_number("100;w=21600"), Some(100));
        assert_eq!(leading_number(" 76 "), Some(76));
        assert_eq!(leading_number("w=1"), None);
    }
}
