//! Decodes consent strings, one per line on standard input (or the
//! arguments), and prints one JSON line each: the decoded fields, or
//! `{"error": "..."}`. What `meridian consent decode --json` prints, in
//! miniature.
//!
//! `cargo run -p meridian-consent-signals --example decode -- STRING`

use std::io::BufRead;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let inputs: Vec<String> = if args.is_empty() {
        std::io::stdin()
            .lock()
            .lines()
            .map_while(Result::ok)
            .collect()
    } else {
        args
    };
    for input in inputs {
        let out = match meridian_consent_signals::decode(&input) {
            Ok(signal) => signal.to_json(),
            Err(err) => serde_json::json!({ "error": err.to_string() }),
        };
        println!("{out}");
    }
}
