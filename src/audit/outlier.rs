//! The peer comparison of behaviour (see the module docs of `audit`).
