//! The in-flight window the cap guard learned from the upstream broker (`window::Learned`),
//! kept in `<data_dir>/upstream-window.json` so the next start begins with it. A missing file
//! is the normal case; a damaged one is logged and ignored: the window then starts as
//! configured and is learned again, at the cost of an `ack_timeout` per halving.

use std::path::Path;

use crate::mqtt::window::Learned;

/// The file, in the data dir.
pub const FILE: &str = "upstream-window.json";

/// The remembered window, if any.
pub fn read(path: &Path) -> Option<Learned> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(event = "upstream_window_unreadable", path = %path.display(), error = %e, "cannot read the learned upstream window; starting with the configured one");
            return None;
        }
    };
    match serde_json::from_slice(&text) {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(event = "upstream_window_unreadable", path = %path.display(), error = %e, "the learned upstream window file is damaged; starting with the configured one");
            None
        }
    }
}

/// Remembers `learned`, replacing the file whole.
pub fn write(path: &Path, learned: &Learned) -> std::io::Result<()> {
    let text = serde_json::to_vec_pretty(learned).map_err(std::io::Error::other)?;
    crate::sidefile::replace(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_learned_window_round_trips_and_a_missing_or_damaged_file_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        assert_eq!(read(&path), None);
        let l = Learned {
            broker: "a1b2c3-ats.iot.eu-west-1.amazonaws.com:8883".into(),
            configured: 200,
            window: 100,
        };
        write(&path, &l).unwrap();
        assert_eq!(read(&path), Some(l));
        std::fs::write(&path, b"{\"broker\":").unwrap();
        assert_eq!(read(&path), None);
    }
}
