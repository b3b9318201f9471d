//! Seed lists as `mixgan generate --seeds` takes them: `0,1,42`, `0-9`, or both.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SeedError {
    #[error("`{0}` is not a seed (0 to 4294967295)")]
    NotASeed(String),
    #[error("seed range `{0}` runs backwards")]
    Backwards(String),
    #[error("seed range `{0}` holds more than a million seeds")]
    TooMany(String),
    #[error("no seeds given")]
    Empty,
}

/// Parses a seed list such as `0,1,42` or `0-9,100`.
pub fn parse_seeds(text: &str) -> Result<Vec<u32>, SeedError> {
    let mut seeds = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let parse = |s: &str| s.trim().parse::<u32>().map_err(|_| SeedError::NotASeed(s.trim().into()));
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (parse(a)?, parse(b)?);
                if a > b {
                    return Err(SeedError::Backwards(part.into()));
                }
                if (b - a) as usize >= 1_000_000 {
                    return Err(SeedError::TooMany(part.into()));
                }
                seeds.extend(a..=b);
            }
            None => seeds.push(parse(part)?),
        }
    }
    if seeds.is_empty() {
        return Err(SeedError::Empty);
    }
    Ok(seeds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_lists_and_ranges() {
        assert_eq!(parse_seeds("0-3,42").unwrap(), vec![0, 1, 2, 3, 42]);
        assert_eq!(parse_seeds("3-1"), Err(SeedError::Backwards("3-1".into())));
        assert_eq!(parse_seeds("x"), Err(SeedError::NotASeed("x".into())));
        assert_eq!(parse_seeds(""), Err(SeedError::Empty));
        assert_eq!(parse_seeds("0-4294967295"), Err(SeedError::TooMany("0-4294967295".into())));
    }
}
