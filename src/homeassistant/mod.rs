//! Home Assistant MQTT discovery (issue 16): the configs of `discovery` (pure) published the
//! way device status is, retained, through the pipeline (outbox then upstream, and the embedded
//! broker), so Home Assistant finds them on whichever broker it uses; published again on each
//! birth message from either broker (`mqtt::birth`); and removed when a point or device left
//! the config.
//!
//! Removal needs to know what was published before, across restarts: the topics are kept in
//! `<data_dir>/homeassistant-discovery.json`. At start the file becomes everything published
//! before or now, before anything is sent, so a crash can only make a later start clear a topic
//! twice (harmless), never forget one; a clean stop (after the pipeline committed everything)
//! narrows it to what is current (`settle`). With discovery switched off, everything the file
//! names is cleared and the file goes away.

pub mod discovery;
pub mod units;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::flow::{Message, Route, Routed};

/// The file, in the data dir, naming every discovery topic the gateway may have published.
pub const STATE_FILE: &str = "homeassistant-discovery.json";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("Home Assistant discovery state {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The discovery publisher of one run.
pub struct Discovery {
    /// The current configs (empty when discovery is off: then only clearing is left to do).
    pub documents: Vec<Message>,
    pub data_dir: PathBuf,
    /// Into the pipeline, like device status.
    pub tx: mpsc::Sender<Routed>,
}

impl Discovery {
    /// Clears stale topics, publishes the current configs, then publishes them again on every
    /// birth until `stop`. Gives the births back, for the publisher of a reloaded config.
    pub async fn run(
        self,
        mut births: Option<mpsc::Receiver<()>>,
        stop: CancellationToken,
    ) -> Option<mpsc::Receiver<()>> {
        let path = self.data_dir.join(STATE_FILE);
        let previous = read_state(&path);
        let stale: Vec<String> = discovery::stale(&previous, &self.documents)
            .into_iter()
            .map(str::to_string)
            .collect();
        let mut known = previous.clone();
        known.extend(self.documents.iter().map(|m| m.topic.clone()));
        if known != previous {
            if let Err(e) = write_state(&path, &known) {
                // Stale configs of a later shrink would stay in Home Assistant; publishing now
                // still works.
                tracing::error!(event = "discovery_state_failed", error = %e, "cannot record the published Home Assistant discovery topics");
            }
        }
        if !stale.is_empty() {
            tracing::info!(
                removed = stale.len(),
                "clearing Home Assistant discovery configs no longer in the config"
            );
        }
        let clears = stale.iter().map(|t| discovery::removal(t));
        if !self
            .send(clears.chain(self.documents.iter().cloned()))
            .await
        {
            return births;
        }
        if !self.documents.is_empty() {
            tracing::info!(
                entities = self.documents.len(),
                "Home Assistant discovery published"
            );
        }
        let Some(rx) = births.as_mut() else {
            return births;
        };
        loop {
            tokio::select! {
                b = rx.recv() => {
                    // The birth watchers are gone: nothing left to give back.
                    b?;
                    tracing::info!("Home Assistant came online: discovery published again");
                    if !self.send(self.documents.iter().cloned()).await {
                        return births;
                    }
                }
                _ = stop.cancelled() => return births,
            }
        }
    }

    /// False when the pipeline has stopped.
    async fn send(&self, messages: impl Iterator<Item = Message>) -> bool {
        for message in messages {
            let routed = Routed {
                message,
                route: Route::Everywhere,
            };
            if self.tx.send(routed).await.is_err() {
                return false;
            }
        }
        true
    }
}

/// After a clean stop (everything sent is committed): the file names only the current configs,
/// or is removed when there are none.
pub fn settle(data_dir: &Path, documents: &[Message]) -> Result<(), StateError> {
    let path = data_dir.join(STATE_FILE);
    if documents.is_empty() {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(StateError::Io { path, source: e })
            }
            _ => Ok(()),
        };
    }
    let current: BTreeSet<String> = documents.iter().map(|m| m.topic.clone()).collect();
    if read_state(&path) == current {
        return Ok(());
    }
    write_state(&path, &current)
}

/// Whether there is anything to clear or publish: discovery is on, or was on in an earlier run.
pub fn has_work(data_dir: &Path, documents: &[Message]) -> bool {
    !documents.is_empty() || data_dir.join(STATE_FILE).exists()
}

/// The recorded topics; none when the file is missing. An unreadable file is logged: its
/// stale configs cannot be cleared, nothing else is lost.
fn read_state(path: &Path) -> BTreeSet<String> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return BTreeSet::new(),
        Err(e) => {
            tracing::error!(event = "discovery_state_failed", path = %path.display(), error = %e, "cannot read the published Home Assistant discovery topics; stale ones are not cleared");
            return BTreeSet::new();
        }
    };
    match serde_json::from_slice::<BTreeSet<String>>(&text) {
        Ok(topics) => topics,
        Err(e) => {
            tracing::error!(event = "discovery_state_failed", path = %path.display(), error = %e, "the published Home Assistant discovery topics file is damaged; stale ones are not cleared");
            BTreeSet::new()
        }
    }
}

/// Replaced whole (`sidefile`), so a crash leaves the old list or the new one.
fn write_state(path: &Path, topics: &BTreeSet<String>) -> Result<(), StateError> {
    let io = |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    };
    let text = serde_json::to_vec_pretty(topics).map_err(|e| io(e.into()))?;
    crate::sidefile::replace(path, &text).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_file_round_trips_and_settles_to_the_current_topics_or_goes_away() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        assert!(read_state(&path).is_empty(), "missing file: nothing");
        let set: BTreeSet<String> = ["a/config", "b/config"].map(String::from).into();
        write_state(&path, &set).unwrap();
        assert_eq!(read_state(&path), set);
        settle(dir.path(), &[discovery::removal("b/config")]).unwrap();
        assert_eq!(read_state(&path), ["b/config".to_string()].into());
        settle(dir.path(), &[]).unwrap();
        assert!(!path.exists());
        std::fs::write(&path, b"{not json").unwrap();
        assert!(read_state(&path).is_empty(), "damaged file: nothing");
    }
}
