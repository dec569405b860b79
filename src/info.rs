//! `actorrent info`: describe a torrent file or a magnet link, as text for
//! people or as one JSON object for scripts.

use std::path::PathBuf;

use anyhow::anyhow;
use protocol::magnet::Magnet;
use protocol::metainfo::Metainfo;
use serde_json::{Value, json};

use crate::Failure;

/// Largest torrent file we are willing to read; real ones are far smaller
/// (100k pieces is 2 MB of hashes), so anything bigger is a mistake or hostile.
const MAX_TORRENT_FILE: u64 = 64 * 1024 * 1024;

#[derive(clap::Args, Debug)]
pub struct InfoArgs {
    /// A .torrent file, or a magnet link (`magnet:?xt=urn:btih:...`).
    pub source: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &InfoArgs) -> Result<(), Failure> {
    let value = if args.source.starts_with("magnet:") {
        let magnet = Magnet::parse(&args.source)
            .map_err(|e| Failure::BadInput(anyhow!("invalid magnet link: {e}")))?;
        magnet_json(&magnet)
    } else {
        let path = PathBuf::from(&args.source);
        let bytes = read_torrent(&path)?;
        let meta = Metainfo::from_bytes(&bytes).map_err(|e| {
            Failure::BadInput(anyhow!("{}: not a valid torrent: {e}", path.display()))
        })?;
        metainfo_json(&meta)
    };
    if args.json {
        println!("{value}");
    } else {
        print_text(&value);
    }
    Ok(())
}

/// Reads a torrent file, refusing sizes no real torrent has before allocating.
pub fn read_torrent(path: &std::path::Path) -> Result<Vec<u8>, Failure> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Failure::BadInput(anyhow!("{}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(Failure::BadInput(anyhow!(
            "{}: not a regular file",
            path.display()
        )));
    }
    if meta.len() > MAX_TORRENT_FILE {
        return Err(Failure::BadInput(anyhow!(
            "{}: {} bytes is larger than the {} byte limit for a torrent file",
            path.display(),
            meta.len(),
            MAX_TORRENT_FILE
        )));
    }
    std::fs::read(path).map_err(|e| Failure::BadInput(anyhow!("{}: {e}", path.display())))
}

fn metainfo_json(meta: &Metainfo) -> Value {
    let info = &meta.info;
    // Indices as `download --only` and the stream URLs take them.
    let files: Vec<Value> = info
        .files
        .iter()
        .filter(|f| !f.padding)
        .enumerate()
        .map(|(i, f)| json!({ "index": i, "path": f.path, "length": f.length }))
        .collect();
    json!({
        "info_hash": meta.info_hash.to_hex(),
        "name": info.name,
        "piece_length": info.piece_length,
        "pieces": info.piece_count(),
        "total_length": info.total_length,
        "private": info.private,
        "files": files,
        "trackers": meta.trackers,
        "url_list": meta.url_list,
        "comment": meta.comment,
        "created_by": meta.created_by,
        "creation_date": meta.creation_date,
    })
}

fn magnet_json(magnet: &Magnet) -> Value {
    // A magnet link carries no metadata: everything but the hash, the name
    // and the trackers is unknown until the info dictionary is fetched.
    let trackers: Vec<Vec<String>> = magnet.trackers.iter().map(|t| vec![t.clone()]).collect();
    json!({
        "info_hash": magnet.info_hash.to_hex(),
        "name": magnet.display_name,
        "piece_length": null,
        "pieces": null,
        "total_length": null,
        "private": null,
        "files": null,
        "trackers": trackers,
        "peers": magnet.peers,
    })
}

fn print_text(v: &Value) {
    let show = |v: &Value| match v {
        Value::Null => "unknown".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    println!("name:         {}", show(&v["name"]));
    println!("info hash:    {}", show(&v["info_hash"]));
    println!("piece length: {}", show(&v["piece_length"]));
    println!("pieces:       {}", show(&v["pieces"]));
    println!("total length: {}", show(&v["total_length"]));
    if let Some(true) = v["private"].as_bool() {
        println!("private:      yes");
    }
    match v["files"].as_array() {
        Some(files) => {
            println!("files:        {}", files.len());
            for f in files {
                let path: Vec<&str> = f["path"]
                    .as_array()
                    .map(|p| p.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                println!(
                    "  {:>4}  {:>14}  {}",
                    show(&f["index"]),
                    show(&f["length"]),
                    path.join("/")
                );
            }
        }
        None => println!("files:        unknown"),
    }
    match v["trackers"].as_array() {
        Some(tiers) if !tiers.is_empty() => {
            println!("trackers:");
            for (i, tier) in tiers.iter().enumerate() {
                for url in tier.as_array().into_iter().flatten() {
                    println!("  tier {i}: {}", show(url));
                }
            }
        }
        _ => println!("trackers:     none"),
    }
}
