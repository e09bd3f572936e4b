//! Shared fixtures for the end-to-end tests that boot real guests.
