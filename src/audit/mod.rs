//! The consistency audit: prove that any clone gives the same answer, and name the clone
//! that does not (issue 16, in progress).
//!
//! Built so far, with their unit tests (nothing on the request path or in lb.toml uses
//! them yet):
//! * [`job`]: what the request path hands the audit ([`job::Job`]), its settings and the
//!   reasons a sample is skipped;
//! * [`task`]: the [`task::Audit`] the request path submits jobs to, its own thread
//!   (`clonelb-audit`) that replays them, the verdicts and skip counters
//!   ([`task::AuditSnapshot`]);
//! * [`replay`]: one replay (the peer drawn off the rotation, the request, the answer read
//!   back), invisible to the clones' counters;
//! * [`verdict`]: comparing an answer with its replay on a peer clone, each clone's
//!   (compared, disagreed) window, the odd clone, the ring of recent mismatches;
//! * [`outlier`]: the peer comparison of behaviour (5xx share, p50, p99 over a window
//!   against the pool's median) and the one-at-a-time ejection policy.
//!
//! Still to come: the `[audit]` section, the sampling and the response tap on the request
//! path, `/status`, metrics and the page.

pub mod job;
pub mod outlier;
pub mod replay;
pub mod task;
pub mod verdict;
