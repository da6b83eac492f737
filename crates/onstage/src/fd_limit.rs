//! The process's file-descriptor limit, and the connection cap that fits in it.
//! Every HTTP connection costs a descriptor; the store, the media socket and the
//! runtime need a few more. Running out makes SQLite fail to open its files, so the
//! cap always leaves room for them.

/// Descriptors kept for everything but HTTP connections: the store's files and
/// pool, the media socket, the runtime's own, logs.
const RESERVED: u64 = 256;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, and returns `wanted`
/// connections, lowered (with a warning) so that they fit under that limit with
/// [`RESERVED`] descriptors to spare.
pub fn connections_within(wanted: usize) -> usize {
    let Some(limit) = raise_nofile() else {
        return wanted;
    };
    let room = limit.saturating_sub(RESERVED).max(1);
    if (wanted as u64) <= room {
        return wanted;
    }
    let fits = usize::try_from(room).unwrap_or(wanted);
    tracing::warn!(
        wanted,
        fits,
        descriptor_limit = limit,
        "the file-descriptor limit leaves room for fewer connections than --max-connections; \
         raise `ulimit -n` to allow more"
    );
    fits
}

#[cfg(unix)]
fn raise_nofile() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and reads nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            tracing::debug!(
                from = limit.rlim_cur,
                to = limit.rlim_max,
                "raised the soft file-descriptor limit"
            );
            limit.rlim_cur = limit.rlim_max;
        }
    }
    Some(limit.rlim_cur)
}

#[cfg(not(unix))]
fn raise_nofile() -> Option<u64> {
    None
}
