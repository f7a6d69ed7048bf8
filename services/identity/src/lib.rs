//! Identity stitching and profiles service.
