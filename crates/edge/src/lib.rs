//! The gRPC edge shared by every service: authentication layer, error mapping, request metrics.
