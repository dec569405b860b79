//! The request side of the Transmission RPC (the classic protocol,
//! `rpc-version` 17): a POST body `{"method", "arguments", "tag"}` parsed
//! into a [`Request`], and typed readers for the arguments the methods take
//! ([`Args`]), each failing with an [`RpcError`] that names the key and
//! what was wrong. Sans-IO like the rest of the crate; the daemon's HTTP
//! layer bounds the body before it gets here.

use serde_json::{Map, Value};

/// Why a request or one of its arguments was refused. The text goes back
/// to the client as the `result` string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    /// The body is not JSON.
    #[error("request body is not JSON: {0}")]
    Json(String),
    /// The body is JSON but not an object.
    #[error("request body is not a JSON object")]
    NotObject,
    /// `method` is missing or not a string.
    #[error("no \"method\" string in the request")]
    NoMethod,
    /// `arguments` is present but not an object.
    #[error("\"arguments\" is not an object")]
    ArgumentsNotObject,
    /// An argument has the wrong type or value.
    #[error("argument \"{key}\": {what}")]
    Bad {
        /// The argument.
        key: String,
        /// What was wrong.
        what: String,
    },
}

fn bad(key: &str, what: impl Into<String>) -> RpcError {
    RpcError::Bad {
        key: key.to_owned(),
        what: what.into(),
    }
}

/// Longest method name accepted; every real one is far shorter.
const MAX_METHOD: usize = 64;

/// One parsed request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The method, e.g. `torrent-get`.
    pub method: String,
    /// Its arguments (empty when absent).
    pub arguments: Args,
    /// The client's tag, echoed in the response: a number, as Transmission
    /// sends it (anything else is not echoed).
    pub tag: Option<i64>,
}

/// Parses a request body.
pub fn parse_request(body: &[u8]) -> Result<Request, RpcError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| RpcError::Json(e.to_string()))?;
    let Value::Object(mut obj) = v else {
        return Err(RpcError::NotObject);
    };
    let method = match obj.remove("method") {
        Some(Value::String(m)) if !m.is_empty() && m.len() <= MAX_METHOD => m,
        _ => return Err(RpcError::NoMethod),
    };
    let arguments = match obj.remove("arguments") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(RpcError::ArgumentsNotObject),
    };
    let tag = obj.get("tag").and_then(Value::as_i64);
    Ok(Request {
        method,
        arguments: Args(arguments),
        tag,
    })
}

/// One torrent named in `ids`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdRef {
    /// The daemon's number for it.
    Id(i64),
    /// Its info-hash.
    Hash([u8; 20]),
}

/// Which torrents a method acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ids {
    /// `ids` absent: every torrent.
    All,
    /// `"recently-active"`: those active in the last minute.
    RecentlyActive,
    /// The torrents listed.
    List(Vec<IdRef>),
}

/// A method's arguments, with typed readers.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Args(pub Map<String, Value>);

impl Args {
    /// Whether `key` is present (and not null).
    pub fn has(&self, key: &str) -> bool {
        self.0.get(key).is_some_and(|v| !v.is_null())
    }

    /// A string argument.
    pub fn str(&self, key: &str) -> Result<Option<&str>, RpcError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(bad(key, "not a string")),
        }
    }

    /// A boolean argument; Transmission's clients also send 0 and 1.
    pub fn bool(&self, key: &str) -> Result<Option<bool>, RpcError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::Number(n)) if n.as_i64() == Some(0) => Ok(Some(false)),
            Some(Value::Number(n)) if n.as_i64() == Some(1) => Ok(Some(true)),
            Some(_) => Err(bad(key, "not a boolean")),
        }
    }

    /// An integer argument.
    pub fn int(&self, key: &str) -> Result<Option<i64>, RpcError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => Ok(Some(i)),
                // A whole number written as a float (JavaScript clients).
                (None, Some(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Some(f as i64)),
                _ => Err(bad(key, "not an integer")),
            },
            Some(_) => Err(bad(key, "not a number")),
        }
    }

    /// A number argument (ratios).
    pub fn float(&self, key: &str) -> Result<Option<f64>, RpcError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_f64()
                .filter(|f| f.is_finite())
                .map(Some)
                .ok_or_else(|| bad(key, "not a finite number")),
            Some(_) => Err(bad(key, "not a number")),
        }
    }

    /// A list of strings (`fields`, `labels`).
    pub fn strings(&self, key: &str) -> Result<Option<Vec<&str>>, RpcError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .ok_or_else(|| bad(key, "an item is not a string"))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(bad(key, "not a list of strings")),
        }
    }

    /// A list of file indices (`files-wanted`, `priority-high`, ...), each
    /// below `count`. An empty list means every file, as in Transmission.
    pub fn file_indices(&self, key: &str, count: usize) -> Result<Option<Vec<usize>>, RpcError> {
        let items = match self.0.get(key) {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Array(items)) => items,
            Some(_) => return Err(bad(key, "not a list of file indices")),
        };
        if items.is_empty() {
            return Ok(Some((0..count).collect()));
        }
        items
            .iter()
            .map(|v| match v.as_u64() {
                Some(i) if (i as usize) < count && i < u64::from(u32::MAX) => Ok(i as usize),
                Some(i) => Err(bad(key, format!("no file {i} (the torrent has {count})"))),
                None => Err(bad(key, "an item is not a file index")),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// The `ids` argument.
    pub fn ids(&self) -> Result<Ids, RpcError> {
        let one = |v: &Value| -> Result<IdRef, RpcError> {
            match v {
                Value::Number(n) => n
                    .as_i64()
                    .map(IdRef::Id)
                    .ok_or_else(|| bad("ids", "an id is not an integer")),
                Value::String(s) => parse_hash(s)
                    .map(IdRef::Hash)
                    .ok_or_else(|| bad("ids", format!("`{}` is not an info-hash", clip(s)))),
                _ => Err(bad("ids", "an item is neither a number nor a hash string")),
            }
        };
        match self.0.get("ids") {
            None | Some(Value::Null) => Ok(Ids::All),
            Some(Value::String(s)) if s == "recently-active" => Ok(Ids::RecentlyActive),
            Some(Value::Array(items)) => items
                .iter()
                .map(one)
                .collect::<Result<Vec<_>, _>>()
                .map(Ids::List),
            Some(v) => one(v).map(|i| Ids::List(vec![i])),
        }
    }
}

/// At most 40 characters of `s`, for error messages that echo input.
fn clip(s: &str) -> String {
    s.chars().take(40).collect()
}

/// A 40-digit hex info-hash (either case).
pub fn parse_hash(s: &str) -> Option<[u8; 20]> {
    if s.len() != 40 {
        return None;
    }
    let mut out = [0u8; 20];
    for (i, pair) in s.as_bytes().chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// Decodes the `metainfo` argument of `torrent-add` (standard base64;
/// whitespace such as line breaks is ignored), refusing anything that
/// would decode to more than `max` bytes before decoding it.
pub fn decode_base64(s: &str, max: usize) -> Result<Vec<u8>, RpcError> {
    use base64::Engine;
    let clean: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    if clean.len() / 4 * 3 > max {
        return Err(bad("metainfo", format!("longer than {max} bytes")));
    }
    base64::engine::general_purpose::STANDARD
        .decode(clean.as_bytes())
        .map_err(|e| bad("metainfo", format!("not base64: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_request_and_its_arguments() {
        let r = parse_request(
            br#"{"method":"torrent-get","arguments":{"fields":["id","name"],"ids":[1,"0123456789abcdef0123456789ABCDEF01234567"]},"tag":7}"#,
        )
        .unwrap();
        assert_eq!(r.method, "torrent-get");
        assert_eq!(r.tag, Some(7));
        assert_eq!(
            r.arguments.strings("fields").unwrap(),
            Some(vec!["id", "name"])
        );
        let Ids::List(ids) = r.arguments.ids().unwrap() else {
            panic!("a list")
        };
        assert_eq!(ids[0], IdRef::Id(1));
        assert!(matches!(ids[1], IdRef::Hash(h) if h[0] == 0x01 && h[19] == 0x67));
    }

    #[test]
    fn ids_forms() {
        let args = |s: &str| parse_request(s.as_bytes()).unwrap().arguments;
        assert_eq!(args(r#"{"method":"x"}"#).ids().unwrap(), Ids::All);
        assert_eq!(
            args(r#"{"method":"x","arguments":{"ids":"recently-active"}}"#)
                .ids()
                .unwrap(),
            Ids::RecentlyActive
        );
        assert_eq!(
            args(r#"{"method":"x","arguments":{"ids":3}}"#)
                .ids()
                .unwrap(),
            Ids::List(vec![IdRef::Id(3)])
        );
        let e = args(r#"{"method":"x","arguments":{"ids":"nope"}}"#)
            .ids()
            .unwrap_err();
        assert!(e.to_string().contains("ids"), "{e}");
        assert!(
            args(r#"{"method":"x","arguments":{"ids":[{}]}}"#)
                .ids()
                .is_err()
        );
    }

    #[test]
    fn hostile_bodies_are_errors() {
        for body in [
            &b""[..],
            b"[]",
            b"{",
            b"{\"method\":1}",
            b"{\"method\":\"\"}",
            b"{\"method\":\"x\",\"arguments\":[]}",
            b"\xff\xfe",
        ] {
            assert!(parse_request(body).is_err(), "{body:?}");
        }
        let long = format!("{{\"method\":\"{}\"}}", "m".repeat(100));
        assert_eq!(parse_request(long.as_bytes()), Err(RpcError::NoMethod));
    }

    #[test]
    fn typed_readers_name_the_key() {
        let a = parse_request(
            br#"{"method":"x","arguments":{"paused":"yes","n":1.5,"files-wanted":[0,9],"all":[]}}"#,
        )
        .unwrap()
        .arguments;
        assert!(a.bool("paused").unwrap_err().to_string().contains("paused"));
        assert!(a.int("n").is_err());
        assert!(
            a.file_indices("files-wanted", 3)
                .unwrap_err()
                .to_string()
                .contains("no file 9")
        );
        assert_eq!(a.file_indices("all", 3).unwrap(), Some(vec![0, 1, 2]));
        assert_eq!(a.int("missing").unwrap(), None);
    }

    #[test]
    fn base64_is_bounded() {
        assert_eq!(decode_base64("aGVs\nbG8=", 100).unwrap(), b"hello");
        assert!(decode_base64("aGVsbG8=", 2).is_err());
        assert!(decode_base64("!!!!", 100).is_err());
    }
}
