//! `mixgan loadtest --flood`: expensive requests mixed with cheap ones. Portrait clients
//! measure the layout's latency on the idle server, then again while projection clients post
//! latent searches back to back (waiting out each 503's Retry-After); every answer must be a
//! picture or a 503, and the report gives the portraits' p99 under the flood against their idle
//! latency. It only measures.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{bail, Result};
use base64::Engine as _;

use super::loadtest::{agent, closed_loop, send, LoadResult, Target};

/// How the flood is made.
pub struct Flood {
    /// Clients posting projections.
    pub clients: usize,
    /// Steps of each projection.
    pub steps: usize,
    /// Clients posting the cheap layout, idle and under the flood.
    pub portraits: usize,
}

/// A `side` x `side` repair of a gradient picture whose one face region, the whole canvas,
/// projects for `steps` steps.
pub fn projection_layout(side: u32, steps: usize) -> Vec<u8> {
    let img = image::RgbImage::from_fn(side, side, |x, y| image::Rgb([(x * 4) as u8, (y * 4) as u8, 120]));
    let mut png = Vec::new();
    let _ = img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png);
    let picture = base64::engine::general_purpose::STANDARD.encode(&png);
    serde_json::json!({
        "width": side, "height": side, "background": {"image": picture},
        "regions": [{"class": "face", "box": [0, 0, side, side], "project": true, "project_steps": steps}],
    })
    .to_string()
    .into_bytes()
}

fn row(name: &str, r: &LoadResult) -> String {
    format!(
        "{name:<26} {:>6} answers, p50 {:>6.0} ms, p99 {:>6.0} ms, by status {:?}\n",
        r.statuses.values().sum::<usize>(),
        r.percentile(0.5) * 1e3,
        r.percentile(0.99) * 1e3,
        r.statuses
    )
}

pub fn run(portrait: &Target, flood: &Flood, duration: Duration, text: &mut String) -> Result<()> {
    let idle = closed_loop(portrait, flood.portraits, (duration / 3).max(Duration::from_secs(5)));
    *text += &format!(
        "flood: {} clients posting {}-step projections, {} posting the layout, {:.0} s\n",
        flood.clients,
        flood.steps,
        flood.portraits,
        duration.as_secs_f64()
    );
    *text += &row("layout, idle", &idle);
    let searches = Target { layout: projection_layout(64, flood.steps), ..portrait.clone() };
    let done = AtomicBool::new(false);
    let (flooded, projections) = std::thread::scope(|scope| {
        let posters: Vec<_> = (0..flood.clients)
            .map(|_| {
                scope.spawn(|| {
                    let agent = agent();
                    let mut statuses = BTreeMap::new();
                    while !done.load(Ordering::Relaxed) {
                        let (status, _) = send(&agent, &searches);
                        *statuses.entry(status).or_insert(0usize) += 1;
                        if status == 503 {
                            std::thread::sleep(Duration::from_secs(1)); // its Retry-After
                        }
                    }
                    statuses
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        let flooded = closed_loop(portrait, flood.portraits, duration);
        done.store(true, Ordering::Relaxed);
        let mut projections = LoadResult::default();
        for p in posters {
            for (status, n) in p.join().unwrap_or_default() {
                *projections.statuses.entry(status).or_default() += n;
            }
        }
        (flooded, projections)
    });
    *text += &row("layout, under the flood", &flooded);
    *text += &format!(
        "{:<26} {:>6} answers, by status {:?}\n",
        "projections",
        projections.statuses.values().sum::<usize>(),
        projections.statuses
    );
    let (idle_p50, p99) = (idle.percentile(0.5), flooded.percentile(0.99));
    *text += &format!(
        "layout p99 under the flood / idle p50: {:.2} (/ idle p99: {:.2})\n",
        p99 / idle_p50,
        p99 / idle.percentile(0.99)
    );
    let other: Vec<u16> = [&idle, &flooded, &projections]
        .iter()
        .flat_map(|r| r.statuses.keys().copied())
        .filter(|s| *s != 200 && *s != 503)
        .collect();
    if !other.is_empty() {
        bail!("answers other than 200 and 503: {other:?}");
    }
    Ok(())
}
