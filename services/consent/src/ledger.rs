//! The consent ledger's canonical encoding and chain checks (pure: no I/O).
//!
//! # Canonical encoding
//! An entry's hash is SHA-256 over
//! `"meridian.consent.ledger.v1\0" ‖ lp(workspace) ‖ u64be(sequence) ‖ prev_hash(32) ‖
//! lp(entry_id) ‖ lp(subject_ref) ‖ i64be(recorded_at µs since the epoch, UTC) ‖ lp(body)`,
//! where `lp(x)` is `u32be(len(x)) ‖ x` and `body` is the entry content as canonical JSON
//! ([`EntryBody`], fields in declaration order, no whitespace). The header fields live in
//! their own columns (so they can be indexed) and are covered by the hash; the body holds
//! the rest of the ISO/IEC TS 27560 / Kantara record. The first entry's `prev_hash` is 32
//! zero bytes.
//!
//! # Signatures
//! Appends are batched (one RecordConsent, or one batch of a bulk append); the **last entry
//! of every batch** carries an Ed25519 signature over its hash by the workspace key. Through
//! the chain that signature covers every earlier entry, which is what lets `verify` check
//! hundreds of thousands of entries per second (a signature check per entry would cap it
//! near 20k/s). Entries inside a batch have no signature of their own. The ledger must end
//! on a signed entry: an unsigned tail means entries were appended without the key.

use chrono::{DateTime, Utc};
use meridian_vault::{LedgerSignature, SigningPublicKey};
use ring::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};

/// `schema_version` of entries written by this build.
pub const SCHEMA_VERSION: &str = "meridian.consent-entry/1";
const DOMAIN: &[u8] = b"meridian.consent.ledger.v1\0";

/// A 32-byte SHA-256 value.
pub type Hash = [u8; 32];
/// The `prev_hash` of the first entry.
pub const GENESIS: Hash = [0u8; 32];

/// A consent decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Given,
    Refused,
    Withdrawn,
    Expired,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Given => "given",
            Decision::Refused => "refused",
            Decision::Withdrawn => "withdrawn",
            Decision::Expired => "expired",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "given" => Decision::Given,
            "refused" => Decision::Refused,
            "withdrawn" => Decision::Withdrawn,
            "expired" => Decision::Expired,
            _ => return None,
        })
    }
}

/// GDPR Art. 6(1) lawful bases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LawfulBasis {
    Consent,
    Contract,
    LegalObligation,
    VitalInterests,
    PublicTask,
    LegitimateInterests,
}

impl LawfulBasis {
    pub fn as_str(self) -> &'static str {
        match self {
            LawfulBasis::Consent => "consent",
            LawfulBasis::Contract => "contract",
            LawfulBasis::LegalObligation => "legal_obligation",
            LawfulBasis::VitalInterests => "vital_interests",
            LawfulBasis::PublicTask => "public_task",
            LawfulBasis::LegitimateInterests => "legitimate_interests",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "consent" => LawfulBasis::Consent,
            "contract" => LawfulBasis::Contract,
            "legal_obligation" => LawfulBasis::LegalObligation,
            "vital_interests" => LawfulBasis::VitalInterests,
            "public_task" => LawfulBasis::PublicTask,
            "legitimate_interests" => LawfulBasis::LegitimateInterests,
            _ => return None,
        })
    }
}

/// Where a decision came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Explicit,
    Tcf,
    Gpp,
    Gpc,
    /// The regime's validity period ended (an EXPIRED entry written by the expiry sweep).
    ValidityPeriod,
}

/// Who made the choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Actor {
    Subject,
    Guardian,
    Agent,
    /// The controller (expiry).
    Controller,
}

/// The privacy notice shown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    pub url: String,
    pub version: String,
    pub hash: String,
    pub language: String,
}

/// One purpose's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurposeDecision {
    pub purpose: String,
    pub decision: Decision,
    pub lawful_basis: LawfulBasis,
}

/// The content of an entry (everything but the chained header), canonical JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryBody {
    pub schema_version: String,
    pub controller: String,
    pub notice: Notice,
    pub purposes: Vec<PurposeDecision>,
    pub jurisdiction: String,
    pub source: Source,
    pub raw_signal: String,
    pub collection_point: String,
    pub actor: Actor,
    pub policy_version: String,
    /// The subject's IANA time zone.
    pub time_zone: String,
}

impl EntryBody {
    /// The canonical JSON text.
    pub fn to_canonical(&self) -> String {
        // A struct of strings, enums and vectors: serialization cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
    pub fn from_canonical(text: &str) -> Option<Self> {
        serde_json::from_str(text).ok()
    }
}

/// An entry to append (the store gives it a sequence, chains and signs it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    pub entry_id: String,
    pub subject_ref: String,
    /// µs since the epoch.
    pub recorded_at: i64,
    pub body: String,
}

/// An entry as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    pub sequence: u64,
    pub entry_id: String,
    pub subject_ref: String,
    pub recorded_at: i64,
    pub body: String,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
    pub signature: Option<LedgerSignature>,
}

impl StoredEntry {
    pub fn recorded_at_utc(&self) -> DateTime<Utc> {
        from_micros(self.recorded_at)
    }

    /// The entry as an [`EntryView`] (borrowed).
    pub fn view(&self) -> EntryView<'_> {
        EntryView {
            sequence: self.sequence,
            entry_id: self.entry_id.as_bytes(),
            subject_ref: self.subject_ref.as_bytes(),
            recorded_at: self.recorded_at,
            body: self.body.as_bytes(),
            prev_hash: &self.prev_hash,
            hash: &self.hash,
            signature: self.signature,
        }
    }
}

/// A stored entry borrowed from wherever it was read (a COPY row, a database row, an
/// [`EntryChunk`]): what verification reads. Text columns stay bytes, since the hash is over
/// their bytes; they are decoded only to name a bad entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryView<'a> {
    pub sequence: u64,
    pub entry_id: &'a [u8],
    pub subject_ref: &'a [u8],
    pub recorded_at: i64,
    pub body: &'a [u8],
    pub prev_hash: &'a [u8],
    pub hash: &'a [u8],
    pub signature: Option<LedgerSignature>,
}

impl EntryView<'_> {
    fn entry_id_text(&self) -> String {
        String::from_utf8_lossy(self.entry_id).into_owned()
    }
}

/// Where one entry's variable-length fields lie in [`EntryChunk::bytes`]: consecutively,
/// entry id, subject ref, body, prev hash, hash.
#[derive(Debug, Clone, Copy)]
struct PackedEntry {
    sequence: u64,
    recorded_at: i64,
    start: usize,
    lens: [u32; 5],
    signature: Option<LedgerSignature>,
}

/// A run of stored entries in sequence order, packed into one buffer: a store streams a
/// ledger to verification as chunks of these, so reading a million entries allocates a few
/// hundred buffers rather than five strings per entry.
#[derive(Debug, Default)]
pub struct EntryChunk {
    bytes: Vec<u8>,
    entries: Vec<PackedEntry>,
}

impl EntryChunk {
    /// An empty chunk with room for about `bytes` bytes of fields and `entries` entries.
    pub fn with_capacity(bytes: usize, entries: usize) -> Self {
        EntryChunk {
            bytes: Vec::with_capacity(bytes),
            entries: Vec::with_capacity(entries),
        }
    }

    /// Appends a copy of `e`. A field longer than 4 GiB cannot be stored by either backend.
    pub fn push(&mut self, e: &EntryView<'_>) {
        let start = self.bytes.len();
        let fields = [e.entry_id, e.subject_ref, e.body, e.prev_hash, e.hash];
        let mut lens = [0u32; 5];
        for (len, field) in lens.iter_mut().zip(fields) {
            *len = u32::try_from(field.len()).unwrap_or(u32::MAX);
            self.bytes.extend_from_slice(field);
        }
        self.entries.push(PackedEntry {
            sequence: e.sequence,
            recorded_at: e.recorded_at,
            start,
            lens,
            signature: e.signature,
        });
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of packed fields.
    pub fn byte_len(&self) -> usize {
        self.bytes.len()
    }

    /// The entries, in the order pushed.
    pub fn iter(&self) -> impl Iterator<Item = EntryView<'_>> + '_ {
        let bytes = &self.bytes[..];
        self.entries.iter().map(move |p| {
            let mut at = p.start;
            let mut field = |len: u32| {
                let end = at + len as usize;
                let slice = &bytes[at..end];
                at = end;
                slice
            };
            let entry_id = field(p.lens[0]);
            let subject_ref = field(p.lens[1]);
            let body = field(p.lens[2]);
            let prev_hash = field(p.lens[3]);
            let hash = field(p.lens[4]);
            EntryView {
                sequence: p.sequence,
                entry_id,
                subject_ref,
                recorded_at: p.recorded_at,
                body,
                prev_hash,
                hash,
                signature: p.signature,
            }
        })
    }
}

/// µs since the epoch → instant (clamped to the representable range).
pub fn from_micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

fn lp(ctx: &mut Context, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    ctx.update(&len.to_be_bytes());
    ctx.update(bytes);
}

/// The hash of an entry (see the module docs for the encoding).
pub fn entry_hash(
    workspace: &str,
    sequence: u64,
    prev_hash: &[u8],
    entry_id: &str,
    subject_ref: &str,
    recorded_at: i64,
    body: &str,
) -> Hash {
    entry_hash_bytes(
        workspace.as_bytes(),
        sequence,
        prev_hash,
        entry_id.as_bytes(),
        subject_ref.as_bytes(),
        recorded_at,
        body.as_bytes(),
    )
}

/// [`entry_hash`] over the text fields' bytes (what is hashed: no UTF-8 check needed).
pub fn entry_hash_bytes(
    workspace: &[u8],
    sequence: u64,
    prev_hash: &[u8],
    entry_id: &[u8],
    subject_ref: &[u8],
    recorded_at: i64,
    body: &[u8],
) -> Hash {
    let mut ctx = Context::new(&SHA256);
    ctx.update(DOMAIN);
    lp(&mut ctx, workspace);
    ctx.update(&sequence.to_be_bytes());
    ctx.update(prev_hash);
    lp(&mut ctx, entry_id);
    lp(&mut ctx, subject_ref);
    ctx.update(&recorded_at.to_be_bytes());
    lp(&mut ctx, body);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The hash an entry's stored content gives (over its stored `prev_hash`): what
/// [`ChainVerifier`] compares with the stored `hash`.
pub fn content_hash(workspace: &str, e: &EntryView<'_>) -> Hash {
    entry_hash_bytes(
        workspace.as_bytes(),
        e.sequence,
        e.prev_hash,
        e.entry_id,
        e.subject_ref,
        e.recorded_at,
        e.body,
    )
}

/// Chains a batch after head `(sequence, hash)`: the entries with their sequence,
/// `prev_hash` and `hash` (unsigned; the caller signs the last one).
pub fn chain(workspace: &str, head: (u64, Hash), batch: Vec<NewEntry>) -> Vec<StoredEntry> {
    let (mut sequence, mut prev) = head;
    batch
        .into_iter()
        .map(|e| {
            sequence += 1;
            let hash = entry_hash(
                workspace,
                sequence,
                &prev,
                &e.entry_id,
                &e.subject_ref,
                e.recorded_at,
                &e.body,
            );
            let stored = StoredEntry {
                sequence,
                entry_id: e.entry_id,
                subject_ref: e.subject_ref,
                recorded_at: e.recorded_at,
                body: e.body,
                prev_hash: prev.to_vec(),
                hash: hash.to_vec(),
                signature: None,
            };
            prev = hash;
            stored
        })
        .collect()
}

/// The first entry that fails verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BadEntry {
    pub sequence: u64,
    /// Empty when the entry is missing altogether.
    pub entry_id: String,
    pub reason: String,
}

/// The outcome of verifying a workspace's ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub workspace: String,
    pub valid: bool,
    pub entries_checked: u64,
    pub first_bad: Option<BadEntry>,
    /// Hex of the workspace's Ed25519 public key.
    pub public_key_hex: String,
    pub key_version: u32,
    /// The last entry's sequence and hex hash (publish them to detect truncation later).
    pub head_sequence: u64,
    pub head_hash_hex: String,
}

/// Streaming chain check: feed entries in sequence order, then [`ChainVerifier::finish`].
pub struct ChainVerifier {
    workspace: String,
    public_key: SigningPublicKey,
    next_sequence: u64,
    prev: Hash,
    checked: u64,
    /// First entry not yet covered by a verified signature.
    unsigned_since: Option<(u64, String)>,
    /// The head `(sequence, hash)` recorded before the entries were read.
    head: Option<(u64, Vec<u8>)>,
    bad: Option<BadEntry>,
}

impl ChainVerifier {
    pub fn new(workspace: &str, public_key: SigningPublicKey) -> Self {
        ChainVerifier {
            workspace: workspace.to_owned(),
            public_key,
            next_sequence: 1,
            prev: GENESIS,
            checked: 0,
            unsigned_since: None,
            head: None,
            bad: None,
        }
    }

    /// The recorded head `(sequence, hash)`: the ledger must reach that sequence, and the
    /// entry there must carry that hash. Read it *before* the entries, so that entries
    /// appended while verifying are not mistaken for a mismatch (they come after it).
    pub fn expect_head(&mut self, head: Option<(u64, Vec<u8>)>) {
        self.head = head;
    }

    /// Whether a bad entry was found (stop feeding).
    pub fn failed(&self) -> bool {
        self.bad.is_some()
    }

    /// The next sequence expected.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    /// Entries checked so far.
    pub fn checked(&self) -> u64 {
        self.checked
    }

    fn fail(&mut self, sequence: u64, entry_id: String, reason: String) {
        if self.bad.is_none() {
            self.bad = Some(BadEntry {
                sequence,
                entry_id,
                reason,
            });
        }
    }

    /// Checks one entry; returns false once the ledger is known bad.
    pub fn push(&mut self, e: &StoredEntry) -> bool {
        self.push_view(&e.view())
    }

    /// Checks every entry of a chunk, in order; returns false once the ledger is known bad.
    pub fn push_chunk(&mut self, chunk: &EntryChunk) -> bool {
        chunk.iter().all(|e| self.push_view(&e))
    }

    /// Checks one entry: its place in the sequence, its link to the previous entry, its
    /// hash over its content, and its signature if it carries one.
    pub fn push_view(&mut self, e: &EntryView<'_>) -> bool {
        if self.bad.is_some() {
            return false;
        }
        if e.sequence != self.next_sequence {
            let reason = if e.sequence > self.next_sequence {
                format!(
                    "entries {}..{} are missing before this entry (deleted or renumbered)",
                    self.next_sequence,
                    e.sequence - 1
                )
            } else {
                format!("sequence {} repeats or goes backwards", e.sequence)
            };
            self.fail(e.sequence, e.entry_id_text(), reason);
            return false;
        }
        if e.prev_hash != self.prev {
            self.fail(
                e.sequence,
                e.entry_id_text(),
                "prev_hash does not match the previous entry's hash (an entry before it was removed, inserted or reordered)".into(),
            );
            return false;
        }
        let hash = content_hash(&self.workspace, e);
        if e.hash != hash {
            self.fail(
                e.sequence,
                e.entry_id_text(),
                "hash does not match the entry's content (edited)".into(),
            );
            return false;
        }
        if self.unsigned_since.is_none() {
            self.unsigned_since = Some((e.sequence, e.entry_id_text()));
        }
        if let Some(sig) = &e.signature {
            if meridian_vault::verify(&self.public_key, &hash, sig).is_err() {
                let (seq, id) = self
                    .unsigned_since
                    .take()
                    .unwrap_or_else(|| (e.sequence, e.entry_id_text()));
                let reason = if seq == e.sequence {
                    "signature does not verify with the workspace public key".to_owned()
                } else {
                    format!(
                        "signature of entry {} (sequence {}) does not verify: an entry in sequences {}..{} was forged or re-hashed",
                        e.entry_id_text(),
                        e.sequence,
                        seq,
                        e.sequence
                    )
                };
                self.fail(seq, id, reason);
                return false;
            }
            self.unsigned_since = None;
        }
        if let Some((head_seq, head_hash)) = &self.head
            && *head_seq == e.sequence
            && head_hash[..] != hash[..]
        {
            self.fail(
                e.sequence,
                e.entry_id_text(),
                "the entry's hash differs from the recorded head".into(),
            );
            return false;
        }
        self.prev = hash;
        self.next_sequence += 1;
        self.checked += 1;
        true
    }

    /// The report, once every entry was fed.
    pub fn finish(mut self) -> VerifyReport {
        if self.bad.is_none()
            && let Some((seq, id)) = self.unsigned_since.take()
        {
            self.fail(
                seq,
                id,
                "the ledger ends on unsigned entries from here: appended without the workspace key"
                    .into(),
            );
        }
        if self.bad.is_none()
            && let Some((head_seq, _)) = self.head
        {
            let last = self.next_sequence - 1;
            if head_seq > last {
                self.fail(
                    last + 1,
                    String::new(),
                    format!("entries {}..{head_seq} are missing at the end (the head records {head_seq})", last + 1),
                );
            }
        }
        VerifyReport {
            workspace: self.workspace,
            valid: self.bad.is_none(),
            entries_checked: self.checked,
            first_bad: self.bad,
            public_key_hex: self.public_key.to_hex(),
            key_version: self.public_key.key_version,
            head_sequence: self.next_sequence - 1,
            head_hash_hex: hex::encode(self.prev),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u32) -> NewEntry {
        NewEntry {
            entry_id: format!("e{i}"),
            subject_ref: "sr".into(),
            recorded_at: 1_700_000_000_000_000 + i64::from(i),
            body: format!("{{\"n\":{i}}}"),
        }
    }

    #[test]
    fn hash_covers_every_header_field() {
        let base = entry_hash("ws", 1, &GENESIS, "e", "s", 5, "{}");
        assert_ne!(base, entry_hash("wt", 1, &GENESIS, "e", "s", 5, "{}"));
        assert_ne!(base, entry_hash("ws", 2, &GENESIS, "e", "s", 5, "{}"));
        assert_ne!(base, entry_hash("ws", 1, &[1u8; 32], "e", "s", 5, "{}"));
        assert_ne!(base, entry_hash("ws", 1, &GENESIS, "f", "s", 5, "{}"));
        assert_ne!(base, entry_hash("ws", 1, &GENESIS, "e", "t", 5, "{}"));
        assert_ne!(base, entry_hash("ws", 1, &GENESIS, "e", "s", 6, "{}"));
        assert_ne!(base, entry_hash("ws", 1, &GENESIS, "e", "s", 5, "{ }"));
        // length prefixes: moving a byte between fields changes the hash
        assert_ne!(
            entry_hash("ws", 1, &GENESIS, "ab", "c", 5, "{}"),
            entry_hash("ws", 1, &GENESIS, "a", "bc", 5, "{}")
        );
    }

    #[test]
    fn chain_links_each_entry_to_the_previous() {
        let chained = chain("ws", (0, GENESIS), (1..=3).map(entry).collect());
        assert_eq!(chained[0].prev_hash, GENESIS.to_vec());
        assert_eq!(chained[1].prev_hash, chained[0].hash);
        assert_eq!(chained[2].sequence, 3);
        let more = chain(
            "ws",
            (3, chained[2].hash.clone().try_into().unwrap()),
            vec![entry(4)],
        );
        assert_eq!(more[0].sequence, 4);
        assert_eq!(more[0].prev_hash, chained[2].hash);
    }

    #[test]
    fn a_chunk_gives_back_the_entries_pushed() {
        let mut stored = chain("ws", (0, GENESIS), (1..=4).map(entry).collect());
        stored[3].signature = Some(LedgerSignature {
            key_version: 3,
            bytes: [7u8; 64],
        });
        stored[1].body = String::new();
        let mut chunk = EntryChunk::default();
        for e in &stored {
            chunk.push(&e.view());
        }
        assert_eq!(chunk.len(), 4);
        let views: Vec<EntryView<'_>> = chunk.iter().collect();
        let expected: Vec<EntryView<'_>> = stored.iter().map(StoredEntry::view).collect();
        assert_eq!(views, expected);
        assert_eq!(
            content_hash("ws", &views[2]),
            <Hash>::try_from(stored[2].hash.as_slice()).unwrap()
        );
    }

    #[test]
    fn canonical_body_round_trips() {
        let body = EntryBody {
            schema_version: SCHEMA_VERSION.into(),
            controller: "acme".into(),
            notice: Notice::default(),
            purposes: vec![PurposeDecision {
                purpose: "analytics".into(),
                decision: Decision::Given,
                lawful_basis: LawfulBasis::Consent,
            }],
            jurisdiction: "EU-FR".into(),
            source: Source::Explicit,
            raw_signal: String::new(),
            collection_point: "banner".into(),
            actor: Actor::Subject,
            policy_version: "v".into(),
            time_zone: "Europe/Paris".into(),
        };
        let text = body.to_canonical();
        assert!(!text.contains(' '));
        assert_eq!(EntryBody::from_canonical(&text), Some(body.clone()));
        assert_eq!(text, body.to_canonical());
    }
}
