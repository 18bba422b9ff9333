//! Corruption lists and levels as the CLI and configs write them (`1-5`, `paper`,
//! `geometric,haze`).

use super::{Corruption, Family, MAX_LEVEL};

/// Parses levels: `"1-5"`, `"3"`, `"1,3,5"`.
pub fn parse_levels(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("levels '{s}': use a range like 1-5 or a list like 1,3,5 (levels 1..={})", MAX_LEVEL);
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse::<u8>().map_err(|_| bad())?, b.trim().parse::<u8>().map_err(|_| bad())?),
            None => {
                let v = part.parse::<u8>().map_err(|_| bad())?;
                (v, v)
            }
        };
        if a == 0 || b > MAX_LEVEL || a > b {
            return Err(bad());
        }
        out.extend(a..=b);
    }
    out.sort_unstable();
    out.dedup();
    if out.is_empty() {
        return Err(format!("levels '{s}' names no level"));
    }
    Ok(out)
}

/// Parses corruption kinds: `all`, `legacy` (the first ten, CURE-TSR-style), `broad` (the
/// others), `paper` (the paper's 8), `none`, or a comma list of type names and family names
/// (`geometric,haze` = the four geometric types and haze), without duplicates.
pub fn parse_corruptions(s: &str) -> Result<Vec<Corruption>, String> {
    match s.trim() {
        "all" => Ok(Corruption::ALL.to_vec()),
        "legacy" => Ok(Corruption::LEGACY.to_vec()),
        "broad" => Ok(Corruption::ALL.into_iter().filter(|k| k.strengths().is_some()).collect()),
        "paper" => Ok(Corruption::PAPER.to_vec()),
        "none" | "" => Ok(Vec::new()),
        list => {
            let mut out: Vec<Corruption> = Vec::new();
            for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let kinds = match part.parse::<Family>() {
                    Ok(f) => f.members(),
                    Err(_) => vec![part.parse::<Corruption>().map_err(|e| e.to_string())?],
                };
                for k in kinds {
                    if !out.contains(&k) {
                        out.push(k);
                    }
                }
            }
            Ok(out)
        }
    }
}

impl std::str::FromStr for Family {
    type Err = String;

    /// Parses a family name as [`Family::name`] writes it (`color` is accepted for `colour`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm = s.trim().to_ascii_lowercase();
        let norm = if norm == "color" { "colour".to_string() } else { norm };
        Family::ALL
            .into_iter()
            .find(|f| f.name() == norm)
            .ok_or_else(|| format!("unknown family `{s}`; valid: {}", Family::ALL.map(Family::name).join(", ")))
    }
}
