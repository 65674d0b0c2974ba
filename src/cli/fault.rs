//! `sheepdev fault-proxy` (hidden): the fault proxy of [`crate::fault`] between sheepdev and
//! a sheep endpoint, with faults injected on a schedule, for VM scenarios. Prints one line
//! per fault injected on stdout (`2026-11-30T12:00:00.123Z reset connection 3 after …`)
//! and runs until killed.

use std::io::Write;
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;

use crate::fault::{Cut, Handle, Proxy, Which};

#[derive(Debug, Args)]
pub struct FaultProxyArgs {
    /// Address clients connect to (IP:PORT).
    #[arg(long, value_parser = addr_arg)]
    listen: SocketAddr,
    /// The sheep endpoint every client is relayed to (IP:PORT).
    #[arg(long, value_parser = addr_arg)]
    target: SocketAddr,
    /// Reset one connection in the middle of a response this often (e.g. 3s).
    #[arg(long, value_parser = period_arg)]
    reset_every: Option<Duration>,
    /// Stall every connection this often, for --stall-for.
    #[arg(long, value_parser = period_arg, requires = "stall_for")]
    stall_every: Option<Duration>,
    /// How long each stall lasts.
    #[arg(long, value_parser = period_arg, requires = "stall_every")]
    stall_for: Option<Duration>,
    /// Latency added before forwarding each chunk, both ways.
    #[arg(long, value_parser = duration_arg)]
    delay: Option<Duration>,
    /// Truncate one response (close in its middle) this often.
    #[arg(long, value_parser = period_arg)]
    truncate_every: Option<Duration>,
    /// Close every connection this often.
    #[arg(long, value_parser = period_arg)]
    drop_every: Option<Duration>,
}

fn addr_arg(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| format!("bad address {s:?}: expected IP:PORT, e.g. 127.0.0.1:7000"))
}

/// A duration with a unit: `250ms`, `2s`, `1.5s`, `1m`, `100us`.
pub(crate) fn duration_arg(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "bad duration {s:?}: expected a number with a unit (us, ms, s, m), e.g. 500ms or 2s"
        )
    };
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| bad())?;
    let scale = match unit {
        "us" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(n * scale).map_err(|_| bad())
}

fn period_arg(s: &str) -> Result<Duration, String> {
    let d = duration_arg(s)?;
    if d < Duration::from_millis(1) {
        return Err(format!("bad period {s:?}: must be at least 1ms"));
    }
    Ok(d)
}

/// `2026-11-30T12:00:00.123Z`.
fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

type Action = Box<dyn Fn(&Handle) + Send>;

pub fn run(a: FaultProxyArgs) -> anyhow::Result<()> {
    let proxy =
        Proxy::start(a.listen, a.target).with_context(|| format!("listening on {}", a.listen))?;
    let h = proxy.handle();
    let events = h.events();
    eprintln!("sheepdev fault-proxy: relaying {} to {}", proxy.addr(), a.target);
    let mut plan: Vec<(Duration, Action)> = Vec::new();
    if let Some(p) = a.reset_every {
        plan.push((p, Box::new(|h| h.cut_next(Cut::Reset, Which::Any))));
    }
    if let Some(p) = a.truncate_every {
        plan.push((p, Box::new(|h| h.cut_next(Cut::Truncate, Which::Any))));
    }
    if let Some(p) = a.drop_every {
        plan.push((
            p,
            Box::new(|h| {
                h.drop_all();
            }),
        ));
    }
    if let (Some(p), Some(d)) = (a.stall_every, a.stall_for) {
        plan.push((p, Box::new(move |h| h.stall(d))));
    }
    if let Some(d) = a.delay {
        h.set_delay(d);
    }
    if !plan.is_empty() {
        let h = h.clone();
        thread::Builder::new()
            .name("fault-schedule".into())
            .spawn(move || schedule(&h, plan))
            .context("starting the fault schedule")?;
    }
    let mut out = std::io::stdout();
    for ev in events {
        // A reader that went away (`| head`) ends the proxy instead of a panic.
        if writeln!(out, "{} {}", timestamp(ev.at), ev.fault).and_then(|()| out.flush()).is_err() {
            break;
        }
    }
    Ok(())
}

/// Run each action every its period, forever.
fn schedule(h: &Handle, plan: Vec<(Duration, Action)>) {
    let t0 = Instant::now();
    let mut next: Vec<Instant> = plan.iter().map(|(p, _)| t0 + *p).collect();
    loop {
        let Some((i, &due)) = next.iter().enumerate().min_by_key(|(_, t)| **t) else { return };
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        (plan[i].1)(h);
        next[i] = due + plan[i].0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(duration_arg("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(duration_arg("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(duration_arg("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(duration_arg("100us"), Ok(Duration::from_micros(100)));
        for bad in ["", "5", "s", "-1s", "1h", "1.2.3s", "ms"] {
            assert!(duration_arg(bad).is_err(), "{bad:?}");
        }
        assert!(period_arg("0s").is_err());
    }

    #[test]
    fn timestamps_are_utc_rfc3339() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            timestamp(UNIX_EPOCH + Duration::from_millis(1_796_035_437_123)),
            "2026-11-30T10:43:57.123Z"
        );
        assert_eq!(
            timestamp(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z"
        );
    }
}
