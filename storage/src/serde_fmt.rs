//! How configuration values look in TOML: shared by the storage and actor
//! configs so the whole config file follows one rule.
//!
//! - Durations are integer milliseconds under a key ending in `_ms`
//!   (`queue_time_ms = 3000`): one unit everywhere, named in the key, no
//!   suffix parsing, and exact round-trips.
//! - Optional limits are integers where 0 means "none" (unlimited, or the
//!   OS default for socket buffers). TOML has no null, and an omitted key
//!   means "the default", so `None` needs a value of its own to be written
//!   by `--print-default` and read back.

/// `Duration` as integer milliseconds.
pub mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes whole milliseconds (sub-millisecond parts are dropped).
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// Reads a non-negative integer of milliseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// `Option<T>` of an integer, `None` written as 0.
pub mod zero_is_none {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// Writes the value, or 0 for `None`.
    pub fn serialize<T, S>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error>
    where
        T: Serialize + Default,
        S: Serializer,
    {
        match v {
            Some(v) => v.serialize(s),
            None => T::default().serialize(s),
        }
    }

    /// Reads an integer; 0 becomes `None`.
    pub fn deserialize<'de, T, D>(d: D) -> Result<Option<T>, D::Error>
    where
        T: Deserialize<'de> + Default + PartialEq,
        D: Deserializer<'de>,
    {
        let v = T::deserialize(d)?;
        Ok(if v == T::default() { None } else { Some(v) })
    }
}
