//! `clonelb status | disable | enable` against several balancers (`--admin` given more
//! than once). With one target these are the single-balancer commands, output unchanged.
//!
//! With several, each balancer is called on a thread of its own, independently: one that
//! is unreachable or refuses does not stop the others. Output comes in the order the
//! addresses were given: every line about one balancer starts with its address as given
//! (`127.0.0.1:9901: clone-2 (...): disabled, 0 in flight`), its failure included (on
//! stderr, the address in place of `clonelb: `); `status` prints each balancer's whole
//! status under a `== ADDR ==` header instead. The command fails (exit 1, a last line
//! `clonelb: N of M balancers failed`) when any balancer failed.
//!
//! `disable --wait` disables on every balancer first, then waits on those it disabled, all
//! at once: the wait ends when every one has drained or at `--timeout` (one deadline for
//! all, not one after another), and succeeds only when every balancer was disabled and
//! drained.

use std::time::Duration;

use super::client::Admin;
use super::{connect, disable_one, enable_one, print, status_text, wait_drained};
use super::{CliError, Target};

/// One balancer's part in one step: the lines for stdout, and how it ended.
type Part = (Vec<String>, Result<(), CliError>);

/// What runs against one balancer: write lines to the sink, or fail.
type Step<'a> = dyn Fn(&Admin, &mut dyn FnMut(&str)) -> Result<(), CliError> + Sync + 'a;

/// `clonelb status` on every target.
pub fn status(targets: &[Target]) -> Result<(), CliError> {
    if let [one] = targets {
        return super::status(one);
    }
    let (labels, admins) = open(targets);
    let parts = on_each(
        &admins.iter().map(|a| Some(a.as_ref())).collect::<Vec<_>>(),
        &|admin: &Admin, out: &mut dyn FnMut(&str)| {
            out(&status_text(admin)?);
            Ok(())
        },
    );
    let mut failed = 0;
    for (i, (label, part)) in labels.iter().zip(parts).enumerate() {
        let Some((texts, result)) = part else {
            continue;
        };
        let blank = if i > 0 { "\n" } else { "" };
        print(&format!("{blank}== {label} ==\n{}", texts.concat()));
        if let Err(e) = result {
            failed += 1;
            eprint!("{}", error_lines(label, &e));
        }
    }
    verdict(failed, targets.len())
}

/// `clonelb disable NAME [--wait [--timeout T]]` on every target.
pub fn disable(targets: &[Target], name: &str, wait: Option<Duration>) -> Result<(), CliError> {
    if let [one] = targets {
        return super::disable(one, name, wait);
    }
    let (labels, admins) = open(targets);
    let all: Vec<_> = admins.iter().map(|a| Some(a.as_ref())).collect();
    let parts = on_each(&all, &|admin: &Admin, out: &mut dyn FnMut(&str)| {
        disable_one(admin, name, out)
    });
    let disabled = report(&labels, parts);
    let mut failed = disabled.iter().filter(|ok| !**ok).count();
    if let Some(timeout) = wait {
        // Only where the clone was disabled; every wait starts now and has `timeout`.
        let waiting: Vec<_> = all
            .iter()
            .zip(&disabled)
            .map(|(a, ok)| a.filter(|_| *ok))
            .collect();
        let parts = on_each(&waiting, &|admin: &Admin, out: &mut dyn FnMut(&str)| {
            wait_drained(admin, name, timeout, out)
        });
        let drained = report(&labels, parts);
        failed += disabled
            .iter()
            .zip(&drained)
            .filter(|(d, w)| **d && !**w)
            .count();
    }
    verdict(failed, targets.len())
}

/// `clonelb enable NAME` on every target.
pub fn enable(targets: &[Target], name: &str) -> Result<(), CliError> {
    if let [one] = targets {
        return super::enable(one, name);
    }
    let (labels, admins) = open(targets);
    let all: Vec<_> = admins.iter().map(|a| Some(a.as_ref())).collect();
    let parts = on_each(&all, &|admin: &Admin, out: &mut dyn FnMut(&str)| {
        enable_one(admin, name, out)
    });
    let enabled = report(&labels, parts);
    verdict(enabled.iter().filter(|ok| !**ok).count(), targets.len())
}

/// Each target's label (its address as given) and its client (or why there is none).
fn open(targets: &[Target]) -> (Vec<String>, Vec<Result<Admin, CliError>>) {
    let labels = targets
        .iter()
        .map(|t| t.admin.clone().unwrap_or_else(|| "lb.toml".to_string()))
        .collect();
    (labels, targets.iter().map(connect).collect())
}

/// Run `step` against every balancer given (`Some`), all at once, each on a thread of its
/// own; a client that could not be made is that balancer's failure. `None` in, `None` out
/// (a balancer left out of this step). In the order given.
fn on_each(admins: &[Option<Result<&Admin, &CliError>>], step: &Step<'_>) -> Vec<Option<Part>> {
    std::thread::scope(|scope| {
        let running: Vec<_> = admins
            .iter()
            .map(|admin| {
                let admin = (*admin)?;
                Some(scope.spawn(move || {
                    let mut lines = Vec::new();
                    let result = match admin {
                        Ok(admin) => step(admin, &mut |l: &str| lines.push(l.to_string())),
                        Err(e) => Err(CliError::Local(plain(e))),
                    };
                    (lines, result)
                }))
            })
            .collect();
        running
            .into_iter()
            .map(|handle| {
                let handle = handle?;
                Some(handle.join().unwrap_or_else(|_| {
                    (
                        Vec::new(),
                        Err(CliError::Local("its thread panicked".to_string())),
                    )
                }))
            })
            .collect()
    })
}

/// Print every balancer's lines (stdout) and failure (stderr), each line prefixed with its
/// label; which balancers succeeded (`false` for one left out of the step).
fn report(labels: &[String], parts: Vec<Option<Part>>) -> Vec<bool> {
    labels
        .iter()
        .zip(parts)
        .map(|(label, part)| {
            let Some((lines, result)) = part else {
                return false;
            };
            let text: String = lines.iter().map(|l| format!("{label}: {l}\n")).collect();
            print(&text);
            match result {
                Ok(()) => true,
                Err(e) => {
                    eprint!("{}", error_lines(label, &e));
                    false
                }
            }
        })
        .collect()
}

/// An error's text without its `clonelb: `, each line prefixed with `label: `.
fn error_lines(label: &str, e: &CliError) -> String {
    plain(e)
        .lines()
        .map(|l| format!("{label}: {l}\n"))
        .collect()
}

/// An error's text without the `clonelb: ` every one-line error starts with.
fn plain(e: &CliError) -> String {
    let text = e.to_string();
    match text.strip_prefix("clonelb: ") {
        Some(rest) => rest.to_string(),
        None => text,
    }
}

fn verdict(failed: usize, total: usize) -> Result<(), CliError> {
    match failed {
        0 => Ok(()),
        _ => Err(CliError::Several { failed, total }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_prefixed_with_the_balancer_instead_of_clonelb() {
        let e = CliError::Unreachable {
            addr: "lb2:9901".into(),
            reason: "connection refused".into(),
        };
        assert_eq!(
            error_lines("lb2:9901", &e),
            "lb2:9901: cannot reach the admin API at lb2:9901: connection refused\n"
        );
        assert_eq!(
            verdict(1, 3).unwrap_err().to_string(),
            "clonelb: 1 of 3 balancers failed"
        );
        assert!(verdict(0, 3).is_ok());
    }
}
