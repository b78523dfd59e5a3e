//! TLS mode / port mix-ups are configuration errors, diagnosed in seconds
//! (exit 5) with the `tls` value and the port to use, and no credential sent.

use crate::support;

use std::net::{Ipv4Addr, TcpListener};
use std::time::{Duration, Instant};

use support::fault_server::{FaultServer, Faults, PASSWORD, mailbox};
use support::popsync::{Popsync, Run};

fn sync(p: &Popsync) -> (Run, Duration) {
    let started = Instant::now();
    let run = p.run(&["sync"]);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(!run.stderr().contains(PASSWORD));
    (run, took)
}

#[test]
fn implicit_tls_against_a_plain_text_port_says_to_use_starttls_or_995() {
    let server = FaultServer::start(mailbox(1), Faults::default());
    let p = Popsync::new("");
    let toml = server
        .account_toml("a", &format!("maildir = {:?}", p.path("Mail")))
        .replace("tls = \"none\"", "tls = \"implicit\"");
    p.write_config(&toml);
    let (run, _) = sync(&p);
    run.expect_code(5);
    let err = run.stderr();
    assert!(err.contains("answered in plain text"), "{err}");
    assert!(err.contains("set tls = \"starttls\""), "{err}");
    assert!(err.contains("port = 995"), "{err}");
    // Only the ClientHello went out: no command, no credential.
    let sent = server.transcript();
    assert!(
        !sent
            .iter()
            .any(|l| l.starts_with("USER") || l.starts_with("PASS") || l.starts_with("CAPA")),
        "{sent:?}"
    );
}

/// A TLS server on 127.0.0.N:995 (root may bind it; each test process its
/// own loopback address): it waits for a ClientHello, as TLS servers do.
fn silent_tls_port() -> (TcpListener, Ipv4Addr) {
    let start = 10 + (std::process::id() % 200) as u8;
    for n in 0..40u8 {
        let ip = Ipv4Addr::new(127, 0, 0, start.wrapping_add(n).max(10));
        match TcpListener::bind((ip, 995)) {
            Ok(l) => return (l, ip),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => panic!("bind {ip}:995 (the suite runs as root): {e}"),
        }
    }
    panic!("no free 127.0.0.N:995");
}

fn account(ip: &str, port: u16, tls: &str, p: &Popsync) -> String {
    format!(
        "[account.a]\nhost = \"{ip}\"\nport = {port}\ntls = \"{tls}\"\nusername = \"u\"\npassword = \"{PASSWORD}\"\nallow_insecure_auth = true\nmaildir = {:?}\n",
        p.path("Mail")
    )
}

#[test]
fn starttls_or_none_against_port_995_says_to_use_implicit() {
    let (listener, ip) = silent_tls_port();
    // Accepts and holds connections open without a byte, like a TLS server.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming().flatten() {
            held.push(c);
        }
    });
    for tls in ["starttls", "none"] {
        let p = Popsync::new("");
        p.write_config(&account(&ip.to_string(), 995, tls, &p));
        let (run, took) = sync(&p);
        run.expect_code(5);
        let err = run.stderr();
        assert!(err.contains("implicit-TLS port"), "{tls}: {err}");
        assert!(
            err.contains("set tls = \"implicit\" for port 995"),
            "{tls}: {err}"
        );
        assert!(
            err.contains(&format!("keep tls = \"{tls}\" and set port = 110")),
            "{err}"
        );
        assert!(
            took >= Duration::from_secs(3),
            "waited for a greeting first"
        );
    }
}

#[test]
fn a_tls_record_instead_of_a_greeting_is_an_implicit_tls_port() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::Write;
        let mut held = Vec::new();
        for mut c in listener.incoming().flatten() {
            // A TLS alert record (fatal, protocol_version).
            let _ = c.write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46]);
            held.push(c);
        }
    });
    let p = Popsync::new("");
    p.write_config(&account("127.0.0.1", port, "starttls", &p));
    let (run, took) = sync(&p);
    run.expect_code(5);
    let err = run.stderr();
    assert!(err.contains("answered with a TLS record"), "{err}");
    assert!(
        err.contains(&format!("set tls = \"implicit\" for port {port}")),
        "{err}"
    );
    assert!(took < Duration::from_secs(5), "no waiting: {took:?}");
}

/// Silence on another port is not proof (a slow server?): the read timeout
/// applies and the run is retried later (exit 6), but the message already
/// names the likely mistake.
#[test]
fn silence_on_another_port_times_out_with_the_hint() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming().flatten() {
            held.push(c);
        }
    });
    let p = Popsync::new("");
    p.write_config(&format!(
        "{}timeout = \"2s\"\n",
        account("127.0.0.1", port, "starttls", &p)
    ));
    let (run, _) = sync(&p);
    run.expect_code(6);
    let err = run.stderr();
    assert!(err.contains("no POP3 greeting"), "{err}");
    assert!(err.contains("set tls = \"implicit\""), "{err}");
}
