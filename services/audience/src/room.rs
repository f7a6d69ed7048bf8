//! The audience room: plain async methods the gRPC handlers (and, later, the bus consumers
//! and the erasure saga) call. No tonic, no SQL here.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use crate::error::AudienceError;
use crate::schedule::Schedule;
use crate::segment::{self, local_day};
use crate::store::{AudienceStore, MemberRow, Preview, SegmentRow};

/// What a segment is made of, as a caller gives it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SegmentInput {
    pub name: String,
    pub definition: String,
    pub purpose: String,
    pub recompute_schedule: String,
}

/// A preview target: a saved segment or an unsaved definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreviewTarget {
    Segment(String),
    Definition(String),
}

#[derive(Debug, Clone)]
pub struct AudienceRoom {
    store: AudienceStore,
    destinations: Option<std::sync::Arc<crate::sync::DestinationDeps>>,
}

/// Purposes a segment may be used for: fideslang data uses under `marketing`.
fn check_purpose(field: &str, purpose: &str) -> Result<(), AudienceError> {
    let ok = purpose.starts_with("marketing.")
        && purpose.len() <= 200
        && purpose.split('.').all(|part| {
            !part.is_empty() && part.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(AudienceError::invalid(
            field,
            "must be a fideslang marketing data use (marketing.advertising.third_party.targeted)",
        ))
    }
}

/// Five-field cron (minute hour day-of-month month day-of-week), evaluated in the
/// workspace's time zone; empty means no scheduled recompute.
fn check_schedule(field: &str, schedule: &str) -> Result<(), AudienceError> {
    if schedule.is_empty() {
        return Ok(());
    }
    Schedule::parse(schedule)
        .map(|_| ())
        .map_err(|e| AudienceError::invalid(field, format!("{e} (five-field cron, `0 3 * * *`)")))
}

fn check_name(field: &str, name: &str) -> Result<(), AudienceError> {
    if name.trim().is_empty() || name.len() > 200 {
        return Err(AudienceError::invalid(
            field,
            "must be 1 to 200 bytes, not blank",
        ));
    }
    Ok(())
}

impl AudienceRoom {
    pub fn new(store: AudienceStore) -> Self {
        AudienceRoom {
            store,
            destinations: None,
        }
    }

    /// Enables destinations and syncs (policies, vault, credentials, identity and consent).
    pub fn with_destinations(mut self, deps: crate::sync::DestinationDeps) -> Self {
        self.destinations = Some(std::sync::Arc::new(deps));
        self
    }

    pub(crate) fn destination_deps(&self) -> Option<&crate::sync::DestinationDeps> {
        self.destinations.as_deref()
    }

    pub fn store(&self) -> &AudienceStore {
        &self.store
    }

    async fn today(&self, workspace: &str) -> Result<(i64, Tz), AudienceError> {
        let zone = self.store.workspace_time_zone(workspace).await?;
        Ok((local_day(Utc::now(), zone), zone))
    }

    /// Validates and saves a new segment, then computes its members.
    pub async fn create_segment(
        &self,
        workspace: &str,
        input: SegmentInput,
    ) -> Result<SegmentRow, AudienceError> {
        check_name("name", &input.name)?;
        let rule = segment::parse(&input.definition)?;
        check_purpose("purpose", &input.purpose)?;
        check_schedule("recompute_schedule", &input.recompute_schedule)?;
        let now = Utc::now();
        let row = SegmentRow {
            segment_id: uuid::Uuid::now_v7().to_string(),
            name: input.name,
            definition: input.definition,
            purpose: input.purpose,
            recompute_schedule: input.recompute_schedule,
            version: 1,
            created_at: now,
            updated_at: now,
        };
        self.store.insert_segment(workspace, &row).await?;
        let (today, _) = self.today(workspace).await?;
        self.store
            .recompute_members(workspace, &row.segment_id, &rule, today, now)
            .await?;
        Ok(row)
    }

    /// Changes the given fields (empty ones keep their value), bumps the version, and
    /// recomputes the members when the definition changed.
    pub async fn update_segment(
        &self,
        workspace: &str,
        segment_id: &str,
        input: SegmentInput,
    ) -> Result<SegmentRow, AudienceError> {
        let current = self
            .store
            .segment(workspace, segment_id)
            .await?
            .ok_or(AudienceError::NotFound("segment"))?;
        let mut next = current.clone();
        if !input.name.is_empty() {
            check_name("name", &input.name)?;
            next.name = input.name;
        }
        let new_rule = if input.definition.is_empty() {
            None
        } else {
            let rule = segment::parse(&input.definition)?;
            next.definition = input.definition;
            Some(rule)
        };
        if !input.purpose.is_empty() {
            check_purpose("purpose", &input.purpose)?;
            next.purpose = input.purpose;
        }
        if !input.recompute_schedule.is_empty() {
            check_schedule("recompute_schedule", &input.recompute_schedule)?;
            next.recompute_schedule = input.recompute_schedule;
        }
        next.version = current.version + 1;
        next.updated_at = Utc::now();
        if !self
            .store
            .update_segment(workspace, &next, current.version)
            .await?
        {
            return Err(AudienceError::Conflict("segment"));
        }
        if let Some(rule) = new_rule {
            let (today, _) = self.today(workspace).await?;
            self.store
                .recompute_members(workspace, segment_id, &rule, today, next.updated_at)
                .await?;
        }
        Ok(next)
    }

    /// Count and sample of a saved or unsaved rule, sending nothing.
    pub async fn preview_segment(
        &self,
        workspace: &str,
        target: PreviewTarget,
        sample_size: u32,
    ) -> Result<Preview, AudienceError> {
        if sample_size > 100 {
            return Err(AudienceError::invalid("sample_size", "must be at most 100"));
        }
        let sample_size = if sample_size == 0 { 10 } else { sample_size };
        let rule = match target {
            PreviewTarget::Definition(definition) => segment::parse(&definition)?,
            PreviewTarget::Segment(id) => {
                let row = self
                    .store
                    .segment(workspace, &id)
                    .await?
                    .ok_or(AudienceError::NotFound("segment"))?;
                segment::parse(&row.definition)?
            }
        };
        let (today, _) = self.today(workspace).await?;
        self.store
            .preview(workspace, &rule, today, sample_size)
            .await
    }

    /// A page of members after `page_token` (a profile id), and the next token.
    pub async fn list_members(
        &self,
        workspace: &str,
        segment_id: &str,
        page_size: u32,
        page_token: &str,
    ) -> Result<(Vec<MemberRow>, String), AudienceError> {
        if segment_id.is_empty() {
            return Err(AudienceError::invalid("segment_id", "is required"));
        }
        if page_size > 1000 {
            return Err(AudienceError::invalid("page_size", "must be at most 1000"));
        }
        let size = if page_size == 0 { 100 } else { page_size };
        self.store
            .segment(workspace, segment_id)
            .await?
            .ok_or(AudienceError::NotFound("segment"))?;
        let members = self
            .store
            .members(workspace, segment_id, page_token, size)
            .await?;
        let next = if members.len() == size as usize {
            members
                .last()
                .map(|m| m.profile.profile_id.clone())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok((members, next))
    }

    /// The segments a profile is a member of: id, name and when it joined.
    pub async fn memberships_of(
        &self,
        workspace: &str,
        profile_id: &str,
    ) -> Result<Vec<(String, String, DateTime<Utc>)>, AudienceError> {
        self.store.memberships_of(workspace, profile_id).await
    }

    /// Recomputes every segment of the workspace in full, whatever their schedules.
    pub async fn recompute_all(
        &self,
        workspace: &str,
        at: DateTime<Utc>,
    ) -> Result<u64, AudienceError> {
        let zone = self.store.workspace_time_zone(workspace).await?;
        let today = local_day(at, zone);
        let mut changed = 0;
        for row in self.store.segments(workspace).await? {
            let rule = segment::parse(&row.definition)?;
            let (joined, left) = self
                .store
                .recompute_members(workspace, &row.segment_id, &rule, today, at)
                .await?;
            changed += (joined.len() + left.len()) as u64;
        }
        Ok(changed)
    }
}

/// What one pass of the scheduler did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScheduledPass {
    /// Segments recomputed in full.
    pub recomputed: u64,
    /// Segments seen for the first time (or with a changed schedule) whose next slot was
    /// planned.
    pub planned: u64,
    /// Profiles that joined or left.
    pub changed: u64,
    /// Segments whose claimed slot failed (logged; they run again at their next slot).
    pub failed: u64,
}

impl AudienceRoom {
    /// Runs the scheduled full recomputes due at `now`: each due segment's slot is claimed
    /// in the store (moved to its next run) before it is recomputed, so a slot runs once
    /// across replicas and restarts. Slots missed while nothing ran collapse into one run.
    /// A segment not planned yet gets its next slot and no run (it was computed when saved).
    pub async fn recompute_due(&self, now: DateTime<Utc>) -> Result<ScheduledPass, AudienceError> {
        let mut pass = ScheduledPass::default();
        let mut zones: std::collections::HashMap<String, Tz> = Default::default();
        for due in self.store.due_segments(now).await? {
            let schedule = match Schedule::parse(&due.recompute_schedule) {
                Ok(schedule) => schedule,
                Err(e) => {
                    // Saved before schedules were checked this strictly: left alone.
                    tracing::warn!(segment = %due.segment_id, error = %e, "segment recompute schedule does not parse; not scheduled");
                    continue;
                }
            };
            let zone = match zones.get(&due.workspace_id) {
                Some(zone) => *zone,
                None => {
                    let zone = self.store.workspace_time_zone(&due.workspace_id).await?;
                    zones.insert(due.workspace_id.clone(), zone);
                    zone
                }
            };
            let Some(next) = schedule.next_after(now, zone) else {
                continue;
            };
            let claimed = self
                .store
                .claim_recompute_slot(
                    &due.workspace_id,
                    &due.segment_id,
                    &due.recompute_schedule,
                    due.next_recompute_at,
                    next,
                )
                .await?;
            if !claimed {
                continue;
            }
            if due.next_recompute_at.is_none() {
                pass.planned += 1;
                continue;
            }
            // The slot is claimed: a failure here waits for the next slot (the segment
            // still follows profile changes meanwhile) and does not hold up the others.
            let recomputed = match segment::parse(&due.definition) {
                Ok(rule) => {
                    self.store
                        .recompute_members(
                            &due.workspace_id,
                            &due.segment_id,
                            &rule,
                            local_day(now, zone),
                            now,
                        )
                        .await
                }
                Err(e) => Err(e.into()),
            };
            match recomputed {
                Ok((joined, left)) => {
                    tracing::info!(
                        segment = %due.segment_id,
                        joined = joined.len(),
                        left = left.len(),
                        "scheduled segment recompute"
                    );
                    pass.recomputed += 1;
                    pass.changed += (joined.len() + left.len()) as u64;
                }
                Err(e) => {
                    tracing::warn!(segment = %due.segment_id, error = %e, "scheduled segment recompute failed; next slot planned");
                    pass.failed += 1;
                }
            }
        }
        Ok(pass)
    }

    /// The background task: looks for due recomputes every `interval` until `shutdown`.
    pub async fn run_scheduled_recomputes(
        &self,
        interval: std::time::Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            if *shutdown.borrow() {
                return;
            }
            if let Err(e) = self.recompute_due(Utc::now()).await {
                tracing::warn!(error = %e, "scheduled segment recompute failed; retrying later");
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.changed() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_and_purposes_are_checked() {
        assert!(check_schedule("s", "0 2 * * *").is_ok());
        assert!(check_schedule("s", "*/15 8-18 * * 1-5").is_ok());
        assert!(check_schedule("s", "61 2 * * *").is_err());
        assert!(check_schedule("s", "0 2 * *").is_err());
        assert!(check_purpose("p", "marketing.advertising.third_party.targeted").is_ok());
        assert!(check_purpose("p", "analytics").is_err());
        assert!(check_purpose("p", "marketing..x").is_err());
    }
}
