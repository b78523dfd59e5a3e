//! A delay line on loopback: this kernel has no `netem` qdisc, so the bench
//! adds latency in user space. Every chunk read from one side is written to
//! the other a fixed time later, in each direction; reading never waits for
//! writing, so bytes keep flowing at full rate, as on a long fat link.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub struct DelayProxy {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl DelayProxy {
    /// Listens on a free loopback port; each connection is relayed to
    /// `upstream` with `one_way` added in each direction (RTT = 2 × one_way).
    pub fn start(upstream: SocketAddr, one_way: Duration) -> DelayProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind delay proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name("delay-proxy".into())
            .spawn(move || {
                for client in listener.incoming() {
                    if stopped.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    match TcpStream::connect(upstream) {
                        Ok(server) => relay(client, server, one_way),
                        Err(e) => eprintln!("!! delay proxy: connect {upstream}: {e}"),
                    }
                }
            })
            .expect("spawn delay proxy");
        DelayProxy { addr, stop }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

fn relay(client: TcpStream, server: TcpStream, one_way: Duration) {
    for s in [&client, &server] {
        let _ = s.set_nodelay(true);
    }
    let (c2, s2) = (
        client.try_clone().expect("clone"),
        server.try_clone().expect("clone"),
    );
    delay_line(client, server, one_way);
    delay_line(s2, c2, one_way);
}

/// `from` -> `to`, each chunk `delay` late; an end of stream is passed on
/// (as a half close) just as late.
fn delay_line(from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (tx, rx) = mpsc::channel::<(Instant, Option<Vec<u8>>)>();
    let mut reader = from.try_clone().expect("clone");
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = reader.read(&mut buf).unwrap_or(0);
            let due = Instant::now() + delay;
            let chunk = (n > 0).then(|| buf[..n].to_vec());
            let end = chunk.is_none();
            if tx.send((due, chunk)).is_err() || end {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        for (due, chunk) in rx {
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let Some(chunk) = chunk else {
                let _ = to.shutdown(Shutdown::Write);
                break;
            };
            if to.write_all(&chunk).is_err() {
                // The receiver is gone: stop the sender too.
                let _ = from.shutdown(Shutdown::Both);
                break;
            }
        }
    });
}
