//! Round trips a sync waits for, pinned with scripted servers: a script
//! that reads several commands before it answers any deadlocks a client
//! that waits for a reply in between (the client's 3 s time-out, or the
//! script's mismatch, fails the test). At 50 ms RTT each round trip saved
//! is 50 ms of every run.

use crate::support;

use support::popsync::Popsync;
use support::scripted::{ScriptedServer, Step, expect, line};

const PASSWORD: &str = "s3cret-pass";

fn account(server: &ScriptedServer, p: &Popsync, extra: &str) -> String {
    format!(
        "[account.a]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nallow_insecure_auth = true\nauth = \"user\"\nusername = \"u\"\npassword = \"{PASSWORD}\"\ntimeout = \"3s\"\nconnect_timeout = \"3s\"\nmaildir = {:?}\n{extra}\n",
        server.port(),
        p.path("Mail")
    )
}

fn greeting_and_capa(pipelining: bool) -> Vec<Step> {
    let mut steps = vec![
        line("+OK ready"),
        expect("CAPA"),
        line("+OK"),
        line("USER"),
        line("UIDL"),
    ];
    if pipelining {
        steps.push(line("PIPELINING"));
    }
    steps.push(line("."));
    steps
}

fn stored(p: &Popsync) -> usize {
    support::popsync::maildir_messages(&p.path("Mail")).len()
}

#[test]
fn login_and_listing_go_out_in_one_write_where_pipelining_is_offered() {
    let mut steps = greeting_and_capa(true);
    // Every command before the first reply: one round trip, not three.
    steps.extend(["USER u", "PASS *", "STAT", "UIDL", "LIST"].map(expect));
    steps.extend([
        line("+OK"),
        line("+OK logged in"),
        line("+OK 0 0"),
        line("+OK"),
        line("."),
        line("+OK"),
        line("."),
    ]);
    steps.extend([expect("QUIT"), line("+OK bye")]);
    let server = ScriptedServer::start(steps);
    let p = Popsync::new("");
    p.write_config(&account(&server, &p, ""));
    let run = p.run(&["sync"]);
    run.expect_code(0);
    assert!(run.stdout().contains("a: 0 new"), "{}", run.stdout());
    server.finish_blocking().unwrap();
}

#[test]
fn a_refused_pipelined_login_is_an_auth_failure_and_the_listing_replies_are_ignored() {
    let mut steps = greeting_and_capa(true);
    steps.extend(["USER u", "PASS *", "STAT", "UIDL", "LIST"].map(expect));
    steps.extend([
        line("+OK"),
        line("-ERR [AUTH] invalid login"),
        line("-ERR not logged in"),
        line("-ERR not logged in"),
        line("-ERR not logged in"),
    ]);
    let server = ScriptedServer::start(steps);
    let p = Popsync::new("");
    p.write_config(&account(&server, &p, ""));
    let mut cmd = p.command(&["--trace", "-vv", "sync"]);
    cmd.env("POPSYNC_LOG", "trace");
    let run = support::popsync::Run(cmd.output().unwrap());
    run.expect_code(4);
    let all = format!("{}{}", run.stdout(), run.stderr());
    assert!(all.contains("invalid login"), "{all}");
    assert!(!all.contains(PASSWORD), "the password leaked: {all}");
    assert_eq!(stored(&p), 0);
    let _ = server.finish_blocking();
}
