//! Answers compared with their replays (see the module docs of `audit`).
