//! Passwords of broker users: Argon2id hashes in PHC strings (`$argon2id$v=19$m=…`), the
//! password file format, and verification.
//!
//! Parameters: m = 19 MiB, t = 2, p = 1 (the OWASP baseline for Argon2id). Measured about 25 ms
//! per verification on the x86 build machine; a Raspberry Pi 4 is roughly 4× slower, so about
//! 0.1 s, paid once per CONNECT and never on the data path. Verification reads the parameters
//! from each hash, so stronger hashes made elsewhere work too. Nothing is cached: a successful
//! verification is not remembered, and no plain password is kept after the CONNECT is checked.
//!
//! The broker checks passwords on a `Verifier`: a fixed pool of workers with preallocated Argon2
//! memory, so a login storm costs bounded memory (see there).
//!
//! Password file: one `user:hash` per line; blank lines and lines starting with `#` are
//! ignored. `fieldbridge passwd --file F USER` creates or updates a line.

use std::path::Path;

use argon2::password_hash::{Output, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot hash the password: {0}")]
    Hash(String),
    #[error("{file}: {source}")]
    Io {
        file: String,
        source: std::io::Error,
    },
}

const M_COST_KIB: u32 = 19 * 1024;
const T_COST: u32 = 2;
const P_COST: u32 = 1;

fn hasher() -> Result<Argon2<'static>, AuthError> {
    let params = Params::new(M_COST_KIB, T_COST, P_COST, None)
        .map_err(|e| AuthError::Hash(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// A PHC string for `password` with a fresh random salt.
pub fn hash_password(password: &[u8]) -> Result<String, AuthError> {
    let mut salt = [0u8; 16];
    rand::fill(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| AuthError::Hash(e.to_string()))?;
    hasher()?
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

/// Whether `password` matches `hash`, allocating Argon2's memory for this one call (for tools
/// and tests; the broker uses a `Verifier`). A malformed hash never matches.
pub fn verify(hash: &str, password: &[u8]) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    Argon2::default().verify_password(password, &parsed).is_ok()
}

/// The memory one Argon2 computation with `hash`'s parameters needs, in 1 KiB blocks (`None`
/// for a malformed hash).
pub fn blocks_needed(hash: &str) -> Option<usize> {
    let parsed = PasswordHash::new(hash).ok()?;
    Params::try_from(&parsed).ok().map(|p| p.block_count())
}

/// Checks `password` against `hash` in caller-provided Argon2 memory (at least
/// `blocks_needed(hash)` blocks), so repeated checks never allocate. Any malformed or unusable
/// hash, or too little memory, is "no match".
fn verify_in(hash: &str, password: &[u8], memory: &mut [Block]) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Ok(algorithm), Ok(params), Some(expected), Some(salt)) = (
        Algorithm::try_from(parsed.algorithm),
        Params::try_from(&parsed),
        parsed.hash,
        parsed.salt,
    ) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    let argon = Argon2::new(algorithm, version, params);
    if argon
        .hash_password_into_with_memory(password, salt, &mut out, memory)
        .is_err()
    {
        return false;
    }
    // `Output`'s equality is constant-time.
    Output::new(&out).is_ok_and(|o| o == expected)
}

/// Returns the pages of an idle worker's Argon2 memory to the kernel while keeping the
/// allocation, so the process shrinks back after a login storm and the next check reuses the
/// same address range (a fresh allocation could land in another allocator arena and stay).
fn release(memory: &mut [Block]) {
    const PAGE: usize = 4096;
    if memory.is_empty() {
        return;
    }
    let start = memory.as_mut_ptr() as usize;
    let end = start + std::mem::size_of_val(memory);
    let first = start.next_multiple_of(PAGE);
    let last = end - end % PAGE;
    if last > first {
        // SAFETY: [first, last) lies inside `memory`, which we borrow mutably, so nothing else
        // reads it meanwhile. MADV_DONTNEED on private anonymous memory makes later reads see
        // zeroes, a valid `Block` (plain integers) that Argon2 overwrites before use anyway.
        unsafe {
            libc::madvise(
                first as *mut libc::c_void,
                last - first,
                libc::MADV_DONTNEED,
            );
        }
    }
}

/// What the broker's password check said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Match,
    NoMatch,
    /// Every worker is busy and the queue is full: refused without hashing.
    Busy,
}

struct Job {
    hash: String,
    password: Vec<u8>,
    reply: tokio::sync::oneshot::Sender<bool>,
}

/// Password checks for the broker on a fixed number of worker threads, each with its Argon2
/// memory allocated once for the largest cost among the configured hashes.
///
/// Why: Argon2id needs 19 MiB per check. Run on whatever thread is free (a blocking pool), every
/// new thread's allocator arena kept its own copy after the check, and a login storm from many
/// addresses grew the process by hundreds of MiB for good. Here memory is
/// `workers × cost`, reached at the first checks and never more; a storm beyond what the
/// workers can take waits in a short queue or is refused (`Verdict::Busy`) before any hashing.
/// An idle worker gives its pages back (`release`), so the memory is only held during a storm.
pub struct Verifier {
    tx: std::sync::mpsc::SyncSender<Job>,
}

impl Verifier {
    /// Starts `workers` threads with room for hashes of up to `max_blocks` KiB each; at most
    /// `queue` checks wait for a worker.
    pub fn start(workers: usize, max_blocks: usize, queue: usize) -> Result<Verifier, AuthError> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(queue);
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        for i in 0..workers.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("fb-argon2-{i}"))
                .spawn(move || {
                    // Allocated at the first login, not at start: a gateway nobody logs in to
                    // never touches it.
                    let mut memory: Vec<Block> = Vec::new();
                    loop {
                        // A poisoned lock only means another worker panicked while waiting;
                        // the receiver is still sound.
                        let next = rx.lock().unwrap_or_else(|e| e.into_inner()).try_recv();
                        let job = match next {
                            Ok(job) => job,
                            Err(std::sync::mpsc::TryRecvError::Disconnected) => return,
                            Err(std::sync::mpsc::TryRecvError::Empty) => {
                                // Idle: hand the pages back until the next login.
                                release(&mut memory);
                                let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                                let Ok(job) = job else { return };
                                job
                            }
                        };
                        if memory.len() < max_blocks {
                            memory = vec![Block::default(); max_blocks];
                        }
                        let ok = verify_in(&job.hash, &job.password, &mut memory);
                        let _ = job.reply.send(ok);
                    }
                })
                .map_err(|e| AuthError::Hash(format!("cannot start a password worker: {e}")))?;
        }
        Ok(Verifier { tx })
    }

    /// Checks `password` against `hash`, or says `Busy` at once when the queue is full.
    pub async fn verify(&self, hash: String, password: Vec<u8>) -> Verdict {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let job = Job {
            hash,
            password,
            reply,
        };
        if self.tx.try_send(job).is_err() {
            return Verdict::Busy;
        }
        match rx.await {
            Ok(true) => Verdict::Match,
            _ => Verdict::NoMatch,
        }
    }
}

/// Writes `user:hash` into the password file, replacing that user's line if present. The file
/// is replaced atomically and created readable by its owner only.
pub fn update_password_file(path: &Path, user: &str, hash: &str) -> Result<(), AuthError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| AuthError::Io {
        file: path.display().to_string(),
        source,
    };
    let old = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(e)),
    };
    let mut lines: Vec<String> = Vec::new();
    let mut replaced = false;
    for line in old.lines() {
        if line.trim().split_once(':').map(|(u, _)| u) == Some(user) {
            lines.push(format!("{user}:{hash}"));
            replaced = true;
        } else {
            lines.push(line.to_string());
        }
    }
    if !replaced {
        lines.push(format!("{user}:{hash}"));
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all((lines.join("\n") + "\n").as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::spec::access::{hash_problem, parse_password_file};

    #[test]
    fn a_hash_verifies_its_password_and_nothing_else() {
        let h = hash_password(b"s3cret").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(hash_problem(&h).is_none());
        assert!(verify(&h, b"s3cret"));
        assert!(!verify(&h, b"s3cret "));
        assert!(!verify(&h, b""));
        assert!(!verify("garbage", b"s3cret"));
        assert_ne!(h, hash_password(b"s3cret").unwrap(), "fresh salt each time");
    }

    #[tokio::test]
    async fn the_worker_pool_agrees_with_the_reference_check_and_refuses_when_full() {
        let h = hash_password(b"s3cret").unwrap();
        let blocks = blocks_needed(&h).unwrap();
        assert_eq!(blocks, 19 * 1024);
        let v = Verifier::start(1, blocks, 4).unwrap();
        assert_eq!(
            v.verify(h.clone(), b"s3cret".to_vec()).await,
            Verdict::Match
        );
        assert_eq!(
            v.verify(h.clone(), b"s3cret ".to_vec()).await,
            Verdict::NoMatch
        );
        assert_eq!(
            v.verify("garbage".into(), b"x".to_vec()).await,
            Verdict::NoMatch
        );
        // A hash that needs more memory than the workers have never matches (no allocation).
        let small = Verifier::start(1, 8, 4).unwrap();
        assert_eq!(
            small.verify(h.clone(), b"s3cret".to_vec()).await,
            Verdict::NoMatch
        );
        // One worker, a queue of one: of many checks sent at once, some are refused unhashed.
        let tight = std::sync::Arc::new(Verifier::start(1, blocks, 1).unwrap());
        let all = (0..8).map(|_| {
            let (t, h) = (tight.clone(), h.clone());
            tokio::spawn(async move { t.verify(h, b"no".to_vec()).await })
        });
        let verdicts: Vec<Verdict> = futures_util::future::join_all(all)
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        assert!(verdicts.contains(&Verdict::Busy), "{verdicts:?}");
        assert!(!verdicts.contains(&Verdict::Match), "{verdicts:?}");
    }

    #[test]
    fn password_file_lines_are_parsed_and_bad_ones_named_by_line() {
        let h = hash_password(b"x").unwrap();
        let good = format!("# comment\n\nalice:{h}\n  bob:{h}  \n");
        let users = parse_password_file("pw", &good).unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(users[1].0, "bob");
        let bad =
            format!("alice:{h}\nnocolon\n:{h}\ncarol:plaintext\nalice:{h}\ndave:$5$abc$def\n");
        let errs: Vec<String> = parse_password_file("pw", &bad)
            .unwrap_err()
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(errs.len(), 5, "{errs:#?}");
        assert!(
            errs[0].starts_with("pw:2: expected `user:hash`"),
            "{errs:#?}"
        );
        assert!(errs[1].starts_with("pw:3: empty user"), "{errs:#?}");
        assert!(errs[2].starts_with("pw:4: user \"carol\""), "{errs:#?}");
        assert!(errs[3].contains("appears twice"), "{errs:#?}");
        assert!(errs[4].starts_with("pw:6:"), "{errs:#?}");
    }

    #[test]
    fn updating_the_password_file_replaces_one_user_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("passwd");
        update_password_file(&f, "alice", "H1").unwrap();
        update_password_file(&f, "bob", "H2").unwrap();
        update_password_file(&f, "alice", "H3").unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "alice:H3\nbob:H2\n");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&f).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
