//! `TCP_DEFER_ACCEPT` on the client listeners (`server.defer_accept`): the one socket option
//! the gateway needs that no safe crate sets (socket2, rustix and std's stable API lack
//! it), and so the crate's one `unsafe` block, a `setsockopt` call. `tests/layout.rs`
//! keeps it the only one.
//!
//! With it, Linux completes the TCP handshake as usual but wakes the accept loop only once
//! the client's first bytes (an HTTP request head, a TLS ClientHello) are there, or once
//! the wait has passed. A new connection then costs no wake-up and no read that finds
//! nothing: 0.91x the CPU of a connection per request (`docs/performance.md`). A client
//! that says nothing sits in the kernel's queue of half-open connections (not counted in
//! `max_connections`), is accepted when the wait ends, and `header_read_timeout` (or
//! `tls_handshake_timeout`) starts then.
//!
//! A kernel or sandbox that refuses the option costs only the saving: the listener is
//! used as it is, with a warning, never refused.

use std::io;
use std::time::Duration;

/// Sets `TCP_DEFER_ACCEPT` on a listener to `wait` (whole seconds; zero turns it off), or
/// warns that it could not (see above).
pub fn defer_accept_or_warn(socket: &socket2::Socket, wait: Duration) {
    if let Err(error) = defer_accept(socket, wait) {
        tracing::warn!(
            %error,
            key = "server.defer_accept",
            "cannot set TCP_DEFER_ACCEPT: new connections are accepted before they send"
        );
    }
}

/// Sets `TCP_DEFER_ACCEPT` to `wait`. Elsewhere than on Linux it does nothing.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn defer_accept(socket: &socket2::Socket, wait: Duration) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let seconds = libc::c_int::try_from(wait.as_secs()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `setsockopt` reads `size_of::<c_int>()` bytes at a pointer to a live
    // `c_int`, and `socket` keeps its descriptor open for the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&raw const seconds).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn defer_accept(_: &socket2::Socket, _: Duration) -> io::Result<()> {
    Ok(())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{SocketAddr, TcpListener, TcpStream};

    fn listener(wait: Duration) -> TcpListener {
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.bind(&addr.into()).unwrap();
        socket.listen(16).unwrap();
        defer_accept(&socket, wait).unwrap();
        socket.set_nonblocking(true).unwrap();
        socket.into()
    }

    /// Polls `accept` for `within`; whether a connection came.
    fn accepted_within(listener: &TcpListener, within: Duration) -> bool {
        let start = std::time::Instant::now();
        while start.elapsed() < within {
            match listener.accept() {
                Ok(_) => return true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
        false
    }

    #[test]
    fn a_connection_is_accepted_when_its_first_bytes_arrive() {
        let listener = listener(Duration::from_secs(30));
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert!(
            !accepted_within(&listener, Duration::from_millis(300)),
            "accepted before the client sent anything"
        );
        client.write_all(b"GET / HTTP/1.1\r\n").unwrap();
        assert!(accepted_within(&listener, Duration::from_secs(5)));
    }

    #[test]
    fn zero_accepts_at_once() {
        let listener = listener(Duration::ZERO);
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert!(accepted_within(&listener, Duration::from_secs(5)));
    }
}
