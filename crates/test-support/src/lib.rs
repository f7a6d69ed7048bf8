//! Test support: synthetic storefront data with ground truth, and fakes of ad platforms.
