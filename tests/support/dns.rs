//! A real DNS server on loopback for discovery tests: Debian's dnsmasq
//! (package dnsmasq-base, no service), serving only the records given.

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Dnsmasq {
    child: Child,
    pub addr: SocketAddr,
}

impl Dnsmasq {
    /// `srv`: (service name, target, port), e.g. ("_pop3s._tcp.example.test", "localhost", 995).
    pub fn start(srv: &[(&str, &str, u16)]) -> Dnsmasq {
        assert!(
            std::path::Path::new("/usr/sbin/dnsmasq").exists(),
            "dnsmasq is not installed: run scripts/test as root, or apt-get install dnsmasq-base"
        );
        // A free UDP port may be taken for TCP (dnsmasq binds both): then
        // dnsmasq exits, and another port is tried.
        for _ in 0..5 {
            if let Some(started) = Self::start_on_a_free_port(srv) {
                return started;
            }
        }
        panic!("dnsmasq did not start on any of 5 free ports");
    }

    fn start_on_a_free_port(srv: &[(&str, &str, u16)]) -> Option<Dnsmasq> {
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cmd = Command::new("/usr/sbin/dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--pid-file=",
            "--log-facility=-",
        ])
        .arg(format!("--port={port}"))
        // Names it has no records for: "no such name", at once (not REFUSED).
        .arg("--local=/test/");
        for (name, target, p) in srv {
            cmd.arg(format!("--srv-host={name},{target},{p},0,0"));
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dnsmasq");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        // Ready once the port is taken (generous: a loaded machine).
        let deadline = Instant::now() + Duration::from_secs(30);
        while UdpSocket::bind(addr).is_ok() {
            if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Dnsmasq { child, addr })
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
