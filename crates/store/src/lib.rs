//! Storage backends (PostgreSQL, SQLite), migrations and the schema check.
