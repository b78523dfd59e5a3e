//! Every example config in examples/ must parse: users copy them.

use popsync::config::Config;

#[test]
fn example_configs_parse() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/config");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let config =
                Config::parse(&text, &path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            for account in &config.accounts {
                account.target().unwrap();
            }
            seen += 1;
        }
    }
    assert!(
        seen >= 7,
        "expected the maildir, mbox, mda and four daemon examples"
    );
}
