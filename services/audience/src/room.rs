//! The audience room: plain async methods the gRPC handlers (and, later, the bus consumers
//! and the erasure saga) call. No tonic, no SQL here.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use crate::error::AudienceError;
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
    let fields: Vec<&str> = schedule.split_whitespace().collect();
    let ranges = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)];
    let valid = fields.len() == 5
        && fields.iter().zip(ranges).all(|(f, (lo, hi))| {
            f.split(',').all(|item| {
                let (range, step) = item.split_once('/').unwrap_or((item, "1"));
                let step_ok = step.parse::<u32>().is_ok_and(|s| s >= 1);
                let range_ok = range == "*"
                    || range
                        .split_once('-')
                        .map_or_else(
                            || range.parse::<u32>().ok().map(|v| (v, v)),
                            |(a, b)| Some((a.parse().ok()?, b.parse().ok()?)),
                        )
                        .is_some_and(|(a, b): (u32, u32)| lo <= a && a <= b && b <= hi);
                step_ok && range_ok
            })
        });
    if valid {
        Ok(())
    } else {
        Err(AudienceError::invalid(
            field,
            "must be a five-field cron expression (`0 2 * * *`)",
        ))
    }
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

    /// Recomputes every segment of the workspace in full (the scheduled job).
    /// The segments a profile is a member of: id, name and when it joined.
    pub async fn memberships_of(
        &self,
        workspace: &str,
        profile_id: &str,
    ) -> Result<Vec<(String, String, DateTime<Utc>)>, AudienceError> {
        self.store.memberships_of(workspace, profile_id).await
    }

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
