//! RFC 6856: a server offering `UTF8` gets the command before login, so a
//! Courier-like server serves the original message, not its wrapper.

use crate::support;

use support::fault_case::Case;
use support::fault_server::{FaultMessage, Faults, UNICODE_WRAPPER};

fn eight_bit_mailbox() -> Vec<FaultMessage> {
    vec![
        FaultMessage {
            uid: "raw-8bit".into(),
            body: "From: Jörg Müller <j@example.org>\nSubject: Grüße aus Köln\n\nHallo\n"
                .as_bytes()
                .to_vec(),
        },
        FaultMessage {
            uid: "ascii".into(),
            body: b"From: a@example.org\nSubject: plain\n\nbody\n".to_vec(),
        },
    ]
}

fn courier_like() -> Faults {
    Faults {
        utf8_wrapper: true,
        ..Faults::default()
    }
}

#[test]
fn utf8_is_sent_before_login_and_the_original_is_stored() {
    let mailbox = eight_bit_mailbox();
    let c = Case::new(mailbox.clone(), courier_like(), "");
    c.sync().expect_code(0);
    let mut stored = c.stored();
    stored.sort();
    let mut want: Vec<Vec<u8>> = mailbox.iter().map(|m| m.body.clone()).collect();
    want.sort();
    assert_eq!(stored, want, "the originals, byte for byte");
    let sent = c.server.transcript();
    let utf8 = sent.iter().position(|l| l == "UTF8").expect("UTF8 sent");
    let user = sent.iter().position(|l| l.starts_with("USER")).unwrap();
    assert!(utf8 < user, "UTF8 before login: {sent:?}");
}

#[test]
fn utf8_false_turns_it_off() {
    let c = Case::new(eight_bit_mailbox(), courier_like(), "utf8 = false");
    c.sync().expect_code(0);
    assert!(!c.server.transcript().iter().any(|l| l == "UTF8"));
    // What such a server then serves: the wrapper, not the message.
    assert!(c.stored().iter().any(|s| s == UNICODE_WRAPPER));
}

#[test]
fn a_server_without_utf8_gets_no_utf8_command() {
    let c = Case::new(eight_bit_mailbox(), Faults::default(), "");
    c.sync().expect_code(0);
    assert!(!c.server.transcript().iter().any(|l| l == "UTF8"));
    assert_eq!(c.stored().len(), 2);
}
