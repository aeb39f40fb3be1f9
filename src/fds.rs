//! File descriptors: the soft `RLIMIT_NOFILE` raised to the hard limit at start-up, the check
//! that `--max-clients` fits in it, and the spare descriptor that lets callwire answer 503 when
//! it runs out anyway (another process's share of the system table, a leak in a library).
//!
//! `libc` (already in the build through the async runtime) gives `getrlimit` and `setrlimit`.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};

use crate::limits::{Limits, MAX_PENDING};

/// Descriptors callwire needs for itself: stdin, stdout and stderr, the listener, the reactor
/// (epoll and its notifier), the signal pipe, the broker connection (and lapin's own reactor),
/// the systemd notify socket, the credentials file while it is read, the spare, a refused
/// connection, with room to spare (22 open with the AMQP source, counted in /proc/<pid>/fd).
pub const OWN: usize = 32;

/// Descriptors callwire may need at once with these limits: every client, every connection
/// being answered, and its own.
pub fn needed(limits: &Limits) -> usize {
    limits.max_clients + MAX_PENDING + OWN
}

/// Raises the soft limit on open files to the hard limit (a unit's `LimitNOFILE`, or the
/// system's), and checks that `needed` fits; the error names both numbers. A sandbox that
/// forbids raising it (systemd's `@resources` filter) leaves the limit it set.
pub fn raise_limit(needed: usize, max_clients: usize) -> Result<u64, String> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for the call to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(format!(
            "cannot read the open-files limit: {}",
            std::io::Error::last_os_error()
        ));
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit; a refusal leaves the limit as it was.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    // `rlim_t` is 32 bits wide on 32-bit ARM.
    #[allow(clippy::unnecessary_cast)]
    let have = limit.rlim_cur as u64;
    if (needed as u64) > have {
        return Err(format!(
            "--max-clients {max_clients} needs {needed} open files ({max_clients} clients, \
             {MAX_PENDING} connections being answered, {OWN} of its own) but the limit is \
             {have}: raise it (ulimit -n, or LimitNOFILE= in the unit) or lower --max-clients"
        ));
    }
    Ok(have)
}

/// One descriptor held back, so that a connection can still be accepted and refused when the
/// process has none left (`EMFILE`): otherwise it would stay in the listen queue, and every
/// `accept` fail again at once.
pub struct Spare(Option<File>);

impl Spare {
    pub fn open() -> Spare {
        Spare(File::open("/dev/null").ok())
    }

    /// Out of descriptors: gives up the spare, takes one waiting connection, answers it
    /// `answer` and closes it, then takes the spare back. Whether one was answered.
    pub fn refuse_one(&mut self, listener: &TcpListener, answer: &[u8]) -> bool {
        if self.0.take().is_none() {
            self.0 = File::open("/dev/null").ok();
            return false;
        }
        let refused = match listener.accept() {
            Ok((stream, _)) => {
                refuse(stream, answer);
                true
            }
            Err(_) => false,
        };
        self.0 = File::open("/dev/null").ok();
        refused
    }
}

/// Answers a connection at once, without reading its request, and closes it. What the client
/// has sent is read and dropped first (a request head's worth at most, never waiting):
/// closing a socket with unread data would reset it, and the answer could be lost.
fn refuse(stream: TcpStream, answer: &[u8]) {
    let mut stream = stream;
    let _ = stream.set_nonblocking(true);
    let _ = stream.write(answer);
    let _ = stream.shutdown(Shutdown::Write);
    let mut sink = [0u8; 512];
    for _ in 0..16 {
        if !matches!(stream.read(&mut sink), Ok(n) if n > 0) {
            break;
        }
    }
}
