//! Agreement with the platforms' own normalization: `oracle/hash.py` runs the official
//! `facebook-business` SDK (Meta) and Google's / TikTok's documented rules (with the Python
//! libphonenumber) on thousands of generated ugly values; every line printed by
//! [`hash_lines`] (what `meridian hash` prints) must be the same.
//!
//! Seed and size: `MERIDIAN_ORACLE_SEED` (default fixed) and `MERIDIAN_ORACLE_COUNT`
//! (default 3000 per platform × field).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use meridian_destinations::cli::hash_lines;
use meridian_destinations::{Field, Platform};
use meridian_test_support::rng::Rng;

fn oracle_python() -> PathBuf {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("oracle/.venv/bin/python");
    assert!(
        python.is_file(),
        "the oracle's SDKs are not installed: run crates/destinations/oracle/setup.sh"
    );
    python
}

const PADDING: &[&str] = &[
    "", "", "", " ", "  ", "\t", ".", " .", "\u{0b}", "\u{a0}", "\u{3000}", "\u{1c}", "\0",
    "\u{2003}", "\u{200b}", "..",
];

fn pad(rng: &mut Rng, core: String) -> String {
    let left = *rng.pick(PADDING);
    let right = *rng.pick(PADDING);
    format!("{left}{core}{right}")
}

fn mixed_case(rng: &mut Rng, value: &str) -> String {
    match rng.below(4) {
        0 => value.to_uppercase(),
        1 => value
            .chars()
            .map(|c| {
                if rng.chance(0.5) {
                    c.to_uppercase().collect::<String>()
                } else {
                    c.to_string()
                }
            })
            .collect(),
        _ => value.to_owned(),
    }
}

const NAMES: &[&str] = &[
    "john",
    "Jane",
    "josé",
    "zoë",
    "łukasz",
    "ærøskøbing",
    "straße",
    "İstanbul",
    "ΣΟΦΙΑΣ",
    "o'brien",
    "anne-marie",
    "van der berg",
    "李",
    "mcdonald",
    "Ñandú",
    "Kelvin\u{212a}",
    "d'artagnan",
    "jean-luc",
    "123",
    "x",
    "émilie",
    "ÖZTÜRK",
    "São Paulo",
    "Île-de-France",
    "NEW YORK",
    "st. louis",
    "Zürich",
    "Baden-Württemberg",
    "CA",
    "ca.",
    "bayern",
];

const DOMAINS: &[&str] = &[
    "gmail.com",
    "GMail.com",
    "googlemail.com",
    "example.com",
    "exämple.de",
    "mail.co.uk",
    "Yahoo.FR",
    "qq.com",
    "gmail.com.br",
    "sub.gmail.com",
    "",
];

fn email(rng: &mut Rng) -> String {
    let mut local = String::new();
    for i in 0..rng.range(1, 4) {
        if i > 0 {
            local.push(*rng.pick(&['.', '_', '-', '.']));
        }
        local.push_str(rng.pick::<&str>(NAMES));
    }
    if rng.chance(0.3) {
        local.push('+');
        local.push_str(&rng.string(b"abcxyz019", 4));
    }
    if rng.chance(0.1) {
        local = format!("+{local}");
    }
    let core = match rng.below(20) {
        0 => local,
        1 => format!("{local}@"),
        2 => format!("@{}", rng.pick(DOMAINS)),
        3 => format!("{local}@{}@{}", rng.pick(DOMAINS), rng.pick(DOMAINS)),
        _ => format!("{local}@{}", rng.pick(DOMAINS)),
    };
    let core = mixed_case(rng, &core);
    pad(rng, core)
}

fn phone(rng: &mut Rng) -> String {
    let free_len = rng.range(3, 16) as usize;
    let national = [
        format!("030 {}", rng.digits(7)),
        format!("0151 {}", rng.digits(8)),
        format!(
            "06 {} {} {} {}",
            rng.digits(2),
            rng.digits(2),
            rng.digits(2),
            rng.digits(2)
        ),
        format!("07700 {}", rng.digits(6)),
        format!("(650) {}-{}", rng.range(200, 999), rng.digits(4)),
        format!("650.{}.{}", rng.range(200, 999), rng.digits(4)),
        format!("(11) 9{}-{}", rng.digits(4), rng.digits(4)),
        format!("138 {} {}", rng.digits(4), rng.digits(4)),
        rng.digits(free_len),
    ];
    let number = rng.pick(&national).clone();
    let cc = *rng.pick(&["49", "33", "44", "1", "55", "86"]);
    let core = match rng.below(6) {
        0 => format!("+{cc} {}", number.trim_start_matches('0')),
        1 => format!("00{cc} {}", number.trim_start_matches('0')),
        2 => format!("+{cc} ({}", number),
        3 => format!("{number} ext. 12"),
        _ => number,
    };
    pad(rng, core)
}

fn place(rng: &mut Rng) -> String {
    let core = match rng.below(5) {
        0 => format!("{} {}", rng.pick(NAMES), rng.pick(NAMES)),
        1 => format!("{}{}", rng.pick(NAMES), rng.digits(2)),
        _ => rng.pick(NAMES).to_string(),
    };
    let core = mixed_case(rng, &core);
    pad(rng, core)
}

fn zip(rng: &mut Rng) -> String {
    let core = match rng.below(6) {
        0 => format!("{}-{}", rng.digits(5), rng.digits(4)),
        1 => format!("SW1A {}AA", rng.digits(1)),
        2 => format!("{}-{}", rng.digits(5), rng.digits(3)),
        3 => format!("{} {}", rng.digits(3), rng.digits(2)),
        4 => "-".to_owned(),
        _ => rng.digits(5),
    };
    let core = mixed_case(rng, &core);
    pad(rng, core)
}

fn country(rng: &mut Rng) -> String {
    let core = rng
        .pick(&[
            "de",
            "FR",
            "gb",
            "U.S.",
            "usa",
            "Deutschland",
            "cn",
            "br",
            "d",
            "1",
            "ç",
            "United States",
            "u s",
        ])
        .to_string();
    pad(rng, core)
}

fn values(field: Field, seed: u64, count: usize) -> Vec<String> {
    let mut rng = Rng::new(seed ^ field as u64);
    (0..count)
        .map(|_| match field {
            Field::Email => email(&mut rng),
            Field::Phone => phone(&mut rng),
            Field::FirstName | Field::LastName | Field::City | Field::State => place(&mut rng),
            Field::Zip => zip(&mut rng),
            Field::Country => country(&mut rng),
        })
        .collect()
}

fn oracle(
    platform: Platform,
    field: Field,
    region: Option<&str>,
    values: &[String],
) -> Vec<String> {
    let mut child = Command::new(oracle_python())
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("oracle/hash.py"))
        .args([platform.as_str(), field.as_str(), region.unwrap_or("")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = String::new();
    for v in values {
        input.push_str(&serde_json::to_string(v).unwrap());
        input.push('\n');
    }
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()).unwrap());
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(
        output.status.success(),
        "oracle failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn ours(platform: Platform, field: Field, region: Option<&str>, values: &[String]) -> Vec<String> {
    let input = values.join("\n");
    let mut out = Vec::new();
    hash_lines(platform, field, region, input.as_bytes(), &mut out).unwrap();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn compare(platform: Platform, field: Field, region: Option<&str>) {
    let seed: u64 = std::env::var("MERIDIAN_ORACLE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_125);
    let count: usize = std::env::var("MERIDIAN_ORACLE_COUNT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000);
    let values = values(field, seed, count);
    let expected = oracle(platform, field, region, &values);
    let actual = ours(platform, field, region, &values);
    assert_eq!(
        expected.len(),
        values.len(),
        "oracle printed a line per value"
    );
    assert_eq!(
        actual.len(),
        values.len(),
        "hash_lines printed a line per value"
    );
    let mismatches: Vec<String> = values
        .iter()
        .zip(expected.iter().zip(&actual))
        .filter(|(_, (e, a))| e != a)
        .map(|(v, (e, a))| format!("{v:?}: oracle {e:?}, ours {a:?}"))
        .collect();
    assert!(
        mismatches.is_empty(),
        "{platform} {field} (region {region:?}) differs from the oracle on {} of {} values, e.g.\n{}",
        mismatches.len(),
        values.len(),
        mismatches[..mismatches.len().min(12)].join("\n")
    );
    // The generator must exercise both outcomes where the field can be rejected.
    let rejected = expected.iter().filter(|h| h.is_empty()).count();
    assert!(
        rejected < values.len(),
        "{platform} {field}: everything was rejected"
    );
}

#[test]
fn meta_equals_the_facebook_business_sdk() {
    for field in Field::ALL {
        compare(Platform::Meta, field, None);
    }
    compare(Platform::Meta, Field::Phone, Some("DE"));
    compare(Platform::Meta, Field::Phone, Some("us"));
}

#[test]
fn google_equals_the_documented_rules() {
    for field in Field::ALL {
        compare(Platform::Google, field, None);
    }
    compare(Platform::Google, Field::Phone, Some("FR"));
    compare(Platform::Google, Field::Phone, Some("US"));
}

#[test]
fn tiktok_equals_the_customer_file_rules() {
    compare(Platform::TikTok, Field::Email, None);
    compare(Platform::TikTok, Field::Phone, None);
    compare(Platform::TikTok, Field::Phone, Some("GB"));
    compare(Platform::TikTok, Field::Phone, Some("CN"));
}
