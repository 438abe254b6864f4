//! The integrations with GitHub, Slack and Discord (issue 17). So far: the checks
//! every inbound request passes before anything happens ([`verify`]), each as its
//! platform documents it and tested with the platform's published vectors.

pub mod verify;
