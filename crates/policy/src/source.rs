//! The files that make up a policy set, from a directory or embedded in the binary.

use std::path::Path;

use crate::error::PolicyLoadError;

/// One policy file: its path relative to the policy directory and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SourceFile {
    pub(crate) path: String,
    pub(crate) text: String,
}

impl SourceFile {
    /// 1-based line of a byte offset into the text.
    pub(crate) fn line_of(&self, offset: usize) -> usize {
        line_of(&self.text, offset)
    }
}

/// 1-based line of a byte offset into `text` (clamped to the end).
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// The single-file parameter files, relative to the policy directory.
pub(crate) const SCHEMA: &str = "schema.cedarschema";
pub(crate) const PURPOSES: &str = "taxonomy/purposes.toml";
pub(crate) const CATEGORIES: &str = "taxonomy/data_categories.toml";
pub(crate) const TCF: &str = "taxonomy/tcf.toml";
pub(crate) const GPP: &str = "taxonomy/gpp.toml";
pub(crate) const JURISDICTIONS: &str = "jurisdictions.toml";
pub(crate) const DESTINATIONS: &str = "destinations.toml";
pub(crate) const FIELDS: &str = "fields.toml";
pub(crate) const OBLIGATIONS: &str = "obligations.toml";

/// Files that must be present (besides at least one `regimes/*.toml` and `rules/*.cedar`).
pub(crate) const REQUIRED: [&str; 9] = [
    SCHEMA,
    PURPOSES,
    CATEGORIES,
    TCF,
    GPP,
    JURISDICTIONS,
    DESTINATIONS,
    FIELDS,
    OBLIGATIONS,
];

macro_rules! embedded {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../policies/", $path)))),*]
    };
}

/// `policies/` as it was when the binary was built. A test checks that this
/// list matches the directory, so a new file cannot be forgotten here.
pub(crate) const BUILTIN: &[(&str, &str)] = embedded![
    "schema.cedarschema",
    "taxonomy/purposes.toml",
    "taxonomy/data_categories.toml",
    "taxonomy/tcf.toml",
    "taxonomy/gpp.toml",
    "jurisdictions.toml",
    "destinations.toml",
    "fields.toml",
    "obligations.toml",
    "regimes/gdpr.toml",
    "regimes/uk_gdpr.toml",
    "regimes/ccpa.toml",
    "regimes/pipl.toml",
    "regimes/lgpd.toml",
    "rules/gdpr.cedar",
    "rules/uk_gdpr.cedar",
    "rules/ccpa.cedar",
    "rules/pipl.cedar",
    "rules/lgpd.cedar",
];

pub(crate) fn builtin_files() -> Vec<SourceFile> {
    BUILTIN
        .iter()
        .map(|(path, text)| SourceFile {
            path: (*path).to_owned(),
            text: (*text).to_owned(),
        })
        .collect()
}

/// Whether a path (relative, `/`-separated) is a file the engine reads.
pub(crate) fn is_policy_file(path: &str) -> bool {
    REQUIRED.contains(&path)
        || (path.starts_with("regimes/") && path.ends_with(".toml") && !path[8..].contains('/'))
        || (path.starts_with("rules/") && path.ends_with(".cedar") && !path[6..].contains('/'))
}

/// Reads every policy file under `dir` (other files, such as README.md, are ignored).
pub(crate) fn read_dir(dir: &Path) -> Result<Vec<SourceFile>, PolicyLoadError> {
    let mut files = Vec::new();
    for sub in ["", "taxonomy", "regimes", "rules"] {
        let folder = if sub.is_empty() {
            dir.to_path_buf()
        } else {
            dir.join(sub)
        };
        let entries = match std::fs::read_dir(&folder) {
            Ok(entries) => entries,
            Err(e) if sub.is_empty() => {
                return Err(PolicyLoadError::Io {
                    file: dir.display().to_string(),
                    line: 1,
                    reason: e.to_string(),
                });
            }
            Err(_) => continue,
        };
        for entry in entries {
            let entry = entry.map_err(|e| PolicyLoadError::Io {
                file: folder.display().to_string(),
                line: 1,
                reason: e.to_string(),
            })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if sub.is_empty() {
                name
            } else {
                format!("{sub}/{name}")
            };
            if !is_policy_file(&rel) {
                continue;
            }
            let text = std::fs::read_to_string(entry.path()).map_err(|e| PolicyLoadError::Io {
                file: rel.clone(),
                line: 1,
                reason: e.to_string(),
            })?;
            files.push(SourceFile { path: rel, text });
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}
