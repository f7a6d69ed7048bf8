//! The policy engine: loads policies/ and decides collect, process, export, retention.
