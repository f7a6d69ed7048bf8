//! Domain types shared by every room: workspaces, regions, subjects, scopes.
