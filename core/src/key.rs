//! License key format v1 (placeholder, being written).
