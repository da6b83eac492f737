//! Routing and validation against the service model on arbitrary requests: the
//! first byte picks a method, the input up to the first newline is the path (and
//! query after `?`), the rest the body. Nothing may panic, and a failure is never
//! a server error.
#![no_main]

use http::Method;
use libfuzzer_sys::fuzz_target;

const METHODS: [Method; 4] = [Method::POST, Method::GET, Method::DELETE, Method::PUT];

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let method = &METHODS[usize::from(first) % METHODS.len()];
    let split = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
    let (target, body) = rest.split_at(split);
    let target = String::from_utf8_lossy(target);
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (&*target, None),
    };
    if let Err((_, e)) = onstage_api::request_document(method, path, query, body) {
        assert!(
            !e.kind.status().is_server_error() || e.kind == onstage_api::ErrorKind::NotImplemented,
            "{e}"
        );
    }
});
