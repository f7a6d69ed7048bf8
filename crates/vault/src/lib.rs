//! Field-level encryption: key hierarchy, sealing, blind indexes, crypto-shredding.
