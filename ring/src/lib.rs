//! Placeholder: the ring is being written (issue 3).
