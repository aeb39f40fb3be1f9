//! systemd's service notifications (`sd_notify`), for `Type=notify` units (systemd/callwire.service).
//!
//! The protocol is one datagram per notice to the `AF_UNIX` socket named by `$NOTIFY_SOCKET`
//! (a path, or an abstract socket when it starts with `@`), holding newline-separated
//! `KEY=value` lines: `READY=1` once serving, `WATCHDOG=1` every half `$WATCHDOG_USEC`,
//! `STOPPING=1` when shutdown starts, `STATUS=...` for `systemctl status`. Outside systemd
//! (`$NOTIFY_SOCKET` unset) every call does nothing.
//!
//! A few lines on `std`'s `UnixDatagram`, not a crate: the socket is non-blocking, so a
//! notice never stalls the one thread; one that cannot be sent is dropped (and logged once).
//! The watchdog pings come from a task on the main executor ([`watchdog`]), so a stalled event
//! loop stops them and systemd restarts the service.

use std::cell::Cell;
use std::io;
use std::os::unix::net::UnixDatagram;
use std::rc::Rc;
use std::time::Duration;

use smol::Timer;

/// The notification socket of the service manager that started this process, if any.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    target: Target,
    /// Whether a failed send was already logged (later ones are not).
    warned: Cell<bool>,
}

#[derive(Debug)]
enum Target {
    Path(std::path::PathBuf),
    #[cfg(any(target_os = "linux", target_os = "android"))]
    Abstract(std::os::unix::net::SocketAddr),
}

impl Notifier {
    /// The notifier `$NOTIFY_SOCKET` names; `None` when it is unset or unusable (logged).
    pub fn from_env() -> Option<Rc<Notifier>> {
        let name = std::env::var_os("NOTIFY_SOCKET")?;
        match Notifier::new(&name.to_string_lossy()) {
            Ok(notifier) => Some(Rc::new(notifier)),
            Err(err) => {
                warn!("NOTIFY_SOCKET {name:?}: {err}; systemd will not hear from callwire");
                None
            }
        }
    }

    /// A notifier for a socket name as `$NOTIFY_SOCKET` gives it.
    pub fn new(name: &str) -> io::Result<Notifier> {
        let target = if let Some(abstract_name) = name.strip_prefix('@') {
            abstract_target(abstract_name)?
        } else if name.starts_with('/') {
            Target::Path(name.into())
        } else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "expected an absolute path or an @abstract name",
            ));
        };
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        Ok(Notifier {
            socket,
            target,
            warned: Cell::new(false),
        })
    }

    /// Sends one notice: newline-separated `KEY=value` lines.
    pub fn send(&self, state: &str) {
        let sent = match &self.target {
            Target::Path(path) => self.socket.send_to(state.as_bytes(), path),
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Target::Abstract(address) => self.socket.send_to_addr(state.as_bytes(), address),
        };
        if let Err(err) = sent
            && !self.warned.replace(true)
        {
            warn!("cannot notify systemd: {err} (further failures are not logged)");
        }
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_target(name: &str) -> io::Result<Target> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).map(Target::Abstract)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_target(_name: &str) -> io::Result<Target> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract sockets exist only on Linux",
    ))
}

/// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC`, as systemd advises. `None`
/// when no watchdog is set, or when `$WATCHDOG_PID` names another process.
pub fn watchdog_interval() -> Option<Duration> {
    interval_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

fn interval_from(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok() != Some(own_pid)
    {
        return None;
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Sends `WATCHDOG=1` every `every`, forever, with a `STATUS=` line from `status` if it
/// gives one. Spawn it on the main executor: if the event loop stalls, the pings stop.
pub async fn watchdog(notifier: Rc<Notifier>, every: Duration, status: impl Fn() -> String) {
    loop {
        Timer::after(every).await;
        let status = status();
        if status.is_empty() {
            notifier.send("WATCHDOG=1");
        } else {
            notifier.send(&format!("WATCHDOG=1\nSTATUS={status}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_interval_is_half_of_watchdog_usec_for_this_process() {
        let half = Some(Duration::from_millis(200));
        assert_eq!(interval_from(Some("400000"), None, 7), half);
        assert_eq!(interval_from(Some("400000"), Some("7"), 7), half);
        assert_eq!(interval_from(Some("400000"), Some("8"), 7), None);
        assert_eq!(interval_from(Some("0"), None, 7), None);
        assert_eq!(interval_from(Some("soon"), None, 7), None);
        assert_eq!(interval_from(None, None, 7), None);
    }

    #[test]
    fn notices_reach_a_path_socket_and_an_abstract_one() {
        let dir = std::env::temp_dir().join(format!("callwire-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        Notifier::new(path.to_str().unwrap())
            .unwrap()
            .send("READY=1\nSTATUS=hi");
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=hi");
        std::fs::remove_dir_all(&dir).unwrap();

        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let name = format!("callwire-notify-test-{}", std::process::id());
            let address =
                std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
            let receiver = UnixDatagram::bind_addr(&address).unwrap();
            Notifier::new(&format!("@{name}"))
                .unwrap()
                .send("WATCHDOG=1");
            let n = receiver.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"WATCHDOG=1");
        }
    }

    #[test]
    fn a_relative_name_is_refused_and_a_missing_socket_does_not_panic() {
        assert!(Notifier::new("notify").is_err());
        let notifier = Notifier::new("/nonexistent/callwire/notify").unwrap();
        notifier.send("READY=1");
        notifier.send("READY=1");
        assert!(notifier.warned.get());
    }
}
