//! `--kill`: one relay of the cluster killed with SIGKILL while its devices
//! move to the others. Measured from the kill: when the loaders have every
//! device registered again; when the store shows every moved device claimed
//! by a survivor; when each survivor's holder map (the claims it received)
//! names a survivor for every moved device; and when streams from every
//! survivor to a sample of the moved devices all succeed (probe rounds,
//! each one timed, started once every device is registered again).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::Args;
use crate::procs::{Child, status_all};
use crate::scale::{Conn, Reach, hop_phases, hop_totals, reach, sample_of};

#[derive(Debug, Serialize)]
pub struct Kill {
    pub killed_relay: usize,
    pub devices_moved: u64,
    /// Whether the store and the maps were polled while the devices moved
    /// (`--quiet-move` turns it off: then the two times below are upper bounds).
    pub watched_while_moving: bool,
    /// From SIGKILL until every device is registered again (elsewhere).
    pub all_registered_elsewhere_s: f64,
    /// Until the store showed every moved device online on a survivor (its
    /// claim committed), polled every 200 ms.
    pub all_claimed_in_store_s: Option<f64>,
    /// Until each survivor's holder map named a survivor for every moved
    /// device (no entry left naming the killed relay, none unknown), polled
    /// with the store.
    pub survivor_maps_learned_s: Vec<Option<f64>>,
    /// Until a sample of the killed relay's devices answered streams from
    /// every surviving relay, all of them (the end of the first probe round
    /// without a failure).
    pub reachable_from_every_survivor_s: f64,
    /// Failed connection attempts (refusals, timeouts) of the moving devices.
    pub refusals: u64,
    pub refusal_reasons: Vec<String>,
    /// Sampled streams that failed before all of the sample answered.
    pub probe_failures_before_reachable: usize,
    /// Each probe round: start (s after the kill), length (s), failures,
    /// and its first errors.
    pub probe_rounds: Vec<ProbeRound>,
    /// Holder lookups that asked the store, summed over the survivors, during
    /// the kill (a stale or missing map entry costs one).
    pub survivor_store_lookups: u64,
    pub reach_after: Reach,
}

#[derive(Debug, Serialize)]
pub struct ProbeRound {
    pub at_s: f64,
    pub took_s: f64,
    pub failures: usize,
    pub errors: Vec<String>,
}

/// What is polled while the devices move.
struct Watch {
    t: Instant,
    killed_id: String,
    names: Vec<String>,
    db: tokio_postgres::Client,
    claimed: Option<f64>,
    learned: Vec<Option<f64>>,
    next: Instant,
}

impl Watch {
    async fn new(a: &Args, killed_id: &str, survivors: usize, t: Instant) -> Result<Watch> {
        let (db, conn) = a
            .database
            .parse::<tokio_postgres::Config>()
            .context("the database address")?
            .connect(tokio_postgres::NoTls)
            .await
            .context("connecting to the database")?;
        tokio::spawn(conn);
        let k = a.relays - 1;
        Ok(Watch {
            t,
            killed_id: killed_id.to_string(),
            names: (k * a.devices..(k + 1) * a.devices)
                .map(|i| format!("d{i}"))
                .collect(),
            db,
            claimed: None,
            learned: vec![None; survivors],
            next: t,
        })
    }

    fn done(&self) -> bool {
        self.claimed.is_some() && self.learned.iter().all(Option::is_some)
    }

    /// Polls the store and each survivor's map, at most every 200 ms.
    async fn poll(&mut self, survivors: &mut [(String, String, Child)]) -> Result<()> {
        if self.done() || Instant::now() < self.next {
            return Ok(());
        }
        self.next = Instant::now() + Duration::from_millis(200);
        if self.claimed.is_none() {
            let row = self
                .db
                .query_one(
                    "SELECT count(*) FROM devices WHERE system = 'fleet' AND online = 1
                       AND relay IS NOT NULL AND relay <> $1 AND name = ANY($2)",
                    &[&self.killed_id, &self.names],
                )
                .await?;
            if row.try_get::<_, i64>(0)? as usize == self.names.len() {
                self.claimed = Some(self.t.elapsed().as_secs_f64());
            }
        }
        let first = self.names.first().map_or("d0", String::as_str);
        for (i, r) in survivors.iter_mut().enumerate() {
            if self.learned[i].is_some() {
                continue;
            }
            let cmd = format!(
                "holders fleet {first} {} {}",
                self.names.len(),
                self.killed_id
            );
            r.2.send(&cmd).await?;
            let line = r.2.line().await?;
            let v: Vec<usize> = line
                .strip_prefix("holders ")
                .context("a relay's holder counts")?
                .split(' ')
                .map(str::parse)
                .collect::<Result<_, _>>()?;
            if v.first() == Some(&self.names.len()) {
                self.learned[i] = Some(self.t.elapsed().as_secs_f64());
            }
        }
        Ok(())
    }
}

/// Holder lookups that asked the store, summed over `relays`.
async fn store_lookups(relays: &mut [(String, String, Child)]) -> Result<u64> {
    let mut n = 0;
    for r in relays {
        r.2.send("lookups").await?;
        let line = r.2.line().await?;
        n += line
            .strip_prefix("lookups ")
            .context("a relay's store lookups")?
            .parse::<u64>()?;
    }
    Ok(n)
}

/// SIGKILL to the last relay; waits until its devices are registered on the
/// others and a sample of them answers streams from every survivor.
pub async fn kill_one(
    a: &Args,
    relays: &mut [(String, String, Child)],
    loaders: &mut [Child],
    conns: &[Conn],
) -> Result<Kill> {
    let k = relays.len() - 1;
    let before = status_all(loaders).await?;
    let lookups_before = store_lookups(&mut relays[..k]).await?;
    eprintln!("kill: SIGKILL to relay {k} ({} devices) …", a.devices);
    let t = Instant::now();
    relays[k].2.kill9().await?;
    let mut watch = Watch::new(a, &relays[k].1, k, t).await?;
    let total = (a.relays * a.devices) as u64;
    let limit = Duration::from_secs(300);
    let mut s = status_all(loaders).await?;
    // Every device's connection to the killed relay ends at once; wait until
    // the loaders counted them down and back up again.
    while s.registered < total || s.moved < before.moved + a.devices as u64 {
        if t.elapsed() > limit {
            bail!(
                "after {limit:?}: {} of {total} devices registered",
                s.registered
            );
        }
        if !a.quiet_move {
            watch.poll(&mut relays[..k]).await?;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        s = status_all(loaders).await?;
    }
    let all_registered_elsewhere_s = t.elapsed().as_secs_f64();
    eprintln!("kill: all registered again after {all_registered_elsewhere_s:.1} s; probing …");
    let survivors: Vec<Conn> = conns[..k].to_vec();
    let sample = sample_of(a, k);
    let mut probe_failures = 0;
    let mut rounds = Vec::new();
    let reach_after = loop {
        // The killed relay's devices are all a hop away from most survivors.
        let before_hops = hop_totals(&mut relays[..k]).await?;
        let at = t.elapsed();
        let (c, s2) = (survivors.clone(), sample.clone());
        let mut round = tokio::spawn(async move { reach(&c, &s2, |_| usize::MAX).await });
        let mut r = loop {
            tokio::select! {
                r = &mut round => break r?,
                _ = tokio::time::sleep(Duration::from_millis(200)) => watch.poll(&mut relays[..k]).await?,
            }
        };
        rounds.push(ProbeRound {
            at_s: at.as_secs_f64(),
            took_s: (t.elapsed() - at).as_secs_f64(),
            failures: r.failures,
            errors: r.errors.iter().take(2).cloned().collect(),
        });
        r.hop_phases_mean_ms = hop_phases(before_hops, hop_totals(&mut relays[..k]).await?);
        if r.failures == 0 {
            break r;
        }
        probe_failures += r.failures;
        if t.elapsed() > limit {
            bail!("after {limit:?}: still failing streams: {:?}", r.errors);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let reachable_from_every_survivor_s = t.elapsed().as_secs_f64();
    // The store and the maps may still be behind the streams: keep watching
    // for a while (they are reported as not reached otherwise).
    let watch_until = (t.elapsed() + Duration::from_secs(30)).min(limit);
    while !watch.done() && t.elapsed() < watch_until {
        watch.poll(&mut relays[..k]).await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let survivor_store_lookups = store_lookups(&mut relays[..k]).await? - lookups_before;
    let s = status_all(loaders).await?;
    Ok(Kill {
        killed_relay: k,
        devices_moved: s.moved - before.moved,
        watched_while_moving: !a.quiet_move,
        all_registered_elsewhere_s,
        all_claimed_in_store_s: watch.claimed,
        survivor_maps_learned_s: watch.learned,
        reachable_from_every_survivor_s,
        refusals: s.failures - before.failures,
        refusal_reasons: s.errors,
        probe_failures_before_reachable: probe_failures,
        probe_rounds: rounds,
        survivor_store_lookups,
        reach_after,
    })
}

pub fn print(k: &Kill) {
    let opt = |v: Option<f64>| v.map_or("not within the watch".into(), |s| format!("{s:.1} s"));
    println!(
        "kill -9 of relay {}: {} devices registered elsewhere after {:.1} s, claimed in the store after {}, reachable from every survivor after {:.1} s; {} refusals {:?}; {} sampled streams failed before",
        k.killed_relay,
        k.devices_moved,
        k.all_registered_elsewhere_s,
        opt(k.all_claimed_in_store_s),
        k.reachable_from_every_survivor_s,
        k.refusals,
        k.refusal_reasons,
        k.probe_failures_before_reachable,
    );
    let maps: Vec<String> = k.survivor_maps_learned_s.iter().map(|v| opt(*v)).collect();
    println!(
        "  survivors' holder maps named a survivor for every moved device after: {}; {} store lookups",
        maps.join(", "),
        k.survivor_store_lookups
    );
    for r in &k.probe_rounds {
        println!(
            "  probe round at {:.1} s took {:.2} s: {} failed {:?}",
            r.at_s, r.took_s, r.failures, r.errors
        );
    }
    let r = &k.reach_after;
    println!(
        "after the kill, from every survivor to the moved devices: first byte p50 {:.2} ms, p99 {:.2} ms",
        r.first_byte_p50_ms, r.first_byte_p99_ms
    );
    if let Some(h) = &r.hop_phases_mean_ms {
        println!(
            "  hop setup, mean of {} hops: lookup {:.2} ms, connect {:.2} ms, open {:.2} ms",
            h.hops, h.lookup, h.connect, h.open
        );
    }
}
