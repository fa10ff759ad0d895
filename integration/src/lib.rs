//! integration harness
