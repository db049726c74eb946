//! The application's `spec.yaml` (TSF Mesh format).
