//! Hand-written `Debug` for messages that carry personal data or secrets: they
//! print what helps debugging (ids, types, counts) and never a value that could
//! identify a person.

use std::fmt;

use crate::v1::{
    Context, CreateDestinationRequest, DataSubjectRequest, Device, Event, Identifier, Profile,
    ProfileEvent, ProfileIdentifier, SubmitRequestRequest,
};

const REDACTED: &str = "<redacted>";

impl fmt::Debug for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identifier")
            .field("type", &self.r#type())
            .field("value", &REDACTED)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("message_id", &self.message_id)
            .field("type", &self.r#type())
            .field("event", &self.event)
            .field("identifiers", &self.identifiers.len())
            .field("jurisdiction", &self.jurisdiction)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("locale", &self.locale)
            .field("timezone", &self.timezone)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device")
            .field("type", &self.r#type)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Profile")
            .field("profile_id", &self.profile_id)
            .field("home_region", &self.home_region)
            .field("identifiers", &self.identifiers.len())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for ProfileIdentifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProfileIdentifier")
            .field("type", &self.r#type())
            .field("value", &REDACTED)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Debug for ProfileEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProfileEvent")
            .field("message_id", &self.message_id)
            .field("type", &self.r#type)
            .field("event", &self.event)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for SubmitRequestRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubmitRequestRequest")
            .field("workspace_id", &self.workspace_id)
            .field("kind", &self.kind())
            .field("jurisdiction", &self.jurisdiction)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for DataSubjectRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataSubjectRequest")
            .field("request_id", &self.request_id)
            .field("kind", &self.kind())
            .field("status", &self.status())
            .field("regime", &self.regime)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for CreateDestinationRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateDestinationRequest")
            .field("workspace_id", &self.workspace_id)
            .field("name", &self.name)
            .field("platform", &self.platform())
            .field("region", &self.region)
            .field("credentials", &self.credentials.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use crate::v1::{IdentifierType, SubjectRef};

    use super::*;

    #[test]
    fn debug_of_a_subject_prints_no_identifier_value() {
        let subject = SubjectRef {
            identifiers: vec![Identifier {
                r#type: IdentifierType::Email as i32,
                value: "ana.silva@example.com".into(),
                ..Default::default()
            }],
            profile_id: String::new(),
        };
        let printed = format!("{subject:?}");
        assert!(!printed.contains("ana.silva"), "{printed}");
        assert!(printed.contains("Email"), "{printed}");
    }

    #[test]
    fn debug_of_destination_credentials_prints_names_not_secrets() {
        let request = CreateDestinationRequest {
            credentials: [("access_token".to_string(), "EAAB-secret".to_string())].into(),
            ..Default::default()
        };
        let printed = format!("{request:?}");
        assert!(printed.contains("access_token"), "{printed}");
        assert!(!printed.contains("EAAB-secret"), "{printed}");
    }
}
