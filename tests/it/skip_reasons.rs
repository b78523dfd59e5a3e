//! `status` counts messages left on the server by the kind of reason the
//! state recorded, not by the reason's text.

use crate::support;

use support::fault_case::Case;
use support::fault_server::{FaultMessage, Faults};

fn message(uid: &str, body: String) -> FaultMessage {
    FaultMessage {
        uid: uid.into(),
        body: body.into_bytes(),
    }
}

/// Two messages over `max_size` (of different sizes, so their reasons'
/// texts differ) and one the server truncates with an unstuffed lone dot.
#[test]
fn status_groups_skips_by_reason() {
    let mb = vec![
        message("uid-1", "Subject: small\n\nhello\n".into()),
        message("uid-2", format!("Subject: big\n\n{}\n", "x".repeat(3000))),
        message(
            "uid-3",
            format!("Subject: bigger\n\n{}\n", "y".repeat(5000)),
        ),
        message("uid-4", "Subject: lone dot\n\nbefore\n.\nafter\n".into()),
        message("uid-5", "Subject: also small\n\nbye\n".into()),
    ];
    let faults = Faults {
        no_stuffing: true,
        ..Faults::default()
    };
    let c = Case::new(mb, faults, "max_size = \"2K\"");
    // The first run stops at the desync; the second fetches the rest and
    // tries the truncated message last, which the server truncates again.
    c.sync();
    c.sync();
    c.assert_nothing_lost();
    assert_eq!(c.stored().len(), 2, "the two small messages");

    let run = c.popsync.run(&["status", "--json"]);
    run.expect_code(0);
    let v: serde_json::Value = serde_json::from_str(&run.stdout()).unwrap();
    let a = &v["accounts"][0];
    assert_eq!(
        a["skipped_reasons"],
        serde_json::json!([["too_large", 2], ["desynced", 1]]),
        "{a}"
    );
    assert_eq!(a["skipped_too_large"], 2, "{a}");
    assert_eq!(a["skipped_other"], 1, "{a}");

    let run = c.popsync.run(&["status"]);
    run.expect_code(0);
    let out = run.stdout();
    assert!(out.contains("3 (2 too large, 1 truncated)"), "{out}");

    let run = c.popsync.run(&["ls", "acct"]);
    let out = format!("{}{}", run.stdout(), run.stderr());
    assert!(
        out.contains("larger than max_size (5"),
        "ls shows each message's own reason:\n{out}"
    );
}
