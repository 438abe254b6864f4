//! Placeholder for the Kubernetes manager. It deliberately exports nothing yet: see
//! this crate's README for what it will own. Nothing pretends to work here.
