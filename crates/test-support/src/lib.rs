//! Test support: synthetic storefront data with ground truth, and (later) fakes of ad
//! platforms.
//!
//! - [`storefront`]: a deterministic (by seed) cross-border storefront — shoppers in DE, FR,
//!   GB, US-CA, BR and CN with several devices, shared family devices, typos, junk values,
//!   re-used emails, ad click ids and storefront customer ids — that knows who is who, and
//!   the pairwise precision/recall [`storefront::QualityReport`] of a stitching.
//! - [`rng`]: the small seeded generator behind it (no external dependency).

pub mod platforms;
pub mod rng;
pub mod storefront;
