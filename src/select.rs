//! `download --only`, `--skip`, `--high`, `--low`: which files to fetch and
//! in which order, as one priority per file (numbered as `info` lists them,
//! padding files left out).
//!
//! Every file starts at normal. `--only LIST` skips the files not listed;
//! `--skip GLOB` (repeatable) skips the files whose path (as `info` prints
//! it, `/`-separated) matches; `--high LIST` and `--low LIST` set the
//! priority of wanted files. A list is comma-separated indices and
//! inclusive ranges (`0,3-5`). Anything that names no file (an index out of
//! range, a reversed range, a glob matching nothing), or a file both skipped
//! and given a priority, is bad input naming what was wrong.

use std::collections::BTreeSet;

use actors::picker::Priority;
use protocol::metainfo::Info;

/// The selection flags of `download`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SelectArgs {
    /// Download only these files: indices as `info` lists them, and
    /// ranges, e.g. `0,3-5`. The others are not created.
    #[arg(long, value_name = "LIST")]
    pub only: Option<String>,
    /// Skip the files whose path matches this glob (repeatable), e.g.
    /// `--skip '*.nfo'`.
    #[arg(long, value_name = "GLOB")]
    pub skip: Vec<String>,
    /// Fetch these files first (indices and ranges).
    #[arg(long, value_name = "LIST")]
    pub high: Option<String>,
    /// Fetch these files last (indices and ranges).
    #[arg(long, value_name = "LIST")]
    pub low: Option<String>,
}

/// One priority per file, from the flags (every file normal without them).
pub fn priorities(args: &SelectArgs, info: &Info) -> Result<Vec<Priority>, String> {
    let paths: Vec<String> = info
        .files
        .iter()
        .filter(|f| !f.padding)
        .map(|f| f.path.join("/"))
        .collect();
    let n = paths.len();
    let mut out = vec![Priority::Normal; n];
    if let Some(list) = &args.only {
        let keep = parse_list("--only", list, n)?;
        for (i, p) in out.iter_mut().enumerate() {
            if !keep.contains(&i) {
                *p = Priority::Skip;
            }
        }
    }
    for pattern in &args.skip {
        let glob = globset::Glob::new(pattern)
            .map_err(|e| format!("--skip `{pattern}`: {e}"))?
            .compile_matcher();
        let mut matched = false;
        for (i, path) in paths.iter().enumerate() {
            if glob.is_match(path) {
                out[i] = Priority::Skip;
                matched = true;
            }
        }
        if !matched {
            return Err(format!("--skip `{pattern}` matches no file of the torrent"));
        }
    }
    for (flag, list, level) in [
        ("--high", &args.high, Priority::High),
        ("--low", &args.low, Priority::Low),
    ] {
        let Some(list) = list else { continue };
        for i in parse_list(flag, list, n)? {
            if out[i] == Priority::Skip {
                return Err(format!("{flag}: file {i} is also skipped"));
            }
            out[i] = level;
        }
    }
    if args.high.is_some() && args.low.is_some() {
        let high = parse_list("--high", args.high.as_deref().unwrap_or(""), n)?;
        let low = parse_list("--low", args.low.as_deref().unwrap_or(""), n)?;
        if let Some(i) = high.intersection(&low).next() {
            return Err(format!("file {i} is in both --high and --low"));
        }
    }
    if out.iter().all(|p| *p == Priority::Skip) {
        return Err("the selection leaves no file to download".into());
    }
    Ok(out)
}

/// `0,3-5` into {0, 3, 4, 5}, every index below `n`.
pub fn parse_list(flag: &str, list: &str, n: usize) -> Result<BTreeSet<usize>, String> {
    let bad = |item: &str, why: String| format!("{flag} `{item}`: {why}");
    let index = |item: &str, s: &str| -> Result<usize, String> {
        let i: usize = s
            .trim()
            .parse()
            .map_err(|_| bad(item, format!("`{}` is not a file index", s.trim())))?;
        if i >= n {
            let last = n.saturating_sub(1);
            return Err(bad(
                item,
                format!("file index {i} is out of range (the torrent has {n} files, 0-{last})"),
            ));
        }
        Ok(i)
    };
    let mut out = BTreeSet::new();
    for item in list.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err(format!("{flag} `{list}`: an empty item"));
        }
        match item.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (index(item, a)?, index(item, b)?);
                if a > b {
                    return Err(bad(item, "the range is reversed".into()));
                }
                out.extend(a..=b);
            }
            None => {
                out.insert(index(item, item)?);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_their_errors() {
        assert_eq!(
            parse_list("--only", "0, 3-5,2", 6).unwrap(),
            BTreeSet::from([0, 2, 3, 4, 5])
        );
        assert_eq!(parse_list("--only", "4-4", 5).unwrap(), BTreeSet::from([4]));
        for (list, what) in [
            ("5", "out of range"),
            ("1-9", "out of range"),
            ("3-1", "reversed"),
            ("a", "not a file index"),
            ("-1", "not a file index"),
            ("1,,2", "empty item"),
            ("", "empty item"),
        ] {
            let e = parse_list("--only", list, 5).unwrap_err();
            assert!(e.contains(what), "{list}: {e}");
            assert!(e.starts_with("--only"), "{e}");
        }
    }
}
