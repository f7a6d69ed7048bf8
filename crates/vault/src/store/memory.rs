//! In-memory key store: for benchmarks and unit tests only (nothing survives the process).
//! It accepts any workspace id.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{
    ForgetOutcome, KeyStore, StoredSubjectKey, StoredWorkspaceKey, SubjectKeyRow, SubjectKeyState,
    WorkspaceKeyPurpose, WorkspaceKeyRow,
};
use crate::error::StoreError;
use crate::kek::{BoxFuture, KekVersion, WrappedKey};

#[derive(Default)]
struct State {
    subjects: BTreeMap<(String, String), Option<StoredSubjectKey>>,
    workspaces: BTreeMap<(String, WorkspaceKeyPurpose, u32), StoredWorkspaceKey>,
    identifiers: BTreeMap<(String, [u8; 32]), String>,
}

/// Key store in process memory (benchmarks, unit tests).
#[derive(Default)]
pub struct MemoryKeyStore {
    state: Mutex<State>,
}

impl MemoryKeyStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn subject_state(state: &State, workspace: &str, subject: &str) -> SubjectKeyState {
        match state
            .subjects
            .get(&(workspace.to_owned(), subject.to_owned()))
        {
            None => SubjectKeyState::Absent,
            Some(None) => SubjectKeyState::Forgotten,
            Some(Some(key)) => SubjectKeyState::Active(key.clone()),
        }
    }

    fn latest(
        state: &State,
        workspace: &str,
        purpose: WorkspaceKeyPurpose,
    ) -> Option<StoredWorkspaceKey> {
        state
            .workspaces
            .range((workspace.to_owned(), purpose, 0)..=(workspace.to_owned(), purpose, u32::MAX))
            .next_back()
            .map(|(_, k)| k.clone())
    }
}

impl KeyStore for MemoryKeyStore {
    fn subject_key<'a>(
        &'a self,
        workspace: &'a str,
        subject: &'a str,
    ) -> BoxFuture<'a, Result<SubjectKeyState, StoreError>> {
        Box::pin(async move { Ok(Self::subject_state(&self.lock(), workspace, subject)) })
    }

    fn insert_subject_key<'a>(
        &'a self,
        workspace: &'a str,
        subject: &'a str,
        key: &'a StoredSubjectKey,
    ) -> BoxFuture<'a, Result<SubjectKeyState, StoreError>> {
        Box::pin(async move {
            let mut state = self.lock();
            state
                .subjects
                .entry((workspace.to_owned(), subject.to_owned()))
                .or_insert_with(|| Some(key.clone()));
            Ok(Self::subject_state(&state, workspace, subject))
        })
    }

    fn subject_keys<'a>(
        &'a self,
        workspace: &'a str,
        subjects: &'a [&'a str],
    ) -> BoxFuture<'a, Result<Vec<(String, SubjectKeyState)>, StoreError>> {
        Box::pin(async move {
            let state = self.lock();
            Ok(subjects
                .iter()
                .map(|s| ((*s).to_owned(), Self::subject_state(&state, workspace, s)))
                .filter(|(_, st)| *st != SubjectKeyState::Absent)
                .collect())
        })
    }

    fn insert_subject_keys<'a>(
        &'a self,
        workspace: &'a str,
        keys: &'a [(&'a str, StoredSubjectKey)],
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let mut state = self.lock();
            let mut stored = 0;
            for (subject, key) in keys {
                let k = (workspace.to_owned(), (*subject).to_owned());
                if let std::collections::btree_map::Entry::Vacant(e) = state.subjects.entry(k) {
                    e.insert(Some(key.clone()));
                    stored += 1;
                }
            }
            Ok(stored)
        })
    }

    fn identifier_subjects<'a>(
        &'a self,
        workspace: &'a str,
        indexes: &'a [[u8; 32]],
    ) -> BoxFuture<'a, Result<Vec<super::IdentifierSubject>, StoreError>> {
        Box::pin(async move {
            let state = self.lock();
            Ok(indexes
                .iter()
                .filter_map(|i| {
                    state
                        .identifiers
                        .get(&(workspace.to_owned(), *i))
                        .map(|s| (*i, s.clone()))
                })
                .collect())
        })
    }

    fn insert_identifier_subjects<'a>(
        &'a self,
        workspace: &'a str,
        rows: &'a [super::IdentifierSubject],
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let mut state = self.lock();
            let mut stored = 0;
            for (index, subject) in rows {
                let k = (workspace.to_owned(), *index);
                if let std::collections::btree_map::Entry::Vacant(e) = state.identifiers.entry(k) {
                    e.insert(subject.clone());
                    stored += 1;
                }
            }
            Ok(stored)
        })
    }

    fn delete_identifier_subject<'a>(
        &'a self,
        workspace: &'a str,
        index: &'a [u8; 32],
        subject: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut state = self.lock();
            let key = (workspace.to_owned(), *index);
            if state.identifiers.get(&key).map(String::as_str) == Some(subject) {
                state.identifiers.remove(&key);
                Ok(true)
            } else {
                Ok(false)
            }
        })
    }

    fn forget_subject<'a>(
        &'a self,
        workspace: &'a str,
        subject: &'a str,
    ) -> BoxFuture<'a, Result<ForgetOutcome, StoreError>> {
        Box::pin(async move {
            let mut state = self.lock();
            let previous = state
                .subjects
                .insert((workspace.to_owned(), subject.to_owned()), None);
            Ok(match previous {
                Some(Some(_)) => ForgetOutcome {
                    keys_destroyed: 1,
                    already_forgotten: false,
                },
                Some(None) => ForgetOutcome {
                    keys_destroyed: 0,
                    already_forgotten: true,
                },
                None => ForgetOutcome {
                    keys_destroyed: 0,
                    already_forgotten: false,
                },
            })
        })
    }

    fn workspace_key<'a>(
        &'a self,
        workspace: &'a str,
        purpose: WorkspaceKeyPurpose,
    ) -> BoxFuture<'a, Result<Option<StoredWorkspaceKey>, StoreError>> {
        Box::pin(async move { Ok(Self::latest(&self.lock(), workspace, purpose)) })
    }

    fn insert_workspace_key<'a>(
        &'a self,
        workspace: &'a str,
        purpose: WorkspaceKeyPurpose,
        key: &'a StoredWorkspaceKey,
    ) -> BoxFuture<'a, Result<StoredWorkspaceKey, StoreError>> {
        Box::pin(async move {
            let mut state = self.lock();
            state
                .workspaces
                .entry((workspace.to_owned(), purpose, key.key_version))
                .or_insert_with(|| key.clone());
            Self::latest(&state, workspace, purpose)
                .ok_or(StoreError::Corrupt("workspace key vanished"))
        })
    }

    fn subject_keys_to_rewrap<'a>(
        &'a self,
        current: KekVersion,
        after: (&'a str, &'a str),
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<SubjectKeyRow>, StoreError>> {
        Box::pin(async move {
            let state = self.lock();
            let after = (after.0.to_owned(), after.1.to_owned());
            Ok(state
                .subjects
                .range((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
                .filter_map(|((ws, subj), key)| {
                    key.as_ref()
                        .filter(|k| k.wrapped.kek_version != current)
                        .map(|k| SubjectKeyRow {
                            workspace_id: ws.clone(),
                            subject_id: subj.clone(),
                            key: k.clone(),
                        })
                })
                .take(usize::try_from(limit).unwrap_or(usize::MAX))
                .collect())
        })
    }

    fn replace_subject_wrapping<'a>(
        &'a self,
        row: &'a SubjectKeyRow,
        new: &'a WrappedKey,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut state = self.lock();
            match state
                .subjects
                .get_mut(&(row.workspace_id.clone(), row.subject_id.clone()))
            {
                Some(Some(key))
                    if key.key_id == row.key.key_id
                        && key.wrapped.kek_version == row.key.wrapped.kek_version =>
                {
                    key.wrapped = new.clone();
                    Ok(true)
                }
                _ => Ok(false),
            }
        })
    }

    fn workspace_keys_to_rewrap<'a>(
        &'a self,
        current: KekVersion,
        after: (&'a str, &'a str, u32),
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<WorkspaceKeyRow>, StoreError>> {
        Box::pin(async move {
            let state = self.lock();
            Ok(state
                .workspaces
                .iter()
                .filter(|((ws, purpose, version), _)| {
                    (ws.as_str(), purpose.as_str(), *version) > after
                })
                .filter(|(_, key)| key.wrapped.kek_version != current)
                .map(|((ws, purpose, _), key)| WorkspaceKeyRow {
                    workspace_id: ws.clone(),
                    purpose: *purpose,
                    key: key.clone(),
                })
                .take(usize::try_from(limit).unwrap_or(usize::MAX))
                .collect())
        })
    }

    fn replace_workspace_wrapping<'a>(
        &'a self,
        row: &'a WorkspaceKeyRow,
        new: &'a WrappedKey,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut state = self.lock();
            match state.workspaces.get_mut(&(
                row.workspace_id.clone(),
                row.purpose,
                row.key.key_version,
            )) {
                Some(key) if key.wrapped.kek_version == row.key.wrapped.kek_version => {
                    key.wrapped = new.clone();
                    Ok(true)
                }
                _ => Ok(false),
            }
        })
    }

    fn kek_versions_in_use(&self) -> BoxFuture<'_, Result<BTreeMap<KekVersion, u64>, StoreError>> {
        Box::pin(async move {
            let state = self.lock();
            let mut counts = BTreeMap::new();
            for key in state.subjects.values().flatten() {
                *counts.entry(key.wrapped.kek_version).or_insert(0) += 1;
            }
            for key in state.workspaces.values() {
                *counts.entry(key.wrapped.kek_version).or_insert(0) += 1;
            }
            Ok(counts)
        })
    }
}
