//! `mixgan loadtest`'s account of where a served request's time went: the server's own
//! histograms (`/metrics`) read before and after the service rounds, and the mean of what
//! was added in between, per pipeline stage and per model's batches. It only reads.

use std::collections::HashMap;

use super::loadtest::Target;

/// One scrape of `/metrics`: each series (name with its labels) and its value.
pub type Scrape = HashMap<String, f64>;

/// The server's metrics now, or `None` where they cannot be read.
pub fn scrape(t: &Target) -> Option<Scrape> {
    let agent = super::loadtest::agent();
    let mut req = agent.get(format!("{}/metrics", t.url));
    if let Some(k) = &t.api_key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let mut answer = req.call().ok()?;
    if answer.status().as_u16() != 200 {
        return None;
    }
    Some(parse(&answer.body_mut().read_to_string().ok()?))
}

/// Prometheus text: `name{labels} value` lines; comments and unreadable values are skipped.
pub fn parse(text: &str) -> Scrape {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

const STAGES: [&str; 7] = ["route", "detect", "project", "queue", "generate", "composite", "encode"];

/// The mean of a histogram's observations between two scrapes, where there were any.
fn mean(before: &Scrape, after: &Scrape, name: &str, label: &str) -> Option<(f64, f64)> {
    let added = |part: &str| {
        let key = format!("{name}_{part}{{{label}}}");
        after.get(&key).copied().unwrap_or(0.0) - before.get(&key).copied().unwrap_or(0.0)
    };
    let count = added("count");
    (count > 0.0).then(|| (added("sum") / count, count))
}

/// Two lines: each stage's mean milliseconds per request, and each model's mean batch (patches
/// and milliseconds) and its jobs' mean wait, over what the server did between the scrapes.
pub fn report(before: &Scrape, after: &Scrape) -> String {
    let stages: Vec<String> = STAGES
        .iter()
        .filter_map(|s| {
            let (m, _) = mean(before, after, "mixgan_stage_duration_seconds", &format!("stage=\"{s}\""))?;
            Some(format!("{s} {:.2}", m * 1e3))
        })
        .collect();
    let mut models: Vec<&str> =
        after.keys().filter_map(|k| k.strip_prefix("mixgan_batch_size_count{model=\"")?.strip_suffix("\"}")).collect();
    models.sort_unstable();
    let batches: Vec<String> = models
        .iter()
        .filter_map(|m| {
            let label = format!("model=\"{m}\"");
            let (size, count) = mean(before, after, "mixgan_batch_size", &label)?;
            let (secs, _) = mean(before, after, "mixgan_batch_duration_seconds", &label)?;
            let wait = mean(before, after, "mixgan_queue_duration_seconds", &label).map_or(0.0, |w| w.0);
            Some(format!("{m} {count:.0} batches of {size:.1} in {:.2} ms, waited {:.2} ms", secs * 1e3, wait * 1e3))
        })
        .collect();
    format!(
        "where a served request's time went (means, ms): {}\nthe generators' batches meanwhile: {}\n",
        stages.join(", "),
        batches.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_means_are_of_what_was_added_between_scrapes() {
        let before = parse(
            "# HELP x\nmixgan_stage_duration_seconds_sum{stage=\"generate\"} 1.0\n\
             mixgan_stage_duration_seconds_count{stage=\"generate\"} 10\n\
             mixgan_batch_size_sum{model=\"face\"} 20\nmixgan_batch_size_count{model=\"face\"} 10\n",
        );
        let after = parse(
            "mixgan_stage_duration_seconds_sum{stage=\"generate\"} 1.5\n\
             mixgan_stage_duration_seconds_count{stage=\"generate\"} 20\n\
             mixgan_stage_duration_seconds_sum{stage=\"encode\"} 0.02\n\
             mixgan_stage_duration_seconds_count{stage=\"encode\"} 10\n\
             mixgan_batch_size_sum{model=\"face\"} 60\nmixgan_batch_size_count{model=\"face\"} 20\n\
             mixgan_batch_duration_seconds_sum{model=\"face\"} 0.1\n\
             mixgan_batch_duration_seconds_count{model=\"face\"} 10\n",
        );
        let text = report(&before, &after);
        assert!(text.contains("generate 50.00, encode 2.00\n"), "{text}");
        assert!(text.contains("face 10 batches of 4.0 in 10.00 ms, waited 0.00 ms"), "{text}");
        assert!(!text.contains("route"), "stages with nothing added are left out: {text}");
    }
}
