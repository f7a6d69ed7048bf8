//! `meridian bench policy`: memoized decision throughput and uncached Cedar
//! evaluation latency, measured with a plain `std::time` loop.

use std::hint::black_box;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::engine::{Action, ConsentState, PolicyEngine, Question};

/// How long to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BenchOptions {
    /// time spent in each memoized loop
    pub memoized_duration: Duration,
    /// uncached evaluations to time (one sample each)
    pub uncached_samples: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            memoized_duration: Duration::from_secs(2),
            uncached_samples: 2_000,
        }
    }
}

/// The measured figures; key names carry their units.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchReport {
    /// `decide(&Question)` on a warm memo, one thread, per second of that
    /// thread's on-CPU time (Linux schedstat; wall time elsewhere)
    pub memoized_decisions_per_sec_per_core: f64,
    /// where the per-core time came from: "thread_cpu_time" or "wall_clock"
    pub time_base: &'static str,
    /// mean time of one memoized `decide(&Question)`
    pub memoized_decision_ns: f64,
    /// `resolve(&Question)` alone: the string lookups `decide` does before the memo
    pub resolve_ns: f64,
    /// `decide_key(DecisionKey)` on a warm memo (question resolved once), one thread
    pub memoized_key_decisions_per_sec_per_core: f64,
    /// median Cedar evaluation (no memo)
    pub uncached_eval_p50_us: f64,
    /// 99th percentile Cedar evaluation (no memo)
    pub uncached_eval_p99_us: f64,
    /// mean Cedar evaluation (no memo)
    pub uncached_eval_mean_us: f64,
    /// distinct questions cycled through
    pub distinct_questions: usize,
    /// uncached samples taken
    pub uncached_samples: usize,
    /// Cedar rules loaded
    pub rules: usize,
    /// hash of the policy set measured
    pub policy_version: String,
    /// goal for memoized decisions per second per core
    pub goal_memoized_decisions_per_sec_per_core: f64,
    /// whether the goal was met
    pub goal_met: bool,
}

const JURISDICTIONS: [&str; 6] = ["EU-DE", "EU-FR", "GB", "US-CA", "CN", "BR"];
const PURPOSES: [&str; 6] = [
    "marketing.advertising.third_party.targeted",
    "analytics.reporting",
    "essential.service",
    "third_party_sharing",
    "personalize.content.profiling",
    "functional.storage",
];
const CATEGORIES: [Option<&str>; 4] = [
    Some("user.contact.email"),
    Some("user.device.cookie_id"),
    Some("user.health_and_medical"),
    None,
];

/// A mixed set of questions across regimes, actions and consent states.
pub fn sample_questions() -> Vec<Question<'static>> {
    let mut out = Vec::new();
    for (i, j) in JURISDICTIONS.iter().enumerate() {
        for (k, p) in PURPOSES.iter().enumerate() {
            for (m, consent) in [
                ConsentState::None,
                ConsentState::Given,
                ConsentState::Refused,
            ]
            .into_iter()
            .enumerate()
            {
                let action = [Action::Collect, Action::Process, Action::Export][(i + k + m) % 3];
                let mut q = Question::new(action, j, p)
                    .with_consent(consent)
                    .with_gpc((i + m) % 2 == 0);
                if let Some(c) = CATEGORIES[(k + m) % CATEGORIES.len()] {
                    q = q.with_category(c);
                }
                if (k + m) % 4 == 0 {
                    q = q.with_age(15);
                }
                if action == Action::Export {
                    q = q.with_destination(if m == 1 { "tiktok" } else { "meta" });
                }
                out.push(q);
            }
        }
    }
    out
}

/// Runs the measurements on `engine` (its memo is cleared first and left warm).
pub fn run(engine: &PolicyEngine, opts: &BenchOptions) -> BenchReport {
    let questions = sample_questions();
    engine.clear_memo();

    // uncached: every sample is a full Cedar evaluation
    let samples = opts.uncached_samples.max(1);
    let mut times_ns: Vec<u128> = Vec::with_capacity(samples);
    for i in 0..samples {
        let q = &questions[i % questions.len()];
        let t = Instant::now();
        black_box(engine.decide_uncached(black_box(q)));
        times_ns.push(t.elapsed().as_nanos());
    }
    times_ns.sort_unstable();
    let pct = |p: f64| {
        let idx = ((times_ns.len() as f64 - 1.0) * p).round() as usize;
        times_ns.get(idx).copied().unwrap_or(0) as f64 / 1_000.0
    };
    let mean_us = times_ns.iter().sum::<u128>() as f64 / times_ns.len() as f64 / 1_000.0;

    // warm the memo
    for q in &questions {
        black_box(engine.decide(q));
    }

    let per_sec = |count: u64, elapsed: Duration| count as f64 / elapsed.as_secs_f64().max(1e-9);
    let (count, elapsed) = timed_loop(opts.memoized_duration, |i| {
        let q = &questions[i % questions.len()];
        black_box(engine.decide(black_box(q)).allowed)
    });
    let memo_rate = per_sec(count, elapsed);

    let (rcount, relapsed) = timed_loop(opts.memoized_duration, |i| {
        let q = &questions[i % questions.len()];
        black_box(engine.resolve(black_box(q)).is_ok())
    });
    let resolve_rate = per_sec(rcount, relapsed);

    let keys: Vec<_> = questions
        .iter()
        .filter_map(|q| engine.resolve(q).ok())
        .collect();
    let (kcount, kelapsed) = if keys.is_empty() {
        (0, Duration::from_secs(1))
    } else {
        timed_loop(opts.memoized_duration, |i| {
            black_box(engine.decide_key(black_box(keys[i % keys.len()])).allowed)
        })
    };
    let goal = 5_000_000.0;
    BenchReport {
        memoized_decisions_per_sec_per_core: memo_rate.round(),
        time_base: if thread_cpu_ns().is_some() {
            "thread_cpu_time"
        } else {
            "wall_clock"
        },
        memoized_decision_ns: if memo_rate > 0.0 {
            1e9 / memo_rate
        } else {
            0.0
        },
        resolve_ns: if resolve_rate > 0.0 {
            1e9 / resolve_rate
        } else {
            0.0
        },
        memoized_key_decisions_per_sec_per_core: per_sec(kcount, kelapsed).round(),
        uncached_eval_p50_us: pct(0.50),
        uncached_eval_p99_us: pct(0.99),
        uncached_eval_mean_us: mean_us,
        distinct_questions: questions.len(),
        uncached_samples: samples,
        rules: engine.rule_count(),
        policy_version: engine.policy_version().to_owned(),
        goal_memoized_decisions_per_sec_per_core: goal,
        goal_met: memo_rate >= goal,
    }
}

/// Nanoseconds this thread has spent on a CPU (Linux `schedstat`), if known.
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Calls `f(i)` in batches until `duration` of wall time has passed; returns
/// calls and the time this thread was on a CPU (wall time where unknown), so
/// that other processes sharing the core do not count against the engine.
fn timed_loop(duration: Duration, mut f: impl FnMut(usize) -> bool) -> (u64, Duration) {
    const BATCH: usize = 4_096;
    let start = Instant::now();
    let cpu_start = thread_cpu_ns();
    let mut count: u64 = 0;
    let mut i = 0usize;
    loop {
        for _ in 0..BATCH {
            black_box(f(i));
            i = i.wrapping_add(1);
        }
        count += BATCH as u64;
        let elapsed = start.elapsed();
        if elapsed >= duration {
            let on_cpu = match (cpu_start, thread_cpu_ns()) {
                (Some(a), Some(b)) if b > a => Duration::from_nanos(b - a),
                _ => elapsed,
            };
            return (count, on_cpu);
        }
    }
}
