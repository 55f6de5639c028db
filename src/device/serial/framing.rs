//! Pure framing: a byte stream from a serial port → whole frames, plus counted rejects.
//!
//! Two shapes: delimiter-terminated lines with a maximum length, and binary frames found by their
//! start bytes, with a fixed or length-field size, optional end bytes and an optional checksum.
//! Invariants: the buffer never grows beyond the longest possible frame (a stream of garbage
//! costs bounded memory); every byte that is not part of an emitted frame is reported, as noise,
//! an over-long line or a frame with a bad checksum; a frame split across any number of reads is
//! reassembled exactly. No I/O here; tested as tables.

use crate::config::spec::serial::{
    BinarySpec, ChecksumSpec, FrameLength, FramingSpec, MAX_BINARY_FRAME,
};

/// What the framer found in the bytes it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameEvent {
    Frame(Vec<u8>),
    /// Bytes skipped while looking for a frame start (or after a malformed frame).
    Noise(usize),
    /// A line longer than `max_length`; its bytes are discarded up to the next delimiter.
    Overlong,
    /// A complete frame whose checksum did not match.
    BadChecksum,
}

/// Incremental framer. Feed it whatever a read returned; it keeps the tail of an incomplete frame.
#[derive(Debug)]
pub struct Framer {
    spec: FramingSpec,
    buf: Vec<u8>,
    /// Inside an over-long line: drop bytes up to the next delimiter.
    discarding: bool,
    /// Line framing only: bytes that can only start a line (NMEA's `$` and `!`). A line is
    /// taken from the last of them; what comes before is noise (a sentence cut short by a
    /// glitch, line noise), so a valid sentence behind it is not lost.
    line_starts: &'static [u8],
}

impl Framer {
    pub fn new(spec: FramingSpec) -> Self {
        Framer {
            spec,
            buf: Vec::new(),
            discarding: false,
            line_starts: &[],
        }
    }

    /// Resynchronises each line on the last of `starts` in it (line framing; see `line_starts`).
    pub fn resync_on(mut self, starts: &'static [u8]) -> Self {
        self.line_starts = starts;
        self
    }

    /// Forgets a partial frame, e.g. after the port was reopened or before a polled request.
    pub fn reset(&mut self) {
        self.buf.clear();
        self.discarding = false;
    }

    pub fn push(&mut self, data: &[u8], out: &mut Vec<FrameEvent>) {
        self.buf.extend_from_slice(data);
        match &self.spec {
            FramingSpec::Line {
                delimiter,
                max_length,
            } => {
                let (delimiter, max_length) = (delimiter.clone(), *max_length);
                self.lines(&delimiter, max_length, out)
            }
            FramingSpec::Binary(b) => {
                let b = b.clone();
                self.binary(&b, out)
            }
        }
    }

    fn lines(&mut self, delim: &[u8], max_length: usize, out: &mut Vec<FrameEvent>) {
        let mut consumed = 0;
        while let Some(pos) = find(&self.buf[consumed..], delim) {
            let line = &self.buf[consumed..consumed + pos];
            consumed += pos + delim.len();
            if std::mem::take(&mut self.discarding) {
                continue; // the tail of a line already reported as over-long
            }
            // A "\n" delimiter also accepts "\r\n" lines, the common case for text sensors.
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                continue;
            }
            // Over-long is judged on the whole line, as while it was still arriving.
            if line.len() > max_length {
                out.push(FrameEvent::Overlong);
                continue;
            }
            let line = if self.line_starts.is_empty() {
                line
            } else {
                match line.iter().rposition(|b| self.line_starts.contains(b)) {
                    Some(0) => line,
                    Some(at) => {
                        out.push(FrameEvent::Noise(at));
                        &line[at..]
                    }
                    None => {
                        out.push(FrameEvent::Noise(line.len()));
                        continue;
                    }
                }
            };
            out.push(FrameEvent::Frame(line.to_vec()));
        }
        self.buf.drain(..consumed);
        // No delimiter yet: once the partial line is too long, report it and stop buffering,
        // keeping only what could be the start of a split delimiter.
        let cap = max_length + delim.len();
        if self.buf.len() > cap {
            if !self.discarding {
                out.push(FrameEvent::Overlong);
                self.discarding = true;
            }
            let keep = delim.len().saturating_sub(1);
            let cut = self.buf.len() - keep;
            self.buf.drain(..cut);
        }
    }

    fn binary(&mut self, spec: &BinarySpec, out: &mut Vec<FrameEvent>) {
        let mut noise = 0usize;
        loop {
            // 1. Align the buffer on the start bytes.
            match find(&self.buf, &spec.start) {
                Some(0) => {}
                Some(pos) => {
                    noise += pos;
                    self.buf.drain(..pos);
                }
                None => {
                    // Keep the longest tail that could be the beginning of the start bytes.
                    let keep = partial_prefix_len(&self.buf, &spec.start);
                    let cut = self.buf.len() - keep;
                    noise += cut;
                    self.buf.drain(..cut);
                    break;
                }
            }
            // 2. Find out how long this frame is.
            let len = match spec.length {
                FrameLength::Fixed(n) => n,
                FrameLength::Field { at, add } => {
                    let Some(&b) = self.buf.get(at) else { break };
                    let n = i64::from(b) + add;
                    let min = (at + 1).max(spec.start.len() + spec.end.len()) as i64;
                    if n < min || n > MAX_BINARY_FRAME as i64 {
                        // An impossible length: this start was noise. Resynchronise one byte on.
                        noise += 1;
                        self.buf.drain(..1);
                        continue;
                    }
                    n as usize
                }
            };
            if self.buf.len() < len {
                break;
            }
            // 3. Check the end bytes and the checksum.
            let frame = &self.buf[..len];
            if !frame.ends_with(&spec.end) {
                noise += 1;
                self.buf.drain(..1);
                continue;
            }
            if let Some(c) = &spec.checksum {
                if !c.verify(frame) {
                    if noise > 0 {
                        out.push(FrameEvent::Noise(std::mem::take(&mut noise)));
                    }
                    out.push(FrameEvent::BadChecksum);
                    // Only the start bytes are dropped: they may have been noise that looked
                    // like a start, with the real frame beginning inside this one.
                    self.buf.drain(..spec.start.len().max(1));
                    continue;
                }
            }
            if noise > 0 {
                out.push(FrameEvent::Noise(std::mem::take(&mut noise)));
            }
            out.push(FrameEvent::Frame(self.buf.drain(..len).collect()));
        }
        if noise > 0 {
            out.push(FrameEvent::Noise(noise));
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Length of the longest suffix of `buf` that is a proper prefix of `start`.
fn partial_prefix_len(buf: &[u8], start: &[u8]) -> usize {
    let max = start.len().saturating_sub(1).min(buf.len());
    (1..=max)
        .rev()
        .find(|&k| buf[buf.len() - k..] == start[..k])
        .unwrap_or(0)
}

impl ChecksumSpec {
    fn resolve(off: i64, len: usize) -> Option<usize> {
        if off >= 0 {
            let o = usize::try_from(off).ok()?;
            (o <= len).then_some(o)
        } else {
            len.checked_sub(usize::try_from(off.unsigned_abs()).ok()?)
        }
    }

    /// Whether the checksum of `frame` is right; `false` when the offsets do not fit the frame.
    pub fn verify(&self, frame: &[u8]) -> bool {
        let n = frame.len();
        let (Some(from), Some(to), Some(at)) = (
            Self::resolve(self.from, n),
            Self::resolve(self.to, n),
            Self::resolve(self.at, n),
        ) else {
            return false;
        };
        if from > to || at >= n {
            return false;
        }
        self.kind.compute(&frame[from..to]) == frame[at]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::spec::serial::Checksum;
    use FrameEvent::*;

    fn line(max: usize) -> FramingSpec {
        FramingSpec::Line {
            delimiter: b"\n".to_vec(),
            max_length: max,
        }
    }

    fn sds_like() -> FramingSpec {
        FramingSpec::Binary(BinarySpec {
            start: vec![0xAA, 0xC0],
            length: FrameLength::Fixed(10),
            end: vec![0xAB],
            checksum: Some(ChecksumSpec {
                kind: Checksum::Sum8,
                from: 2,
                to: 8,
                at: 8,
            }),
        })
    }

    /// (name, chunks fed one by one, expected events)
    type Case<'a> = (&'a str, Vec<&'a [u8]>, Vec<FrameEvent>);

    const SDS: [u8; 10] = [0xAA, 0xC0, 0xD4, 0x04, 0x3A, 0x0A, 0xA1, 0x60, 0x1D, 0xAB];

    fn run(spec: FramingSpec, chunks: &[&[u8]]) -> Vec<FrameEvent> {
        let mut f = Framer::new(spec);
        let mut out = Vec::new();
        for c in chunks {
            f.push(c, &mut out);
        }
        out
    }

    fn f(b: &[u8]) -> FrameEvent {
        Frame(b.to_vec())
    }

    #[test]
    fn lines_are_split_reassembled_and_bounded() {
        let cases: Vec<Case> = vec![
            (
                "two lines in one read",
                vec![b"a=1\nb=2\n"],
                vec![f(b"a=1"), f(b"b=2")],
            ),
            ("crlf is stripped", vec![b"a=1\r\n"], vec![f(b"a=1")]),
            (
                "split across reads",
                vec![b"a=", b"1", b"\n"],
                vec![f(b"a=1")],
            ),
            (
                "empty lines are skipped",
                vec![b"\n\r\n\nx\n"],
                vec![f(b"x")],
            ),
            ("incomplete line waits", vec![b"abc"], vec![]),
            (
                "exactly max is fine",
                vec![b"12345678\n"],
                vec![f(b"12345678")],
            ),
            (
                "complete over-long line",
                vec![b"123456789\nok\n"],
                vec![Overlong, f(b"ok")],
            ),
            (
                "over-long without delimiter is reported once, then resyncs",
                vec![b"0123456789", b"0123456789", b"0123\nok\n"],
                vec![Overlong, f(b"ok")],
            ),
        ];
        for (name, chunks, want) in cases {
            assert_eq!(run(line(8), &chunks), want, "{name}");
        }
    }

    #[test]
    fn lines_with_start_bytes_resynchronise_on_the_last_start() {
        let gga = b"$GPGGA,1,2*6E";
        let cases: Vec<Case> = vec![
            ("a clean sentence", vec![b"$GPGGA,1,2*6E\r\n"], vec![f(gga)]),
            (
                "noise before the start on the same line",
                vec![b"\x7f\x7fXYZ$GPGGA,1,2*6E\r\n"],
                vec![Noise(5), f(gga)],
            ),
            (
                "a truncated sentence without its newline",
                vec![b"$GPRMC,12", b"$GPGGA,1,2*6E\r\n"],
                vec![Noise(9), f(gga)],
            ),
            (
                "'!' starts a sentence too",
                vec![b"xx!AIVDM,1*00\n"],
                vec![Noise(2), f(b"!AIVDM,1*00")],
            ),
            (
                "a line without any start is noise",
                vec![b"garbage\n$GPGGA,1,2*6E\n"],
                vec![Noise(7), f(gga)],
            ),
        ];
        for (name, chunks, want) in cases {
            let mut fr = Framer::new(line(120)).resync_on(b"$!");
            let mut out = Vec::new();
            for c in &chunks {
                fr.push(c, &mut out);
            }
            assert_eq!(out, want, "{name}");
        }
        // Without start bytes, a line is a line.
        assert_eq!(run(line(120), &[b"xx$a\n"]), vec![f(b"xx$a")]);
    }

    #[test]
    fn a_multi_byte_delimiter_split_across_reads_still_ends_the_line() {
        let spec = FramingSpec::Line {
            delimiter: b"\r\n".to_vec(),
            max_length: 4,
        };
        assert_eq!(
            run(spec.clone(), &[b"ab\r", b"\ncd\r\n"]),
            vec![f(b"ab"), f(b"cd")]
        );
        assert_eq!(
            run(spec, &[b"abcdefgh\r", b"\nok\r\n"]),
            vec![Overlong, f(b"ok")]
        );
    }

    #[test]
    fn binary_frames_survive_noise_splits_and_bad_checksums() {
        let mut bad = SDS;
        bad[3] ^= 0x01;
        let mut noisy_start = vec![0xAA, 0x00, 0x13];
        noisy_start.extend_from_slice(&SDS);
        let cases: Vec<Case> = vec![
            ("one frame", vec![&SDS], vec![f(&SDS)]),
            (
                "split in three",
                vec![&SDS[..1], &SDS[1..7], &SDS[7..]],
                vec![f(&SDS)],
            ),
            (
                "noise before",
                vec![&[1, 2, 3], &SDS],
                vec![Noise(3), f(&SDS)],
            ),
            (
                "a lone start byte is noise",
                vec![&noisy_start],
                vec![Noise(3), f(&SDS)],
            ),
            (
                "bad checksum",
                vec![&bad, &SDS],
                vec![BadChecksum, Noise(8), f(&SDS)],
            ),
            (
                "partial start kept",
                vec![&[9, 0xAA], &SDS[1..]],
                vec![Noise(1), f(&SDS)],
            ),
            ("pure garbage", vec![&[0x10; 50]], vec![Noise(50)]),
        ];
        for (name, chunks, want) in cases {
            assert_eq!(run(sds_like(), &chunks), want, "{name}");
        }
    }

    #[test]
    fn every_split_point_of_a_frame_gives_the_same_frame() {
        for cut in 0..=SDS.len() {
            assert_eq!(
                run(sds_like(), &[&SDS[..cut], &SDS[cut..]]),
                vec![f(&SDS)],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_length_field_sizes_the_frame_and_absurd_lengths_resync() {
        // start 0x02, total length = byte[1] + 0, xor over [1..-1) stored in the last byte
        let spec = FramingSpec::Binary(BinarySpec {
            start: vec![0x02],
            length: FrameLength::Field { at: 1, add: 0 },
            end: vec![],
            checksum: Some(ChecksumSpec {
                kind: Checksum::Xor8,
                from: 1,
                to: -1,
                at: -1,
            }),
        });
        let frame = [0x02, 0x05, 0x11, 0x22, 0x05 ^ 0x11 ^ 0x22];
        let short = [0x02, 0x04, 0x11, 0x04 ^ 0x11];
        let cases: Vec<Case> = vec![
            ("five", vec![&frame], vec![f(&frame)]),
            ("four", vec![&short], vec![f(&short)]),
            (
                "back to back",
                vec![&frame, &short],
                vec![f(&frame), f(&short)],
            ),
            (
                "length 0 is noise",
                vec![&[0x02, 0x00], &frame],
                vec![Noise(2), f(&frame)],
            ),
        ];
        for (name, chunks, want) in cases {
            assert_eq!(run(spec.clone(), &chunks), want, "{name}");
        }
    }

    #[test]
    fn the_buffer_stays_bounded_under_endless_garbage() {
        let mut fr = Framer::new(line(16));
        let mut out = Vec::new();
        for _ in 0..1000 {
            fr.push(&[b'x'; 100], &mut out);
            assert!(fr.buf.len() <= 17);
        }
        assert_eq!(out, vec![Overlong]);
        let mut fr = Framer::new(sds_like());
        for _ in 0..1000 {
            fr.push(&[0x55; 100], &mut out);
            assert!(fr.buf.len() <= 10);
        }
    }
}
