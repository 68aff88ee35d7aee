//! systemd's readiness protocol (sd_notify(3)), so a `Type=notify` unit running
//! `dedupfs mount STORE MOUNTPOINT` in the foreground is "started" exactly when the mount is
//! live: one datagram (`READY=1`, later `STOPPING=1`) to the socket named by `$NOTIFY_SOCKET`.
//! Without that variable (not started by systemd) nothing is sent.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;

/// Sends `state` to systemd if it is listening; failures are logged, never fatal: the
/// mount works the same, only the unit's state may lag.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(path.as_bytes(), state) {
        tracing::warn!("cannot notify systemd ({state}): {e}");
    }
}

fn send(path: &[u8], state: &str) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    match path.strip_prefix(b"@") {
        // An abstract socket: '@' stands for the leading NUL byte.
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        }
        None => {
            sock.send_to(state.as_bytes(), std::ffi::OsStr::from_bytes(path))?;
        }
    }
    Ok(())
}
