//! Audiences and destinations service.
