//! What a client tells about itself: the participant record's client attributes
//! (`browserName`, `osVersion`, ...), read from its `User-Agent` and sanitised to the
//! model's pattern `[a-zA-Z0-9-_.,:;\s]*`, at most 128 characters.

use crate::model::ClientAttributes;

/// Longest client attribute the model allows.
pub const MAX_CLIENT_ATTRIBUTE_LEN: usize = 128;

/// Reads browser and operating system from a `User-Agent`. Browsers are recognised by
/// their usual tokens; any other client (aiortc's aiohttp, curl, an SDK) is named by
/// its first `product/version` token. Unknown parts stay `None`.
pub fn from_user_agent(user_agent: Option<&str>) -> ClientAttributes {
    let Some(ua) = user_agent.map(str::trim).filter(|s| !s.is_empty()) else {
        return ClientAttributes::default();
    };
    let (browser_name, browser_version) = browser(ua);
    let (os_name, os_version) = operating_system(ua);
    ClientAttributes {
        isp_name: None,
        os_name: os_name.and_then(|s| sanitize(&s)),
        os_version: os_version.and_then(|s| sanitize(&s)),
        browser_name: browser_name.and_then(|s| sanitize(&s)),
        browser_version: browser_version.and_then(|s| sanitize(&s)),
        sdk_version: None,
    }
}

/// Keeps the characters the model's pattern allows and at most 128 of them; `None`
/// when nothing is left.
pub fn sanitize(value: &str) -> Option<String> {
    let kept: String = value
        .chars()
        .filter(|c| {
            c.is_ascii_alphanumeric()
                || matches!(c, '-' | '_' | '.' | ',' | ':' | ';')
                || c.is_whitespace()
        })
        .take(MAX_CLIENT_ATTRIBUTE_LEN)
        .collect();
    let kept = kept.trim().to_owned();
    (!kept.is_empty()).then_some(kept)
}

/// The version after `token/` in the user agent, up to the next space.
fn version_after(ua: &str, token: &str) -> Option<String> {
    let start = ua.find(token)? + token.len();
    let version: String = ua[start..]
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != ';' && *c != ')')
        .collect();
    (!version.is_empty()).then_some(version)
}

fn browser(ua: &str) -> (Option<String>, Option<String>) {
    // Order matters: Edge and Opera also say Chrome; Chrome also says Safari.
    const BROWSERS: [(&str, &str); 7] = [
        ("Edg/", "Edge"),
        ("OPR/", "Opera"),
        ("Firefox/", "Firefox"),
        ("HeadlessChrome/", "HeadlessChrome"),
        ("Chromium/", "Chromium"),
        ("Chrome/", "Chrome"),
        ("CriOS/", "Chrome"),
    ];
    for (token, name) in BROWSERS {
        if let Some(version) = version_after(ua, token) {
            return (Some(name.to_owned()), Some(version));
        }
    }
    if ua.contains("Safari/")
        && let Some(version) = version_after(ua, "Version/")
    {
        return (Some("Safari".to_owned()), Some(version));
    }
    if ua.starts_with("Mozilla/") {
        return (None, None);
    }
    // Another client: its first product token.
    let first = ua.split_whitespace().next().unwrap_or(ua);
    match first.split_once('/') {
        Some((name, version)) => (Some(name.to_owned()), Some(version.to_owned())),
        None => (Some(first.to_owned()), None),
    }
}

fn operating_system(ua: &str) -> (Option<String>, Option<String>) {
    if let Some(v) = version_after(ua, "Windows NT ") {
        return (Some("Windows".into()), Some(v));
    }
    if let Some(v) = version_after(ua, "iPhone OS ").or_else(|| version_after(ua, "CPU OS ")) {
        return (Some("iOS".into()), Some(v.replace('_', ".")));
    }
    if let Some(v) = version_after(ua, "Mac OS X ") {
        return (Some("macOS".into()), Some(v.replace('_', ".")));
    }
    if let Some(v) = version_after(ua, "Android ") {
        return (Some("Android".into()), Some(v));
    }
    if ua.contains("CrOS") {
        return (Some("ChromeOS".into()), None);
    }
    if ua.contains("Linux") {
        return (Some("Linux".into()), None);
    }
    (None, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_desktop_browsers() {
        let chrome = from_user_agent(Some(
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
        ));
        assert_eq!(chrome.browser_name.as_deref(), Some("Chrome"));
        assert_eq!(chrome.browser_version.as_deref(), Some("131.0.0.0"));
        assert_eq!(chrome.os_name.as_deref(), Some("Linux"));

        let safari = from_user_agent(Some(
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Safari/605.1.15",
        ));
        assert_eq!(safari.browser_name.as_deref(), Some("Safari"));
        assert_eq!(safari.browser_version.as_deref(), Some("17.1"));
        assert_eq!(safari.os_name.as_deref(), Some("macOS"));
        assert_eq!(safari.os_version.as_deref(), Some("10.15.7"));

        let firefox = from_user_agent(Some(
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
        ));
        assert_eq!(firefox.browser_name.as_deref(), Some("Firefox"));
        assert_eq!(firefox.os_name.as_deref(), Some("Windows"));
        assert_eq!(firefox.os_version.as_deref(), Some("10.0"));
    }

    #[test]
    fn names_other_clients_by_their_first_product() {
        let aiohttp = from_user_agent(Some("Python/3.11 aiohttp/3.9.1"));
        assert_eq!(aiohttp.browser_name.as_deref(), Some("Python"));
        assert_eq!(aiohttp.browser_version.as_deref(), Some("3.11"));
        assert_eq!(from_user_agent(None), ClientAttributes::default());
    }

    #[test]
    fn sanitises_to_the_model_pattern() {
        assert_eq!(
            sanitize("Evil<script>/1.0 (x)").as_deref(),
            Some("Evilscript1.0 x")
        );
        assert_eq!(sanitize("<>()").as_deref(), None);
        let long = "a".repeat(300);
        assert_eq!(
            sanitize(&long).map(|s| s.len()),
            Some(MAX_CLIENT_ATTRIBUTE_LEN)
        );
        let odd = from_user_agent(Some("Weird\u{202e}Client/9<9>"));
        assert_eq!(odd.browser_name.as_deref(), Some("WeirdClient"));
        assert_eq!(odd.browser_version.as_deref(), Some("99"));
    }
}
