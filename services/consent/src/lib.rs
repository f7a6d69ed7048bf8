//! Consent ledger and data-subject requests service.
