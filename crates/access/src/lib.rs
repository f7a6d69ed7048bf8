//! Workspaces and API keys: who may call, with which scopes, in which workspace.
