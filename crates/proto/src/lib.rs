//! The public gRPC contract (meridian.v1), compiled once with protox.
